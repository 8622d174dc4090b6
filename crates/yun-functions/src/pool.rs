//! The instance scheduler's decisions, as a pure state machine over one function's
//! instances. No processes, no clock: callers pass `now`, so tests drive time by hand.
//!
//! Invariants: `busy + idle.len() <= max_instances` after every `admit` that returns
//! `Warm` or `Cold` (a lowered cap is honoured as instances come back); an instance is in
//! `idle` or lent out, never both.

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

/// What an arriving invocation should do.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission<T> {
    /// Reuse this warm instance.
    Warm(T),
    /// A slot is reserved: start (or take a stem cell for) a new instance.
    Cold,
    /// Every slot is busy: wait for a release, until the deadline.
    Wait,
}

#[derive(Debug)]
pub struct PoolState<T> {
    /// Most recently used last: reuse takes from the end, so the oldest idle instances
    /// are the ones left to reach the idle timeout.
    idle: Vec<(T, Instant)>,
    busy: usize,
}

impl<T> Default for PoolState<T> {
    fn default() -> Self {
        Self {
            idle: Vec::new(),
            busy: 0,
        }
    }
}

impl<T> PoolState<T> {
    pub fn admit(&mut self, policy: &PoolPolicy) -> Admission<T> {
        if let Some((instance, _)) = self.idle.pop() {
            self.busy += 1;
            return Admission::Warm(instance);
        }
        if self.busy < policy.max_instances {
            self.busy += 1;
            return Admission::Cold;
        }
        Admission::Wait
    }

    /// A lent instance came back healthy.
    pub fn release(&mut self, instance: T, now: Instant) {
        self.busy = self.busy.saturating_sub(1);
        self.idle.push((instance, now));
    }

    /// A lent instance (or a reserved cold slot) is gone: crashed, timed out, or failed to start.
    pub fn discard(&mut self) {
        self.busy = self.busy.saturating_sub(1);
    }

    /// Idle instances past the idle timeout, beyond the `keep_warm` most recent.
    pub fn reap(&mut self, policy: &PoolPolicy, now: Instant) -> Vec<T> {
        let removable = self.idle.len().saturating_sub(policy.keep_warm);
        let expired = self.idle[..removable]
            .iter()
            .take_while(|(_, since)| now.saturating_duration_since(*since) >= policy.idle_timeout)
            .count();
        self.idle.drain(..expired).map(|(t, _)| t).collect()
    }

    /// Every idle instance (a new version was deployed, or the function was deleted).
    pub fn drain(&mut self) -> Vec<T> {
        self.idle.drain(..).map(|(t, _)| t).collect()
    }

    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }

    pub fn busy_count(&self) -> usize {
        self.busy
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

    #[test]
    fn cold_until_the_cap_then_wait() {
        let p = policy(2);
        let mut s: PoolState<u32> = PoolState::default();
        assert_eq!(s.admit(&p), Admission::Cold);
        assert_eq!(s.admit(&p), Admission::Cold);
        assert_eq!(s.admit(&p), Admission::Wait);
        s.discard();
        assert_eq!(s.admit(&p), Admission::Cold);
    }

    #[test]
    fn warm_reuse_prefers_the_most_recent_instance() {
        let p = policy(3);
        let t0 = Instant::now();
        let mut s = PoolState::default();
        for _ in 0..3 {
            assert_eq!(s.admit(&p), Admission::Cold);
        }
        s.release(1, t0);
        s.release(2, t0 + Duration::from_secs(1));
        s.release(3, t0 + Duration::from_secs(2));
        assert_eq!(s.admit(&p), Admission::Warm(3));
        assert_eq!(s.admit(&p), Admission::Warm(2));
        assert_eq!((s.idle_count(), s.busy_count()), (1, 2));
    }

    #[test]
    fn reaps_only_expired_oldest_first_and_keeps_provisioned() {
        let mut p = policy(4);
        let t0 = Instant::now();
        let mut s = PoolState::default();
        for _ in 0..3 {
            s.admit(&p);
        }
        s.release(1, t0);
        s.release(2, t0 + Duration::from_secs(30));
        s.release(3, t0 + Duration::from_secs(59));
        assert!(s.reap(&p, t0 + Duration::from_secs(59)).is_empty());
        assert_eq!(s.reap(&p, t0 + Duration::from_secs(60)), vec![1]);
        assert_eq!(s.reap(&p, t0 + Duration::from_secs(100)), vec![2]);
        p.keep_warm = 1;
        // Instance 3 is expired too, but it is the one provisioned instance kept warm.
        assert!(s.reap(&p, t0 + Duration::from_secs(1000)).is_empty());
        p.keep_warm = 0;
        assert_eq!(s.reap(&p, t0 + Duration::from_secs(1000)), vec![3]);
        assert_eq!(s.admit(&p), Admission::Cold);
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
        let mut s = PoolState::default();
        s.admit(&p);
        s.admit(&p);
        s.release(7, Instant::now());
        assert_eq!(s.drain(), vec![7]);
        assert_eq!((s.idle_count(), s.busy_count()), (0, 1));
    }
}
