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

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;

use crate::instance::{Failure, Instance, InvokeInput, LogTarget};
use crate::protocol::{write_frame, HostMessage};

pub struct Lane {
    pub id: u64,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    turns: Mutex<Turns>,
}

#[derive(Default)]
struct Turns {
    /// The instance, while no event holds it.
    parked: Option<Instance>,
    /// Events whose frames are written, in frame order, waiting for the instance.
    waiting: VecDeque<oneshot::Sender<Instance>>,
    /// No more events are taken: the instance failed, or is being stopped.
    closed: bool,
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
        let message = HostMessage::Invoke {
            request_id: input.request_id,
            event: input.event,
            context: input.context,
            env: input.env,
        };
        // Frames go out in the order turns are taken: both happen under the writer lock.
        let mut writer = self.writer.lock().await;
        let turn = {
            let mut turns = lock(&self.turns);
            if turns.closed {
                return Err(Unrun);
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
        let written = write_frame(&mut *writer, &message).await;
        drop(writer);
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
