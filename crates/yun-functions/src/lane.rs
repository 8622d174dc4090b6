//! A loaded instance as a lane: events are written to its channel in the order they are
//! admitted and run one at a time, each reading its own result when its turn comes. An
//! event queued behind a running one (the pool's `Queued`) is already in the instance's
//! socket when the running one answers, so the instance goes from one to the next without
//! sleeping, and Yun skips a hand-off per event.
//!
//! The instance itself (read side, process) passes from one event to the next: whoever
//! holds it is the event the instance is running. When the instance dies, the events
//! queued behind are handed back unrun: the process is already dead, and the bootstrap
//! starts an event only after answering the one before, so none of them started.
//!
//! Frames are encoded into an outbox in admission order, and whoever takes the writer
//! sends everything waiting there: events that arrive together cost one write.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;

use crate::instance::{Failure, Instance, InvokeInput, LogTarget};
use crate::protocol::{encode_frame, FrameError, HostMessage};
use crate::runtime::InvocationEnv;

pub struct Lane {
    pub id: u64,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    turns: Mutex<Turns>,
}

#[derive(Default)]
struct Turns {
    /// The instance, while no event holds it.
    parked: Option<Instance>,
    /// Events whose frames are encoded, in frame order, waiting for the instance.
    waiting: VecDeque<oneshot::Sender<Instance>>,
    /// No more events are taken: the instance failed, or is being stopped.
    closed: bool,
    /// Frames encoded and not yet written.
    outbox: Vec<u8>,
    /// The per-invocation variables as of the last frame encoded.
    sent_env: InvocationEnv,
}

/// Names are the platform's `&'static str`s: the same literal is the same pointer.
fn same_name(a: &str, b: &str) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
}

fn same_value(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl Turns {
    /// Encodes an invoke frame carrying only the variables that changed since the last.
    fn encode(&mut self, input: &InvokeInput<'_>) -> Result<(), FrameError> {
        let (sent, env) = (&self.sent_env, input.env);
        // The usual case: the same names in the same order as the event before.
        let aligned =
            sent.len() == env.len() && sent.iter().zip(env).all(|((a, _), (b, _))| same_name(a, b));
        let changed: Vec<(&str, &str)> = if aligned {
            sent.iter()
                .zip(env)
                .filter(|((_, before), (_, now))| !same_value(before, now))
                .map(|(_, (name, value))| (*name, &**value))
                .collect()
        } else {
            env.iter()
                .filter(|(name, value)| {
                    !sent
                        .iter()
                        .any(|(n, v)| same_name(n, name) && same_value(v, value))
                })
                .map(|(name, value)| (*name, &**value))
                .collect()
        };
        let unset: Vec<&str> = if aligned {
            Vec::new()
        } else {
            sent.iter()
                .filter(|(n, _)| !env.iter().any(|(name, _)| same_name(n, name)))
                .map(|(n, _)| *n)
                .collect()
        };
        let header = HostMessage::Invoke {
            request_id: input.request_id,
            env: &changed,
            unset: &unset,
        };
        encode_frame(&mut self.outbox, &header, Some(input.event))?;
        // Keeping the new `Arc`s (equal text or not) lets the next event compare by pointer.
        self.sent_env.clone_from(env);
        Ok(())
    }
}

/// The event never ran (the instance died or stopped before its turn): admit it again.
#[derive(Debug)]
pub struct Unrun;

pub struct TurnOutcome {
    pub result: Result<String, Failure>,
    /// From the event's turn to its result.
    pub ran: Duration,
    pub peak_rss_kb: u64,
}

impl TurnOutcome {
    /// Whether the instance is still usable after this event.
    pub fn survived(&self) -> bool {
        self.result
            .as_ref()
            .map_or_else(Failure::instance_survives, |_| true)
    }
}

fn lock(turns: &Mutex<Turns>) -> std::sync::MutexGuard<'_, Turns> {
    // Every mutation is a single step; a panic cannot leave the queue half-updated.
    turns
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Lane {
    /// A loaded instance; `None` if its channel was already taken.
    pub fn new(mut instance: Instance) -> Option<Arc<Self>> {
        let writer = instance.take_writer()?;
        Some(Arc::new(Self {
            id: instance.id,
            writer: tokio::sync::Mutex::new(writer),
            turns: Mutex::new(Turns {
                parked: Some(instance),
                ..Turns::default()
            }),
        }))
    }

    /// Runs one event after those queued before it. Run it in a task of its own: once its
    /// frame is written, the instance will run it, so its result must be read even if the
    /// caller goes away.
    pub async fn invoke(
        &self,
        input: &InvokeInput<'_>,
        logs: &LogTarget,
    ) -> Result<TurnOutcome, Unrun> {
        // Frames go out in the order turns are taken: both happen under one lock.
        let turn = {
            let mut turns = lock(&self.turns);
            if turns.closed {
                return Err(Unrun);
            }
            if let Err(e) = turns.encode(input) {
                return Ok(TurnOutcome {
                    result: Err(Failure::Unsendable(e.to_string())),
                    ran: Duration::ZERO,
                    peak_rss_kb: 0,
                });
            }
            match turns.parked.take() {
                Some(instance) => Ok(instance),
                None => {
                    let (tx, rx) = oneshot::channel();
                    turns.waiting.push_back(tx);
                    Err(rx)
                }
            }
        };
        let written = self.flush().await;
        let mut instance = match turn {
            Ok(instance) => instance,
            Err(rx) => rx.await.map_err(|_| Unrun)?,
        };
        let started = Instant::now();
        let result = match written {
            Ok(()) => instance.run_turn(input, logs).await,
            Err(e) => Err(instance.died(&e).await),
        };
        let outcome = TurnOutcome {
            ran: started.elapsed(),
            peak_rss_kb: instance.peak_rss_kb,
            result,
        };
        if outcome.survived() {
            self.pass(instance);
        } else {
            self.fail(instance);
        }
        Ok(outcome)
    }

    /// Writes whatever the outbox holds (this event's frame, unless an earlier flush
    /// took it along).
    async fn flush(&self) -> Result<(), FrameError> {
        let mut writer = self.writer.lock().await;
        let frames = std::mem::take(&mut lock(&self.turns).outbox);
        if !frames.is_empty() {
            writer.write_all(&frames).await?;
        }
        Ok(())
    }

    /// Hands the instance to the next queued event, or parks it.
    fn pass(&self, instance: Instance) {
        let mut turns = lock(&self.turns);
        if let Some(next) = turns.waiting.pop_front() {
            if let Err(instance) = next.send(instance) {
                // That event's frame is in the channel but nobody will read its result:
                // the order is lost, so the instance goes.
                drop(turns);
                self.fail(instance);
            }
        } else if turns.closed {
            drop(turns);
            tokio::spawn(instance.shutdown());
        } else {
            turns.parked = Some(instance);
        }
    }

    /// The instance failed (and its process is dead or killed): queued events go back unrun.
    fn fail(&self, mut instance: Instance) {
        {
            let mut turns = lock(&self.turns);
            turns.closed = true;
            turns.waiting.clear();
            turns.outbox.clear();
        }
        instance.kill();
        tokio::spawn(instance.shutdown());
    }

    /// Stops the instance once the events already queued are done (at once when idle).
    pub async fn shutdown(&self) {
        let parked = {
            let mut turns = lock(&self.turns);
            turns.closed = true;
            turns.parked.take()
        };
        if let Some(instance) = parked {
            instance.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON headers of the frames in `outbox`.
    fn headers(outbox: &[u8]) -> Vec<serde_json::Value> {
        let mut rest = outbox;
        let mut out = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            let body = &rest[4..4 + len];
            let end = body.iter().position(|&b| b == b'\n').unwrap_or(len);
            out.push(serde_json::from_slice(&body[..end]).unwrap());
            rest = &rest[4 + len..];
        }
        out
    }

    #[test]
    fn invoke_frames_carry_only_the_variables_that_changed() {
        let mut turns = Turns::default();
        let mut send = |request_id: &str, env: &[(&'static str, &str)]| {
            let env: InvocationEnv = env.iter().map(|(k, v)| (*k, Arc::from(*v))).collect();
            let input = InvokeInput {
                request_id,
                event: "{}",
                env: &env,
                timeout: Duration::from_secs(1),
                output_limit: 1,
                log_limit: 1,
            };
            turns.encode(&input).unwrap();
        };
        send("r1", &[("A", "1"), ("B", "2"), ("C", "3")]);
        send("r2", &[("A", "1"), ("B", "2"), ("C", "3")]);
        send("r3", &[("A", "1"), ("B", "two"), ("D", "4")]);
        send("r4", &[("B", "two")]);
        let frames = headers(&turns.outbox);
        assert_eq!(
            frames,
            [
                serde_json::json!({"type": "invoke", "request_id": "r1", "env": {"A": "1", "B": "2", "C": "3"}}),
                serde_json::json!({"type": "invoke", "request_id": "r2"}),
                serde_json::json!({"type": "invoke", "request_id": "r3", "env": {"B": "two", "D": "4"}, "unset": ["C"]}),
                serde_json::json!({"type": "invoke", "request_id": "r4", "unset": ["A", "D"]}),
            ]
        );
        assert_eq!(turns.sent_env, [("B", Arc::from("two"))]);
    }
}
