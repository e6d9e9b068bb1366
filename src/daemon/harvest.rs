//! Which sessions' Grafana dashboards were copied, and when to look again in
//! those whose dashboards are not there yet ([`Harvest`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The first and the longest pause between looks for a session's Grafana
/// dashboards (Ray writes them as its Dashboard starts).
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Session dirs whose dashboards were copied, and those whose dashboards are not
/// there yet: when to look again, and the pause after that (doubling up to
/// [`BACKOFF_MAX`]), so clusters without dashboards cost no folder walk every second.
#[derive(Debug, Default)]
pub struct Harvest {
    done: BTreeSet<PathBuf>,
    retry: HashMap<PathBuf, (Instant, Duration)>,
}

impl Harvest {
    /// Whether `dir` is to be looked at `now`.
    pub fn wants(&self, dir: &Path, now: Instant) -> bool {
        !self.done.contains(dir) && self.retry.get(dir).is_none_or(|(at, _)| now >= *at)
    }

    /// Whether a retry is due at `now`.
    pub fn retry_due(&self, now: Instant) -> bool {
        self.retry.values().any(|(at, _)| now >= *at)
    }

    /// `dir`'s dashboards were copied: it is not looked at again.
    pub fn copied(&mut self, dir: PathBuf) {
        self.retry.remove(&dir);
        self.done.insert(dir);
    }

    /// Schedules the next look at `dir`, each pause twice the last.
    pub fn later(&mut self, dir: PathBuf, now: Instant) {
        let pause = self
            .retry
            .get(&dir)
            .map_or(BACKOFF_MIN, |(_, p)| (*p * 2).min(BACKOFF_MAX));
        self.retry.insert(dir, (now + pause, pause));
    }

    /// Forgets the sessions no longer known.
    pub fn keep_only(&mut self, sessions: &HashSet<&PathBuf>) {
        self.done.retain(|d| sessions.contains(d));
        self.retry.retain(|d, _| sessions.contains(d));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_session_without_dashboards_is_looked_at_after_1s_then_doubling_to_a_minute() {
        let (mut h, dir, t0) = (Harvest::default(), PathBuf::from("/s"), Instant::now());
        assert!(h.wants(&dir, t0));
        let mut at = t0;
        let mut pauses = Vec::new();
        for _ in 0..8 {
            h.later(dir.clone(), at);
            let (next, pause) = h.retry[&dir];
            assert!(!h.wants(&dir, next - Duration::from_millis(1)));
            assert!(h.wants(&dir, next) && h.retry_due(next));
            pauses.push(pause.as_secs());
            at = next;
        }
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn a_copied_session_is_never_looked_at_again_until_forgotten() {
        let (mut h, dir, t0) = (Harvest::default(), PathBuf::from("/s"), Instant::now());
        h.later(dir.clone(), t0);
        h.copied(dir.clone());
        assert!(!h.wants(&dir, t0 + 100 * S));
        assert!(!h.retry_due(t0 + 100 * S));
        h.keep_only(&HashSet::new());
        assert!(h.wants(&dir, t0));
    }
}
