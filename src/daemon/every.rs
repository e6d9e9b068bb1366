//! The daemon's periodic chores: [`Every`] says when one is due again.

use std::time::{Duration, Instant};

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
}
