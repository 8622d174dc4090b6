//! A loaded instance as a lane: events are written to its channel in the order they are
//! admitted and run one at a time. An event queued behind a running one (the pool's
//! `Queued`) is already in the instance's socket when the running one answers, so the
//! instance goes from one to the next without sleeping.
//!
//! Each lane has a reader task that owns the instance: it reads each event's output and
//! result in turn (timing it from its turn), accounts for it through the lane's
//! [`TurnHook`] and hands the outcome to the caller. The accounting never depends on the
//! caller still waiting. When the instance dies, the events queued behind are handed
//! back unrun: the process is dead, and the bootstrap starts an event only after
//! answering the one before, so none of them started.
//!
//! Frames are encoded into an outbox in admission order. An idle instance's frame is
//! written at once, without waiting (a caller going away cannot cut a frame in half);
//! frames for a busy instance, and whatever the socket does not take, go out from the
//! lane's writer task, together.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{oneshot, Notify};

use crate::api::{ApiReplies, ApiResponse};
use crate::instance::{Failure, Instance, InvokeInput, LogTarget};
use crate::protocol::{encode_frame, FrameError, HostMessage};
use crate::runtime::InvocationEnv;

/// Called by the reader for each event admitted to the lane once it is over: with how
/// long it ran (`None`: it never ran) and whether the instance survived it.
pub type TurnHook = Box<dyn Fn(Option<Duration>, bool) + Send + Sync>;
/// Called by the reader when the instance died while it had no event: the pool drops it
/// so that no event is sent to a dead process.
pub type DeathHook = Box<dyn Fn() + Send + Sync>;

pub struct Lane {
    pub id: u64,
    shared: Arc<Shared>,
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    writer: OwnedWriteHalf,
    /// An event is pending, or the lane closed.
    wake_reader: Notify,
    /// The outbox holds bytes the socket did not take.
    wake_writer: Notify,
    on_turn: TurnHook,
    on_idle_death: DeathHook,
}

#[derive(Default)]
struct State {
    /// No more events are taken: the instance failed, or is being stopped.
    closed: bool,
    /// The reader is running an event.
    running: bool,
    /// Events whose frames are encoded, in frame order, waiting for their turn.
    pending: VecDeque<Turn>,
    /// Frames encoded and not yet written.
    outbox: Vec<u8>,
    /// The writer task is finishing the outbox: nobody else writes meanwhile.
    writing: bool,
    /// The per-invocation variables as of the last frame encoded.
    sent_env: InvocationEnv,
}

/// One admitted event, as its reader sees it.
pub(crate) struct Turn {
    pub logs: LogTarget,
    pub timeout: Duration,
    pub output_limit: usize,
    pub log_limit: usize,
    done: oneshot::Sender<Result<TurnOutcome, Unrun>>,
}

/// Names are the platform's `&'static str`s: the same literal is the same pointer.
fn same_name(a: &str, b: &str) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
}

fn same_value(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl State {
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
        encode_frame(&mut self.outbox, &header, Some(input.event.as_bytes()))?;
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

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // Every mutation is a single step; a panic cannot leave the queue half-updated.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Writes what the socket takes now; the writer task gets the rest.
    fn write_outbox(&self, state: &mut State) {
        while !state.outbox.is_empty() {
            match self.writer.try_write(&state.outbox) {
                Ok(n) => {
                    state.outbox.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    state.writing = true;
                    self.wake_writer.notify_one();
                    return;
                }
                // The process is gone: the reader finds out and fails the lane.
                Err(_) => {
                    state.outbox.clear();
                    return;
                }
            }
        }
    }
}

impl ApiReplies for Shared {
    /// Answers go out with the events' frames, through the same outbox.
    fn reply(&self, id: u64, response: &ApiResponse) {
        let headers: Vec<(&str, &str)> = response
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let header = |fallback| HostMessage::ApiResult {
            id,
            status: response.status,
            headers: &headers,
            fallback,
        };
        let mut state = lock(&self.state);
        if encode_frame(
            &mut state.outbox,
            &header(response.fallback),
            Some(&response.body),
        )
        .is_err()
        {
            // Larger than a frame: the instance makes this call over HTTP instead.
            let _ = encode_frame(&mut state.outbox, &header(true), None);
        }
        if !state.writing {
            self.write_outbox(&mut state);
        }
    }
}

impl Lane {
    /// A loaded instance; `None` if its channel was already taken.
    pub fn new(
        mut instance: Instance,
        on_turn: TurnHook,
        on_idle_death: DeathHook,
    ) -> Option<Arc<Self>> {
        let writer = instance.take_writer()?;
        let id = instance.id;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            writer,
            wake_reader: Notify::new(),
            wake_writer: Notify::new(),
            on_turn,
            on_idle_death,
        });
        tokio::spawn(write_events(shared.clone()));
        let reader = tokio::spawn(read_events(instance, shared.clone()));
        Some(Arc::new(Self {
            id,
            shared,
            reader: Mutex::new(Some(reader)),
        }))
    }

    /// Runs one event after those queued before it. Cancel-safe: once admitted here, the
    /// event runs and is accounted for whether or not the caller still waits.
    pub async fn invoke(
        &self,
        input: &InvokeInput<'_>,
        logs: LogTarget,
    ) -> Result<TurnOutcome, Unrun> {
        let (done, outcome) = oneshot::channel();
        {
            let mut state = lock(&self.shared.state);
            if state.closed {
                return Err(Unrun);
            }
            if let Err(e) = state.encode(input) {
                drop(state);
                (self.shared.on_turn)(None, true);
                return Ok(TurnOutcome {
                    result: Err(Failure::Unsendable(e.to_string())),
                    ran: Duration::ZERO,
                    peak_rss_kb: 0,
                });
            }
            state.pending.push_back(Turn {
                logs,
                timeout: input.timeout,
                output_limit: input.output_limit,
                log_limit: input.log_limit,
                done,
            });
            if !state.writing {
                if state.running || state.pending.len() > 1 {
                    // The instance is busy: no hurry, and frames arriving meanwhile
                    // go out with this one in one write.
                    state.writing = true;
                    self.shared.wake_writer.notify_one();
                } else {
                    self.shared.write_outbox(&mut state);
                }
            }
        }
        self.shared.wake_reader.notify_one();
        // The reader always answers unless the runtime itself is going away.
        outcome.await.unwrap_or(Err(Unrun))
    }

    /// Stops the instance once the events already queued are done: waits for it when
    /// the lane is idle, else leaves it to the reader.
    pub async fn shutdown(&self) {
        let idle = {
            let mut state = lock(&self.shared.state);
            state.closed = true;
            !state.running && state.pending.is_empty()
        };
        self.shared.wake_reader.notify_one();
        self.shared.wake_writer.notify_one();
        let reader = self.reader.lock().ok().and_then(|mut r| r.take());
        if let (true, Some(reader)) = (idle, reader) {
            let _ = reader.await;
        }
    }
}

impl Drop for Lane {
    /// A lane nobody holds any more stops its instance once its queue is done.
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake_reader.notify_one();
    }
}

/// The reader: runs the lane's events in order on its instance, then stops it.
async fn read_events(mut instance: Instance, shared: Arc<Shared>) {
    let replies: Arc<dyn ApiReplies> = shared.clone();
    loop {
        let turn = loop {
            let woken = shared.wake_reader.notified();
            {
                let mut state = lock(&shared.state);
                if let Some(turn) = state.pending.pop_front() {
                    state.running = true;
                    break Some(turn);
                }
                if state.closed {
                    break None;
                }
            }
            tokio::select! {
                _ = woken => {}
                _ = instance.exited() => {
                    hand_back_after_death(&shared);
                    break None;
                }
            }
        };
        let Some(turn) = turn else { break };
        let started = Instant::now();
        let result = instance.run_turn(&turn, &replies).await;
        let outcome = TurnOutcome {
            ran: started.elapsed(),
            peak_rss_kb: instance.peak_rss_kb,
            result,
        };
        let survived = outcome.survived();
        (shared.on_turn)(Some(outcome.ran), survived);
        let _ = turn.done.send(Ok(outcome));
        let unrun = {
            let mut state = lock(&shared.state);
            state.running = false;
            if survived {
                continue;
            }
            state.closed = true;
            state.outbox.clear();
            std::mem::take(&mut state.pending)
        };
        for turn in unrun {
            (shared.on_turn)(None, false);
            let _ = turn.done.send(Err(Unrun));
        }
        instance.kill();
        break;
    }
    shared.wake_writer.notify_one();
    instance.shutdown().await;
}

/// The writer: finishes outboxes the socket could not take at once.
/// The instance died between events: events admitted meanwhile never ran.
fn hand_back_after_death(shared: &Shared) {
    let unrun = {
        let mut state = lock(&shared.state);
        if state.closed {
            return;
        }
        state.closed = true;
        state.outbox.clear();
        std::mem::take(&mut state.pending)
    };
    tracing::debug!("an idle instance died");
    if unrun.is_empty() {
        (shared.on_idle_death)();
    }
    for turn in unrun {
        (shared.on_turn)(None, false);
        let _ = turn.done.send(Err(Unrun));
    }
}

async fn write_events(shared: Arc<Shared>) {
    loop {
        shared.wake_writer.notified().await;
        // Let the tasks already scheduled run first: the frames they admit to this lane
        // go out in the same write (one send and one wake of the instance for several
        // events). The instance is busy, so the frame waits for nothing.
        tokio::task::yield_now().await;
        loop {
            {
                let mut state = lock(&shared.state);
                if state.writing {
                    shared.write_outbox(&mut state);
                }
                if state.outbox.is_empty() {
                    state.writing = false;
                    if state.closed {
                        return;
                    }
                    break;
                }
            }
            if shared.writer.writable().await.is_err() {
                return;
            }
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
        let mut turns = State::default();
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
