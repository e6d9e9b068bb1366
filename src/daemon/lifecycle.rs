//! Each cluster's life as the daemon sees it, recorded in the history
//! ([`crate::history`]): first seen, identity changes, heartbeats, and the end.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::clusters::Core;
use super::every::Every;
use crate::config::StackConfig;
use crate::history::{self, Entry, History, HistoryLog, Identity, Record};
use crate::registry::{Cluster, Origin, Registry, State};

/// The cluster history as the daemon keeps it: its log (None when its file
/// could not be opened: logged), the heartbeat that records the live clusters
/// alive, whether the history was reconciled with the clusters found at start,
/// and the registry generation it last caught up with.
pub struct HistoryBook {
    log: Option<HistoryLog>,
    heartbeat: Every,
    reconciled: bool,
    generation: Option<u64>,
    /// Appends to the history that succeeded so far, and those that failed (raywatch's own metrics).
    pub writes: u64,
    pub write_errors: u64,
}

/// What a look at the clusters is to record.
#[derive(Debug, PartialEq, Eq)]
struct Due {
    /// Whether the history was reconciled before (else this is the daemon's start).
    reconciled: bool,
    /// Whether the live clusters are to be recorded alive.
    heartbeat: bool,
}

impl HistoryBook {
    /// No history yet (see [`HistoryBook::open`]); the first heartbeat due one
    /// [`history::HEARTBEAT`] after `now`.
    pub fn new(now: Instant) -> HistoryBook {
        HistoryBook {
            log: None,
            heartbeat: Every::new(history::HEARTBEAT, now),
            reconciled: false,
            generation: None,
            writes: 0,
            write_errors: 0,
        }
    }

    /// Opens the history file at `path`, keeping `keep` of it; a failure is
    /// logged and the daemon runs without it.
    pub fn open(&mut self, path: &Path, keep: Duration) {
        match HistoryLog::open(path, keep) {
            Ok(log) => {
                if log.history.skipped_lines > 0 {
                    tracing::warn!(
                        "{}: skipped {} line(s) that did not parse",
                        path.display(),
                        log.history.skipped_lines
                    );
                }
                self.log = Some(log);
            }
            Err(e) => tracing::error!("the cluster history is not recorded: {e:#}"),
        }
    }

    /// Whether anything is to be recorded at `now`, the registry at `generation`:
    /// nothing unless the clusters changed (the generation counts births,
    /// deaths, names and Slurm jobs), a heartbeat is due, or the history was not
    /// reconciled yet. So an idle second costs no walk of every cluster.
    fn due(&mut self, generation: u64, now: Instant) -> Option<Due> {
        let heartbeat = self.heartbeat.is_due(now);
        if self.reconciled && self.generation == Some(generation) && !heartbeat {
            return None;
        }
        self.generation = Some(generation);
        let reconciled = std::mem::replace(&mut self.reconciled, true);
        Some(Due {
            reconciled,
            heartbeat,
        })
    }

    /// Brings the history in line with the registry: a live cluster it does
    /// not know (or knows as ended, or under another name or Slurm job) is
    /// recorded as seen; a cluster it knows as live that is dead or no longer
    /// followed is recorded as ended; every [`history::HEARTBEAT`] the live
    /// ones are recorded alive. All in one append.
    fn record(
        &mut self,
        registry: &Registry,
        settings: &watch::Receiver<StackConfig>,
        now: Instant,
        wall: SystemTime,
    ) {
        if self.log.is_none() {
            return;
        }
        let Some(due) = self.due(registry.generation(), now) else {
            return;
        };
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let (keep, host) = {
            let settings = settings.borrow();
            (settings.retention, settings.ray_host())
        };
        log.keep = keep;
        let (mut records, live) = catch_up(
            &log.history,
            registry.clusters(),
            &host,
            due.reconciled,
            wall,
        );
        if !live.is_empty() && due.heartbeat {
            self.heartbeat.done(now);
            records.push(Record::Alive {
                t: history::unix(wall),
                ids: live,
            });
        }
        if records.is_empty() {
            return;
        }
        match log.append(records) {
            Ok(()) => self.writes += 1,
            Err(e) => {
                self.write_errors += 1;
                tracing::warn!("cannot record the cluster history: {e:#}");
            }
        }
    }
}

impl Core {
    /// Opens the history file; a failure is logged and the daemon runs without it.
    pub fn open_history(&mut self) {
        let keep = self.settings.borrow().retention;
        self.history.open(&self.home.history(), keep);
    }

    /// Brings the history in line with the registry (once a second; see
    /// [`HistoryBook`]).
    pub fn record_history(&mut self) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        self.history
            .record(&self.registry, &self.settings, now, wall);
    }
}

/// What `history` lacks about `clusters` at `wall`: the records that bring it in
/// line, and the ids of the live clusters. `reconciled`: whether it was brought in
/// line before (else this is the daemon's start, and ends found are said so).
fn catch_up<'a>(
    history: &History,
    clusters: impl Iterator<Item = &'a Cluster>,
    host: &str,
    reconciled: bool,
    wall: SystemTime,
) -> (Vec<Record>, Vec<String>) {
    let t = history::unix(wall);
    let mut records = Vec::new();
    let mut present = BTreeSet::new();
    let mut live = Vec::new();
    for c in clusters {
        let ident = identity(c, host);
        present.insert(ident.id.clone());
        let known = history.entries.get(&ident.id);
        match &c.state {
            State::Live => {
                live.push(ident.id.clone());
                let id = ident.id.clone();
                if known.is_none_or(|e| e.ended() || e.cluster != ident) {
                    records.push(Record::Seen { t, cluster: ident });
                }
                records.extend(losses(known, c, &id));
            }
            State::Dead { since, reason } => {
                // Dead on first sight (an old session folder) is no
                // cluster this stack saw live: not history.
                let Some(e) = known.filter(|e| !e.ended()) else {
                    continue;
                };
                // The last rewrite raywatch saw, or for a cluster that
                // died while the daemon was down, its file's last write.
                let last = history::unix(c.mtime.min(c.last_change_wall).min(wall));
                let reason = if reconciled {
                    reason.clone()
                } else {
                    format!("found ended when raywatch restarted: {reason}")
                };
                records.push(Record::Ended {
                    t: history::unix(*since),
                    id: ident.id,
                    last_seen: last.max(e.last_seen_unix),
                    reason,
                });
            }
        }
    }
    records.extend(vanished(history, &present, reconciled, t));
    (records, live)
}

/// The nodes `c` lost that its history entry `known` does not record yet.
fn losses<'a>(
    known: Option<&'a Entry>,
    c: &'a Cluster,
    id: &'a str,
) -> impl Iterator<Item = Record> + 'a {
    c.lost.iter().filter_map(move |l| {
        let t = history::unix(l.at);
        (!known.is_some_and(|e| e.knows_loss(&l.endpoint, t))).then(|| Record::NodeLost {
            t,
            id: id.to_string(),
            node: l.endpoint.clone(),
        })
    })
}

/// Live in the history, unknown to the registry: its files went while raywatch
/// was down, or it is no longer followed (detached, unwatched).
fn vanished(
    history: &History,
    present: &BTreeSet<String>,
    reconciled: bool,
    t: f64,
) -> Vec<Record> {
    let reason = if reconciled {
        "no longer followed (detached, or its folder is no longer watched)"
    } else {
        "found ended when raywatch restarted: its discovery file is gone"
    };
    history
        .entries
        .values()
        .filter(|e| !e.ended() && !present.contains(&e.cluster.id))
        .map(|e| Record::Ended {
            t,
            id: e.cluster.id.clone(),
            last_seen: if reconciled { t } else { e.last_seen_unix },
            reason: reason.into(),
        })
        .collect()
}

/// A cluster's identity as the history keeps it.
fn identity(c: &Cluster, host: &str) -> Identity {
    let (job_id, job_name) = match &c.slurm {
        Some(Some(job)) => (Some(job.id.clone()), job.name.clone()),
        _ => (None, None),
    };
    Identity {
        id: history::cluster_id(&c.found.file, &c.found.session),
        name: c.name.clone(),
        session: c.found.session.clone(),
        session_dir: c.found.session_dir.clone(),
        temp_dir: c.found.temp_dir.clone(),
        discovery_file: c.found.file.clone(),
        user: c.user.clone(),
        host: host.to_string(),
        source: match c.origin {
            Origin::Watched => "watch".into(),
            Origin::Attached { .. } => "attach".into(),
        },
        slurm_job_id: job_id,
        slurm_job_name: job_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, ended: bool) -> Entry {
        Entry {
            cluster: Identity {
                id: id.into(),
                name: format!("{id}-ray"),
                session: "session_2026-11-27_13-26-35_555015_2972".into(),
                session_dir: None,
                temp_dir: "/tmp/ray".into(),
                discovery_file: format!("/tmp/ray/{id}").into(),
                user: "alice".into(),
                host: "h".into(),
                source: "watch".into(),
                slurm_job_id: None,
                slurm_job_name: None,
            },
            first_seen_unix: 100.0,
            last_seen_unix: 200.0,
            ended_unix: ended.then_some(300.0),
            end_reason: ended.then(|| "gone".into()),
            nodes_lost: Vec::new(),
        }
    }

    fn history() -> History {
        let mut h = History::default();
        for (id, ended) in [("live", false), ("ended", true), ("followed", false)] {
            h.entries.insert(id.into(), entry(id, ended));
        }
        h
    }

    #[test]
    fn recorded_at_start_then_only_on_a_change_or_a_heartbeat() {
        let t0 = Instant::now();
        let mut book = HistoryBook::new(t0);
        let due = |reconciled, heartbeat| {
            Some(Due {
                reconciled,
                heartbeat,
            })
        };
        assert_eq!(book.due(5, t0), due(false, false), "the start reconciles");
        assert_eq!(book.due(5, t0), None, "nothing changed");
        assert_eq!(book.due(6, t0), due(true, false), "the clusters changed");
        let beat = t0 + history::HEARTBEAT;
        assert_eq!(book.due(6, beat), due(true, true));
        // No live cluster was recorded alive: the heartbeat stays due.
        assert_eq!(book.due(6, beat), due(true, true));
        book.heartbeat.done(beat);
        assert_eq!(book.due(6, beat), None);
    }

    #[test]
    fn a_live_cluster_no_longer_followed_ends_now() {
        let present = BTreeSet::from(["followed".to_string()]);
        let records = vanished(&history(), &present, true, 500.0);
        assert_eq!(
            records,
            [Record::Ended {
                t: 500.0,
                id: "live".into(),
                last_seen: 500.0,
                reason: "no longer followed (detached, or its folder is no longer watched)".into(),
            }]
        );
    }

    #[test]
    fn at_start_a_live_cluster_whose_file_went_ends_when_it_was_last_seen() {
        let records = vanished(&history(), &BTreeSet::new(), false, 500.0);
        let ended: Vec<(&str, f64)> = records
            .iter()
            .map(|r| match r {
                Record::Ended {
                    id,
                    last_seen,
                    reason,
                    ..
                } => {
                    assert!(reason.starts_with("found ended when raywatch restarted"));
                    (id.as_str(), *last_seen)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ended, [("followed", 200.0), ("live", 200.0)]);
    }

    #[test]
    fn a_lost_node_is_recorded_once_with_when_it_went() {
        use crate::discovery::{Found, Listing};
        use crate::registry::Registry;
        use std::time::Duration;
        let found = Found::for_file(std::path::Path::new(
            "/tmp/ray_a/session_x_1/prom_metrics_service_discovery.json",
        ));
        let mut r = Registry::new(Duration::from_secs(20));
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let see = |r: &mut Registry, targets: &[&str], at: SystemTime| {
            let listing = Listing {
                targets: targets.iter().map(|t| t.to_string()).collect(),
                mtime: at,
                uid: nix::unistd::geteuid().as_raw(),
            };
            r.observe(
                &found,
                Origin::Watched,
                Ok(Some(listing)),
                Instant::now(),
                at,
            );
        };
        see(
            &mut r,
            &["10.213.1.1:8080", "10.213.2.1:8080", "10.213.1.1:44217"],
            t0,
        );
        let lost_at = t0 + Duration::from_secs(7);
        see(&mut r, &["10.213.1.1:8080", "10.213.1.1:44217"], lost_at);
        let mut h = History::default();
        let (records, _) = catch_up(&h, r.clusters(), "h", true, lost_at);
        let lost: Vec<&Record> = records
            .iter()
            .filter(|r| matches!(r, Record::NodeLost { .. }))
            .collect();
        assert!(
            matches!(lost[..], [Record::NodeLost { t, node, .. }] if *t == 1_007.0 && node == "10.213.2.1:8080"),
            "{records:?}"
        );
        for rec in records {
            h.apply(rec);
        }
        let (again, _) = catch_up(
            &h,
            r.clusters(),
            "h",
            true,
            lost_at + Duration::from_secs(1),
        );
        assert!(
            !again.iter().any(|r| matches!(r, Record::NodeLost { .. })),
            "{again:?}"
        );
        let e = h.entries.values().next().unwrap();
        assert_eq!(e.nodes_lost.len(), 1);
    }
}
