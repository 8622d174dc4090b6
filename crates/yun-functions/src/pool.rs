//! The instance scheduler's decisions, as a pure state machine over one function's
//! instances. No processes, no clock: callers pass `now`, so tests drive time by hand.
//!
//! An instance runs one event at a time (SCF semantics). When no instance is idle, an
//! event of a function whose events are short queues on the least loaded instance's
//! channel behind the running one (`Queued`), before any cold start: the instance then
//! takes its next event without sleeping in between (where a trivial invocation's cost
//! goes). An instance holds as many events as can wait behind each other for less than
//! a cold start takes ([`queue_depth`]). Only when every queue is full does a short
//! function scale out, one instance at a time. Slow functions never queue: they start
//! instances up to the cap, then wait for whichever instance frees first.
//!
//! Invariant: `instances + starting <= max_instances` after every `admit` that returns
//! `Warm`, `Cold` or `Queued`; `depth` counts the events admitted to an instance and not
//! yet finished (the running one and those queued behind it).

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPolicy {
    pub max_instances: usize,
    /// An instance idle this long is stopped (scale to zero).
    pub idle_timeout: Duration,
    /// Instances kept warm regardless of idleness (provisioned concurrency).
    pub keep_warm: usize,
    /// How long an invocation may wait for a free slot before it is throttled.
    pub queue_timeout: Duration,
}

/// The longest an event should wait behind others queued on one instance: about twice a
/// cold start from a stem cell (12–15 ms here), which also costs a process and its
/// memory. On the 32-connection benchmark, 16 ms let the depth fall to 8–16 under load
/// (18–20k req/s, p99 5.4–6.6 ms); 32 ms kept it at 16 (23–25k, p99 3.5–4.3 ms).
const QUEUE_WAIT: Duration = Duration::from_millis(32);
/// Events one instance may hold at most. On the 32-connection benchmark of a trivial
/// function: depth 4 gave 17k req/s, 8 gave 19k, 16 gave 22k.
const MAX_QUEUE_DEPTH: usize = 16;

/// Events one instance may hold, the running one included, for a function whose recent
/// events ran `recent` on average: as many as wait behind each other for less than
/// [`QUEUE_WAIT`]. 1 (no queueing) until an event has run, and for events over 16 ms.
pub fn queue_depth(recent: Option<Duration>) -> usize {
    recent.map_or(1, |d| {
        let fits = QUEUE_WAIT.as_micros() / d.as_micros().max(1);
        usize::try_from(fits)
            .unwrap_or(usize::MAX)
            .clamp(1, MAX_QUEUE_DEPTH)
    })
}

/// What an arriving invocation should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<T> {
    /// Run on this idle, warm instance.
    Warm(T),
    /// A slot is reserved: start (or take a stem cell for) a new instance.
    Cold,
    /// Queue behind the events this busy instance holds.
    Queued(T),
    /// Every slot is busy: wait for a release, until the deadline.
    Wait,
}

#[derive(Debug)]
struct Slot<T> {
    id: u64,
    instance: T,
    depth: usize,
    idle_since: Instant,
}

#[derive(Debug)]
pub struct PoolState<T> {
    slots: Vec<Slot<T>>,
    /// Cold slots reserved by `admit` whose instance is still starting.
    starting: usize,
}

impl<T> Default for PoolState<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            starting: 0,
        }
    }
}

impl<T: Clone> PoolState<T> {
    /// `depth`: events one instance may hold for this function ([`queue_depth`]).
    pub fn admit(&mut self, policy: &PoolPolicy, depth: usize) -> Admission<T> {
        // The most recently used idle instance: the oldest are left to reach the idle timeout.
        if let Some(slot) = self
            .slots
            .iter_mut()
            .filter(|s| s.depth == 0)
            .max_by_key(|s| s.idle_since)
        {
            slot.depth = 1;
            return Admission::Warm(slot.instance.clone());
        }
        // A short event waits less behind a few others than a cold start takes.
        let queue_ok = depth > 1;
        if queue_ok {
            if let Some(slot) = self
                .slots
                .iter_mut()
                .filter(|s| s.depth < depth)
                .min_by_key(|s| s.depth)
            {
                slot.depth += 1;
                return Admission::Queued(slot.instance.clone());
            }
        }
        // One cold start at a time for short events: while it starts, the others wait for
        // the queues to move rather than each starting an instance of its own.
        let starting_enough = queue_ok && self.starting > 0;
        if self.slots.len() + self.starting < policy.max_instances && !starting_enough {
            self.starting += 1;
            return Admission::Cold;
        }
        Admission::Wait
    }

    /// A reserved cold slot's instance started; it runs the event that reserved it.
    pub fn started(&mut self, id: u64, instance: T, now: Instant) {
        self.starting = self.starting.saturating_sub(1);
        self.slots.push(Slot {
            id,
            instance,
            depth: 1,
            idle_since: now,
        });
    }

    /// A reserved cold slot's instance failed to start.
    pub fn start_failed(&mut self) {
        self.starting = self.starting.saturating_sub(1);
    }

    /// One event admitted to instance `id` finished. Returns whether the instance is now idle.
    pub fn finished(&mut self, id: u64, now: Instant) -> bool {
        match self.slots.iter_mut().find(|s| s.id == id) {
            Some(slot) => {
                slot.depth = slot.depth.saturating_sub(1);
                if slot.depth == 0 {
                    slot.idle_since = now;
                }
                slot.depth == 0
            }
            None => false,
        }
    }

    /// Instance `id` is gone (crashed, timed out, retired). The events still counted on it
    /// are admitted again by their callers.
    pub fn remove(&mut self, id: u64) -> Option<T> {
        let at = self.slots.iter().position(|s| s.id == id)?;
        Some(self.slots.remove(at).instance)
    }

    /// Idle instances past the idle timeout, beyond the `keep_warm` most recent.
    pub fn reap(&mut self, policy: &PoolPolicy, now: Instant) -> Vec<T> {
        let mut idle: Vec<(Instant, u64)> = self
            .slots
            .iter()
            .filter(|s| s.depth == 0)
            .map(|s| (s.idle_since, s.id))
            .collect();
        idle.sort();
        let removable = idle.len().saturating_sub(policy.keep_warm);
        let expired: Vec<u64> = idle[..removable]
            .iter()
            .take_while(|(since, _)| now.saturating_duration_since(*since) >= policy.idle_timeout)
            .map(|(_, id)| *id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.remove(id))
            .collect()
    }

    /// Every idle instance (a new version was deployed, or the function was deleted).
    pub fn drain(&mut self) -> Vec<T> {
        let (idle, busy) = std::mem::take(&mut self.slots)
            .into_iter()
            .partition(|s| s.depth == 0);
        self.slots = busy;
        idle.into_iter().map(|s: Slot<T>| s.instance).collect()
    }

    pub fn idle_count(&self) -> usize {
        self.slots.iter().filter(|s| s.depth == 0).count()
    }

    /// Instances running an event, and reserved slots still starting.
    pub fn busy_count(&self) -> usize {
        self.slots.iter().filter(|s| s.depth > 0).count() + self.starting
    }
}

/// Whether a waiter that arrived at `arrived` must give up at `now`.
pub fn throttled(policy: &PoolPolicy, arrived: Instant, now: Instant) -> bool {
    now.saturating_duration_since(arrived) >= policy.queue_timeout
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: usize) -> PoolPolicy {
        PoolPolicy {
            max_instances: max,
            idle_timeout: Duration::from_secs(60),
            keep_warm: 0,
            queue_timeout: Duration::from_secs(2),
        }
    }

    /// Admits `n` cold events of a slow function and starts instances 1..=n for them.
    fn started(p: &PoolPolicy, s: &mut PoolState<u64>, n: u64, now: Instant) {
        for id in 1..=n {
            assert_eq!(s.admit(p, 1), Admission::Cold);
            s.started(id, id, now);
        }
    }

    #[test]
    fn cold_until_the_cap_then_wait() {
        let p = policy(2);
        let mut s: PoolState<u64> = PoolState::default();
        assert_eq!(s.admit(&p, 1), Admission::Cold);
        assert_eq!(s.admit(&p, 1), Admission::Cold);
        assert_eq!(s.admit(&p, 1), Admission::Wait);
        s.start_failed();
        assert_eq!(s.admit(&p, 1), Admission::Cold);
        assert_eq!(s.busy_count(), 2);
    }

    #[test]
    fn warm_reuse_prefers_the_most_recent_instance() {
        let p = policy(3);
        let t0 = Instant::now();
        let mut s = PoolState::default();
        started(&p, &mut s, 3, t0);
        assert!(s.finished(1, t0));
        assert!(s.finished(2, t0 + Duration::from_secs(1)));
        assert!(s.finished(3, t0 + Duration::from_secs(2)));
        assert_eq!(s.admit(&p, 3), Admission::Warm(3));
        assert_eq!(s.admit(&p, 3), Admission::Warm(2));
        assert_eq!((s.idle_count(), s.busy_count()), (1, 2));
    }

    #[test]
    fn short_events_queue_on_the_least_loaded_instance_up_to_the_depth() {
        let p = policy(2);
        let t0 = Instant::now();
        let mut s = PoolState::default();
        started(&p, &mut s, 2, t0);
        // Slow functions wait for whichever instance frees first.
        assert_eq!(s.admit(&p, 1), Admission::Wait);
        assert_eq!(s.admit(&p, 3), Admission::Queued(1));
        assert_eq!(s.admit(&p, 3), Admission::Queued(2));
        assert_eq!(s.admit(&p, 3), Admission::Queued(1));
        assert_eq!(s.admit(&p, 3), Admission::Queued(2));
        assert_eq!(s.admit(&p, 3), Admission::Wait, "both at depth 3");
        assert!(!s.finished(2, t0));
        assert_eq!(s.admit(&p, 3), Admission::Queued(2));
        for _ in 0..3 {
            s.finished(1, t0);
        }
        assert_eq!(
            s.admit(&p, 3),
            Admission::Warm(1),
            "an idle instance before any queue"
        );
    }

    #[test]
    fn short_events_queue_before_a_cold_start_and_start_one_instance_at_a_time() {
        let p = policy(3);
        let t0 = Instant::now();
        let mut s = PoolState::default();
        started(&p, &mut s, 1, t0);
        assert_eq!(
            s.admit(&p, 2),
            Admission::Queued(1),
            "below the cap, still queued"
        );
        assert_eq!(s.admit(&p, 2), Admission::Cold, "queues full: scale out");
        assert_eq!(
            s.admit(&p, 2),
            Admission::Wait,
            "one instance is already starting"
        );
        assert_eq!(
            s.admit(&p, 1),
            Admission::Cold,
            "slow events do not wait on it"
        );
        s.started(2, 2, t0);
        assert_eq!(s.admit(&p, 2), Admission::Queued(2));
    }

    #[test]
    fn a_removed_instance_frees_its_slot() {
        let p = policy(1);
        let t0 = Instant::now();
        let mut s = PoolState::default();
        started(&p, &mut s, 1, t0);
        assert_eq!(s.admit(&p, 3), Admission::Queued(1));
        assert_eq!(s.remove(1), Some(1));
        assert!(
            !s.finished(1, t0),
            "events of a removed instance count nowhere"
        );
        assert_eq!(s.admit(&p, 3), Admission::Cold);
        assert_eq!((s.idle_count(), s.busy_count()), (0, 1));
    }

    #[test]
    fn reaps_only_expired_oldest_first_and_keeps_provisioned() {
        let mut p = policy(4);
        let t0 = Instant::now();
        let mut s = PoolState::default();
        started(&p, &mut s, 3, t0);
        s.finished(1, t0);
        s.finished(2, t0 + Duration::from_secs(30));
        s.finished(3, t0 + Duration::from_secs(59));
        assert!(s.reap(&p, t0 + Duration::from_secs(59)).is_empty());
        assert_eq!(s.reap(&p, t0 + Duration::from_secs(60)), vec![1]);
        assert_eq!(s.reap(&p, t0 + Duration::from_secs(100)), vec![2]);
        p.keep_warm = 1;
        // Instance 3 is expired too, but it is the one provisioned instance kept warm.
        assert!(s.reap(&p, t0 + Duration::from_secs(1000)).is_empty());
        p.keep_warm = 0;
        assert_eq!(s.reap(&p, t0 + Duration::from_secs(1000)), vec![3]);
        assert_eq!(s.admit(&p, 3), Admission::Cold);
    }

    #[test]
    fn busy_instances_are_never_reaped() {
        let p = policy(1);
        let t0 = Instant::now();
        let mut s = PoolState::default();
        started(&p, &mut s, 1, t0);
        assert!(s.reap(&p, t0 + Duration::from_secs(1000)).is_empty());
    }

    #[test]
    fn queues_are_as_deep_as_fits_in_a_cold_start() {
        let ms = |n: u64| Some(Duration::from_micros(n * 1000));
        assert_eq!(queue_depth(None), 1, "unknown until an event has run");
        assert_eq!(queue_depth(Some(Duration::ZERO)), 16);
        assert_eq!(queue_depth(Some(Duration::from_micros(100))), 16);
        assert_eq!(queue_depth(ms(2)), 16);
        assert_eq!(queue_depth(ms(5)), 6);
        assert_eq!(queue_depth(ms(16)), 2);
        assert_eq!(queue_depth(ms(17)), 1);
        assert_eq!(queue_depth(ms(60_000)), 1);
    }

    #[test]
    fn waiters_are_throttled_after_the_queue_timeout() {
        let p = policy(1);
        let t0 = Instant::now();
        assert!(!throttled(&p, t0, t0 + Duration::from_millis(1999)));
        assert!(throttled(&p, t0, t0 + Duration::from_secs(2)));
    }

    #[test]
    fn drain_empties_idle_but_not_busy() {
        let p = policy(2);
        let t0 = Instant::now();
        let mut s = PoolState::default();
        started(&p, &mut s, 2, t0);
        s.finished(2, t0);
        assert_eq!(s.drain(), vec![2]);
        assert_eq!((s.idle_count(), s.busy_count()), (0, 1));
    }
}
