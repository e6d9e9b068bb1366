//! The daemon's periodic chores: [`Every`] says when one is due again, and
//! [`Chores`] holds the cluster core's.

use std::time::{Duration, Instant};

/// Endpoints are checked against the socket table this often.
const VERIFY: Duration = Duration::from_secs(1);
/// Aged attribution answers are looked at this often, even when nothing changed.
const CONTEST_CHECK: Duration = Duration::from_secs(10);
/// The published groups are compared with a full recomputation this often
/// (a safety net: the groups are kept current incrementally).
const RECONCILE: Duration = Duration::from_secs(60);

/// A chore done every `period`: due once that long has passed since it was last done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Every {
    period: Duration,
    last: Instant,
}

impl Every {
    /// A chore just done at `now` (first due one period later).
    pub fn new(period: Duration, now: Instant) -> Every {
        Every { period, last: now }
    }

    pub fn is_due(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) >= self.period
    }

    /// Records that it was done at `now` (also when done early, for another reason).
    pub fn done(&mut self, now: Instant) {
        self.last = now;
    }

    /// Whether it is due at `now`; if so, it counts as done then.
    pub fn take(&mut self, now: Instant) -> bool {
        let due = self.is_due(now);
        if due {
            self.done(now);
        }
        due
    }
}

/// The cluster core's chores: every endpoint checked against the socket table
/// ([`VERIFY`]), contested endpoints resolved again ([`CONTEST_CHECK`]), the
/// published groups compared with a full recomputation ([`RECONCILE`]), and the
/// per-cluster bookkeeping redone when the clusters changed.
#[derive(Debug)]
pub struct Chores {
    verify: Every,
    contest_check: Every,
    reconcile: Every,
    /// The registry generation the bookkeeping last saw.
    bookkept: Option<u64>,
}

impl Chores {
    /// Chores just done at `now`; the bookkeeping not done yet.
    pub fn new(now: Instant) -> Chores {
        Chores {
            verify: Every::new(VERIFY, now),
            contest_check: Every::new(CONTEST_CHECK, now),
            reconcile: Every::new(RECONCILE, now),
            bookkept: None,
        }
    }

    /// Whether every endpoint is to be checked again at `now` (counted as done).
    pub fn verify(&mut self, now: Instant) -> bool {
        self.verify.take(now)
    }

    /// Whether contested endpoints are to be resolved again at `now`: when
    /// `changed` (claims or verdicts changed), and every [`CONTEST_CHECK`] for
    /// answers that aged (counted as done).
    pub fn contest_check(&mut self, now: Instant, changed: bool) -> bool {
        let due = self.contest_check.is_due(now) || changed;
        if due {
            self.contest_check.done(now);
        }
        due
    }

    /// Whether the published groups are to be compared with a full
    /// recomputation at `now` (counted as done).
    pub fn reconcile(&mut self, now: Instant) -> bool {
        self.reconcile.take(now)
    }

    /// Whether the clusters changed (the registry's `generation`) since the
    /// bookkeeping last saw them; it sees them now.
    pub fn clusters_changed(&mut self, generation: u64) -> bool {
        self.bookkept.replace(generation) != Some(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn due_one_period_after_it_was_done() {
        let t0 = Instant::now();
        let e = Every::new(10 * S, t0);
        assert!(!e.is_due(t0));
        assert!(!e.is_due(t0 + 9 * S));
        assert!(e.is_due(t0 + 10 * S));
    }

    #[test]
    fn taking_it_starts_the_next_period() {
        let t0 = Instant::now();
        let mut e = Every::new(10 * S, t0);
        assert!(!e.take(t0 + 5 * S));
        assert!(e.take(t0 + 12 * S));
        assert!(!e.take(t0 + 15 * S), "the period restarts when it is taken");
        assert!(e.take(t0 + 22 * S));
    }

    #[test]
    fn done_early_postpones_it() {
        let t0 = Instant::now();
        let mut e = Every::new(10 * S, t0);
        e.done(t0 + 8 * S);
        assert!(!e.is_due(t0 + 12 * S));
        assert!(e.is_due(t0 + 18 * S));
        // A clock reading before the last time is never due (and never panics).
        assert!(!e.is_due(t0));
    }

    #[test]
    fn contested_endpoints_are_resolved_on_a_change_or_every_10_s() {
        let t0 = Instant::now();
        let mut c = Chores::new(t0);
        assert!(!c.contest_check(t0 + S, false));
        assert!(c.contest_check(t0 + 2 * S, true), "a change: at once");
        assert!(
            !c.contest_check(t0 + 11 * S, false),
            "and it restarts the pace"
        );
        assert!(c.contest_check(t0 + 12 * S, false));
        assert!(!c.contest_check(t0 + 13 * S, false));
    }

    #[test]
    fn endpoints_are_verified_every_second_and_the_groups_reconciled_every_minute() {
        let t0 = Instant::now();
        let mut c = Chores::new(t0);
        let verified = (1..=10).filter(|i| c.verify(t0 + *i * S / 2)).count();
        assert_eq!(verified, 5);
        assert!(!c.reconcile(t0 + 59 * S));
        assert!(c.reconcile(t0 + 60 * S));
        assert!(!c.reconcile(t0 + 61 * S));
    }

    #[test]
    fn bookkeeping_is_redone_only_when_the_clusters_changed() {
        let mut c = Chores::new(Instant::now());
        assert!(c.clusters_changed(0), "the first time");
        assert!(!c.clusters_changed(0));
        assert!(c.clusters_changed(1));
        assert!(!c.clusters_changed(1));
    }
}
