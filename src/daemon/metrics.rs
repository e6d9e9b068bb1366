//! raywatch's own metrics: each cluster's life, nodes and end, and the stack's counters, for its Prometheus.
//!
//! The daemon serves them on the gateway ([`crate::gateway::METRICS_PATH`]), which admits only
//! connections of the stack's own uid (the kernel says whose socket calls), so
//! the stack's Prometheus, running as that uid, scrapes them with no credential
//! to leak, and no other user reads them. Each cluster's series carry the
//! labels its Ray series carry (`ray_io_cluster`, `ray_user`, `ray_session`,
//! `ray_temp_dir`; `ray_host` comes from the external label, as on Ray's), so
//! alert rules join the two `on()` those labels:
//!
//! - `raywatch_cluster_live`: 1 while raywatch follows the cluster live, 0 once it ended;
//! - `raywatch_cluster_ended_timestamp_seconds{reason}`: when and how it ended:
//!   `died` (raywatch found it dead: the liveness bound passed, or its GCS refused),
//!   `removed` (its discovery file went with its session folder), `superseded`
//!   (a temp-dir file Ray replaced by a link to its session's), `detached` (no
//!   longer followed: `raywatch detach`, or its folder no longer watched);
//! - `raywatch_cluster_nodes{state}`: a live cluster's nodes `up` (listed by
//!   Ray), `lost` (listed before, not now) and `known` (both);
//! - `raywatch_cluster_node_losses_total`: nodes a live cluster lost so far.
//!
//! And the stack's own: `raywatch_inputs_rejected{kind}` (discovery files and
//! watched roots refused now), `raywatch_reads_exhausted_total` (reads failed
//! for want of descriptors or memory), `raywatch_endpoints_withheld{reason}`
//! (listed endpoints not scraped: `foreign`, `no_listener`, `contested`),
//! `raywatch_gateway_refusals_total{kind}` (`connection`: another user;
//! `request`: beyond the query API), `raywatch_history_writes_total{result}`,
//! and the watch budget: `raywatch_watch_folders`, `raywatch_watch_degraded`,
//! `raywatch_watch_limit` (`fs.inotify.max_user_watches`).
//!
//! An ended cluster's series stay [`KEEP_ENDED`] (beyond a rule's `for` and its
//! evaluation), at most [`MAX_ENDED`] of them (the oldest go first), then go:
//! the daemon's memory stays flat under any churn.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::registry::{Cluster, State};

/// How long an ended cluster's series stay.
pub const KEEP_ENDED: Duration = Duration::from_secs(10 * 60);
/// How many ended clusters' series are kept at most.
pub const MAX_ENDED: usize = 1000;

/// The labels a cluster's series carry: those of its Ray series (see
/// [`crate::registry::labels`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub ray_io_cluster: String,
    pub ray_user: String,
    pub ray_session: String,
    pub ray_temp_dir: String,
}

impl ClusterLabels {
    fn of(c: &Cluster) -> ClusterLabels {
        ClusterLabels {
            ray_io_cluster: c.name.clone(),
            ray_user: c.user.clone(),
            ray_session: c.found.session.clone(),
            ray_temp_dir: c.found.temp_dir.to_string_lossy().into_owned(),
        }
    }
}

/// How a cluster ended, as raywatch saw it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum EndReason {
    /// raywatch found it dead: the liveness bound passed, or its GCS refused.
    Died,
    /// Its discovery file went, with its session folder.
    Removed,
    /// A temp-dir discovery file Ray replaced by a link to its session's file
    /// (the cluster goes on as that session's).
    Superseded,
    /// No longer followed: detached, or its folder no longer watched.
    Detached,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Died => "died",
            EndReason::Removed => "removed",
            EndReason::Superseded => "superseded",
            EndReason::Detached => "detached",
        }
    }
}

impl EncodeLabelValue for EndReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndedLabels {
    #[prometheus(flatten)]
    cluster: ClusterLabels,
    reason: EndReason,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    #[prometheus(flatten)]
    cluster: ClusterLabels,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// One cluster as its series show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub labels: ClusterLabels,
    /// How and when it ended; None while live.
    pub ended: Option<(EndReason, SystemTime)>,
    /// Nodes Ray lists now (the head's host counts once).
    pub nodes_up: u64,
    /// Nodes it listed before and not now.
    pub nodes_lost: u64,
    /// Nodes lost so far, counted once each loss.
    pub losses: u64,
    /// The newest loss counted.
    last_loss: Option<SystemTime>,
}

/// Who a row is: the discovery file and the session (a temp-dir file sees
/// several sessions in turn).
type Key = (PathBuf, String);

/// The clusters' rows, kept in line with the registry (see [`Book::sync`]).
#[derive(Default)]
pub struct Book {
    rows: HashMap<Key, Row>,
    /// The ended rows, oldest first.
    ended: BTreeSet<(SystemTime, Key)>,
    /// How ends raywatch caused itself, by file, were classified (see [`Book::note_end`]).
    causes: HashMap<PathBuf, EndReason>,
    /// The registry generation last synced.
    generation: Option<u64>,
}

impl Book {
    /// Records why the cluster at `file` is about to be found dead, when it is
    /// not the liveness bound or its GCS (the default: [`EndReason::Died`]).
    pub fn note_end(&mut self, file: PathBuf, reason: EndReason) {
        // Bounded by the clusters that exist: taken at the next sync.
        self.causes.insert(file, reason);
    }

    /// Brings the rows in line with the registry's `clusters` at `generation`
    /// (nothing to do when it did not move), then lets go of ended rows past
    /// [`KEEP_ENDED`] or beyond [`MAX_ENDED`].
    pub fn sync<'a>(
        &mut self,
        clusters: impl Iterator<Item = &'a Cluster>,
        generation: u64,
        wall: SystemTime,
    ) {
        if self.generation != Some(generation) {
            self.generation = Some(generation);
            self.catch_up(clusters, wall);
        }
        self.expire(wall);
    }

    fn catch_up<'a>(&mut self, clusters: impl Iterator<Item = &'a Cluster>, wall: SystemTime) {
        let mut present = std::collections::HashSet::new();
        for c in clusters {
            let key = (c.found.file.clone(), c.found.session.clone());
            match &c.state {
                State::Live => {
                    let row = self.rows.entry(key.clone()).or_insert_with(|| Row {
                        labels: ClusterLabels::of(c),
                        ended: None,
                        nodes_up: 0,
                        nodes_lost: 0,
                        losses: 0,
                        last_loss: None,
                    });
                    if let Some((_, at)) = row.ended.take() {
                        // Revived (its file rewritten after all).
                        self.ended.remove(&(at, key.clone()));
                    }
                    row.labels = ClusterLabels::of(c);
                    count_nodes(row, c);
                }
                State::Dead { since, .. } => {
                    let cause = self.causes.remove(&c.found.file);
                    // Dead on first sight (an old session folder): never live here.
                    if let Some(row) = self.rows.get_mut(&key)
                        && row.ended.is_none()
                    {
                        let at = (*since).min(wall);
                        row.ended = Some((cause.unwrap_or(EndReason::Died), at));
                        self.ended.insert((at, key.clone()));
                    }
                }
            }
            present.insert(key);
        }
        let gone: Vec<Key> = self
            .rows
            .iter()
            .filter(|(k, r)| r.ended.is_none() && !present.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(row) = self.rows.get_mut(&key) {
                row.ended = Some((EndReason::Detached, wall));
                self.ended.insert((wall, key));
            }
        }
        self.causes.clear();
    }

    fn expire(&mut self, wall: SystemTime) {
        while let Some((at, key)) = self.ended.first().cloned() {
            let old = wall.duration_since(at).is_ok_and(|d| d >= KEEP_ENDED);
            if !old && self.ended.len() <= MAX_ENDED {
                break;
            }
            self.ended.pop_first();
            self.rows.remove(&key);
        }
    }

    /// The rows, for [`render`].
    pub fn rows(&self) -> Vec<Row> {
        self.rows.values().cloned().collect()
    }

    /// How many rows are kept (live and ended).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.rows.len()
    }
}

/// A live cluster's nodes: the hosts of its listed endpoints (Ray lists one
/// per node, then the head's autoscaler and dashboard on the head's host),
/// those it lost, and each new loss counted.
fn count_nodes(row: &mut Row, c: &Cluster) {
    let roles = crate::ray::roles(&c.targets);
    let workers = roles
        .iter()
        .filter(|r| **r == crate::ray::Role::Worker)
        .count() as u64;
    row.nodes_up = workers + u64::from(!c.targets.is_empty());
    row.nodes_lost = c.still_lost().len() as u64;
    for l in &c.lost {
        if row.last_loss.is_none_or(|t| l.at > t) {
            row.losses += 1;
        }
    }
    row.last_loss = c.lost.iter().map(|l| l.at).max().or(row.last_loss);
}

/// Endpoints live clusters list that are not scraped, by why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Withheld {
    /// Held by a user raywatch does not trust.
    pub foreign: u64,
    /// Nothing listens on it yet.
    pub no_listener: u64,
    /// Listed by another cluster too, and not found to be this one's.
    pub contested: u64,
}

/// The stack's own counts, read when scraped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackCounts {
    /// Discovery files refused now.
    pub rejected_files: u64,
    /// Watched roots refused now.
    pub refused_roots: u64,
    /// Reads that failed for want of descriptors or memory, so far.
    pub read_exhausted: u64,
    pub withheld: Withheld,
    pub gateway_refused_connections: u64,
    pub gateway_refused_requests: u64,
    /// Appends to the cluster history, and those that failed.
    pub history_writes: u64,
    pub history_write_errors: u64,
    /// Folders watched with inotify.
    pub watched_folders: u64,
    /// Whether inotify fell short (limit reached): folders are rescanned instead.
    pub watch_degraded: bool,
    /// The system's inotify watch budget per user (`fs.inotify.max_user_watches`).
    pub watch_limit: Option<u64>,
}

/// Everything a scrape shows.
pub struct Snapshot {
    pub rows: Vec<Row>,
    pub stack: StackCounts,
}

fn gauge<
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<L, Gauge> {
    let f = Family::<L, Gauge>::default();
    registry.register(name, help, f.clone());
    f
}

fn counter<
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<L, Counter> {
    let f = Family::<L, Counter>::default();
    registry.register(name, help, f.clone());
    f
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The snapshot as OpenMetrics text ([`crate::gateway::METRICS_CONTENT_TYPE`]).
pub fn render(s: &Snapshot) -> String {
    let mut r = Registry::default();
    let live = gauge::<ClusterLabels>(
        &mut r,
        "raywatch_cluster_live",
        "1 while raywatch follows the Ray cluster live, 0 once it ended",
    );
    let ended = gauge::<EndedLabels>(
        &mut r,
        "raywatch_cluster_ended_timestamp_seconds",
        "When the cluster ended, and how (reason: died, removed, superseded, detached)",
    );
    let nodes = gauge::<NodeLabels>(
        &mut r,
        "raywatch_cluster_nodes",
        "A live cluster's nodes: up (listed by Ray), lost (listed before, not now), known (both)",
    );
    let losses = counter::<ClusterLabels>(
        &mut r,
        "raywatch_cluster_node_losses",
        "Nodes a live cluster lost",
    );
    for row in &s.rows {
        live.get_or_create(&row.labels)
            .set(i64::from(row.ended.is_none()));
        match row.ended {
            Some((reason, at)) => {
                let t = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                ended
                    .get_or_create(&EndedLabels {
                        cluster: row.labels.clone(),
                        reason,
                    })
                    .set(i64_of(t));
            }
            None => {
                for (state, n) in [
                    ("up", row.nodes_up),
                    ("lost", row.nodes_lost),
                    ("known", row.nodes_up + row.nodes_lost),
                ] {
                    nodes
                        .get_or_create(&NodeLabels {
                            cluster: row.labels.clone(),
                            state: state.into(),
                        })
                        .set(i64_of(n));
                }
                losses.get_or_create(&row.labels).inc_by(row.losses);
            }
        }
    }
    stack(&mut r, &s.stack);
    let mut out = String::new();
    // Writing to a String does not fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

/// The stack's own series.
fn stack(r: &mut Registry, s: &StackCounts) {
    let rejected = gauge::<KindLabels>(
        r,
        "raywatch_inputs_rejected",
        "Inputs refused now: discovery files (kind=discovery_file) and watched roots (kind=root)",
    );
    for (kind, n) in [
        ("discovery_file", s.rejected_files),
        ("root", s.refused_roots),
    ] {
        rejected
            .get_or_create(&KindLabels { kind: kind.into() })
            .set(i64_of(n));
    }
    let exhausted = counter::<Vec<(String, String)>>(
        r,
        "raywatch_reads_exhausted",
        "Reads that failed for want of file descriptors or memory",
    );
    exhausted
        .get_or_create(&Vec::new())
        .inc_by(s.read_exhausted);
    let withheld = gauge::<ReasonLabels>(
        r,
        "raywatch_endpoints_withheld",
        "Endpoints live clusters list that are not scraped, by why (foreign, no_listener, contested)",
    );
    for (reason, n) in [
        ("foreign", s.withheld.foreign),
        ("no_listener", s.withheld.no_listener),
        ("contested", s.withheld.contested),
    ] {
        withheld
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .set(i64_of(n));
    }
    let refused = counter::<KindLabels>(
        r,
        "raywatch_gateway_refusals",
        "What the gateway refused: connections of another user (kind=connection), requests beyond the query API (kind=request)",
    );
    for (kind, n) in [
        ("connection", s.gateway_refused_connections),
        ("request", s.gateway_refused_requests),
    ] {
        refused
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc_by(n);
    }
    let history = counter::<ResultLabels>(
        r,
        "raywatch_history_writes",
        "Appends to the cluster history (result=ok or error)",
    );
    for (result, n) in [("ok", s.history_writes), ("error", s.history_write_errors)] {
        history
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc_by(n);
    }
    let none = Vec::<(String, String)>::new;
    gauge::<Vec<(String, String)>>(r, "raywatch_watch_folders", "Folders watched with inotify")
        .get_or_create(&none())
        .set(i64_of(s.watched_folders));
    gauge::<Vec<(String, String)>>(
        r,
        "raywatch_watch_degraded",
        "1 when inotify fell short (its limit reached) and folders are rescanned instead",
    )
    .get_or_create(&none())
    .set(i64::from(s.watch_degraded));
    if let Some(limit) = s.watch_limit {
        gauge::<Vec<(String, String)>>(
            r,
            "raywatch_watch_limit",
            "The inotify watch budget of a user (fs.inotify.max_user_watches)",
        )
        .get_or_create(&none())
        .set(i64_of(limit));
    }
}

/// The system's inotify watch budget per user.
pub fn watch_limit() -> Option<u64> {
    fs_err::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

impl super::clusters::Core {
    /// Brings the metrics' rows in line with the registry (once a second; see [`Book::sync`]).
    pub fn sync_metrics(&mut self) {
        self.metrics.sync(
            self.registry.clusters(),
            self.registry.generation(),
            SystemTime::now(),
        );
    }

    /// What a scrape shows now; `gateway`: the gateway's counters.
    pub fn metrics_snapshot(&self, gateway: &crate::gateway::Counters) -> Snapshot {
        use std::sync::atomic::Ordering;
        let owners = self.attribution.owners();
        let mut withheld = Withheld::default();
        for c in self.registry.clusters().filter(|c| c.is_live()) {
            for t in &c.targets {
                if self.endpoints.foreign(t).is_some() {
                    withheld.foreign += 1;
                } else if self.endpoints.waiting(t) {
                    withheld.no_listener += 1;
                } else if self.registry.is_contested(t)
                    && owners.get(t).and_then(|o| o.as_deref()) != Some(c.found.session.as_str())
                {
                    withheld.contested += 1;
                }
            }
        }
        let watcher = &self.follow.watcher;
        Snapshot {
            rows: self.metrics.rows(),
            stack: StackCounts {
                rejected_files: self.registry.rejections().len() as u64,
                refused_roots: self.follow.refused_roots.len() as u64,
                read_exhausted: crate::untrusted::exhaustion_count(),
                withheld,
                gateway_refused_connections: gateway.refused_connections.load(Ordering::Relaxed),
                gateway_refused_requests: gateway.refused_requests.load(Ordering::Relaxed),
                history_writes: self.history.writes,
                history_write_errors: self.history.write_errors,
                watched_folders: watcher.watched().len() as u64,
                watch_degraded: watcher.needs_rescan() || self.follow.incomplete.is_some(),
                watch_limit: watch_limit(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{Found, Listing};
    use crate::registry::{Origin, Registry as Clusters};
    use std::time::Instant;

    fn found(temp: &str, session: &str) -> Found {
        Found::for_file(&PathBuf::from(format!(
            "{temp}/{session}/prom_metrics_service_discovery.json"
        )))
    }

    fn see(r: &mut Clusters, f: &Found, targets: &[&str], at: SystemTime) {
        let listing = Listing {
            targets: targets.iter().map(|t| t.to_string()).collect(),
            mtime: at,
            uid: nix::unistd::geteuid().as_raw(),
        };
        r.observe(f, Origin::Watched, Ok(Some(listing)), Instant::now(), at);
    }

    fn labels(name: &str, session: &str) -> ClusterLabels {
        ClusterLabels {
            ray_io_cluster: name.into(),
            ray_user: "alice".into(),
            ray_session: session.into(),
            ray_temp_dir: "/tmp/ray".into(),
        }
    }

    #[test]
    fn the_rendering_names_each_cluster_its_nodes_and_how_it_ended() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut odd = labels("bob-ray", "session_2");
        odd.ray_temp_dir = "/tmp/ray \"x\"\\y\nz".into();
        let s = Snapshot {
            rows: vec![
                Row {
                    labels: labels("alice-ray", "session_1"),
                    ended: None,
                    nodes_up: 3,
                    nodes_lost: 1,
                    losses: 2,
                    last_loss: None,
                },
                Row {
                    labels: odd,
                    ended: Some((EndReason::Died, t)),
                    nodes_up: 0,
                    nodes_lost: 0,
                    losses: 0,
                    last_loss: None,
                },
            ],
            stack: StackCounts {
                rejected_files: 2,
                gateway_refused_connections: 5,
                history_writes: 7,
                watch_limit: Some(8192),
                withheld: Withheld {
                    foreign: 1,
                    ..Withheld::default()
                },
                ..StackCounts::default()
            },
        };
        let text = render(&s);
        let alice = r#"ray_io_cluster="alice-ray",ray_user="alice",ray_session="session_1",ray_temp_dir="/tmp/ray""#;
        for line in [
            "# TYPE raywatch_cluster_live gauge".to_string(),
            format!("raywatch_cluster_live{{{alice}}} 1"),
            format!(r#"raywatch_cluster_nodes{{{alice},state="up"}} 3"#),
            format!(r#"raywatch_cluster_nodes{{{alice},state="lost"}} 1"#),
            format!(r#"raywatch_cluster_nodes{{{alice},state="known"}} 4"#),
            "# TYPE raywatch_cluster_node_losses counter".to_string(),
            format!("raywatch_cluster_node_losses_total{{{alice}}} 2"),
            r#"raywatch_cluster_ended_timestamp_seconds{ray_io_cluster="bob-ray",ray_user="alice",ray_session="session_2",ray_temp_dir="/tmp/ray \"x\"\\y\nz",reason="died"} 1700000000"#.to_string(),
            r#"raywatch_inputs_rejected{kind="discovery_file"} 2"#.into(),
            r#"raywatch_endpoints_withheld{reason="foreign"} 1"#.into(),
            r#"raywatch_gateway_refusals_total{kind="connection"} 5"#.into(),
            r#"raywatch_history_writes_total{result="ok"} 7"#.into(),
            "raywatch_watch_limit 8192".into(),
            "# EOF".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\nnot in:\n{text}");
        }
        // An ended cluster has no node series; a live one no end.
        assert!(!text.contains(r#"raywatch_cluster_nodes{ray_io_cluster="bob-ray""#));
        assert!(!text.contains(r#"ended_timestamp_seconds{ray_io_cluster="alice-ray""#));
        assert!(text.contains(r#"raywatch_cluster_live{ray_io_cluster="bob-ray""#));
    }

    #[test]
    fn a_cluster_ends_as_it_did_and_a_detached_one_as_detached() {
        let mut r = Clusters::new(Duration::from_secs(20));
        let mut book = Book::default();
        let t0 = SystemTime::now();
        let (a, b, c) = (
            found("/tmp/ray_a", "session_a_1"),
            found("/tmp/ray_b", "session_b_1"),
            found("/tmp/ray_c", "session_c_1"),
        );
        for f in [&a, &b, &c] {
            see(
                &mut r,
                f,
                &["10.213.2.1:8080", "10.213.1.1:8080", "10.213.1.1:44217"],
                t0,
            );
        }
        // Dead on first sight: an old session folder, never live here.
        let old = found("/tmp/ray_d", "session_d_1");
        let stale = Listing {
            targets: vec!["10.213.1.1:8080".into()],
            mtime: t0 - Duration::from_secs(3600),
            uid: nix::unistd::geteuid().as_raw(),
        };
        r.observe(&old, Origin::Watched, Ok(Some(stale)), Instant::now(), t0);
        book.sync(r.clusters(), r.generation(), t0);
        let rows = book.rows();
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert!(rows.iter().all(|r| r.ended.is_none() && r.nodes_up == 2));

        // a loses its worker; b is declared dead; c's file goes with its folder; then
        // a is forgotten (detached).
        let t1 = t0 + Duration::from_secs(5);
        see(&mut r, &a, &["10.213.1.1:8080", "10.213.1.1:44217"], t1);
        book.sync(r.clusters(), r.generation(), t1);
        let row = |book: &Book, f: &Found| {
            book.rows()
                .into_iter()
                .find(|r| r.labels.ray_session == f.session)
        };
        let ra = row(&book, &a).unwrap();
        assert_eq!((ra.nodes_up, ra.nodes_lost, ra.losses), (1, 1, 1));
        // Synced again with nothing new: the loss is counted once.
        see(
            &mut r,
            &a,
            &["10.213.1.1:8080", "10.213.1.1:44217", "10.213.1.1:9"],
            t1,
        );
        book.sync(r.clusters(), r.generation(), t1);
        assert_eq!(row(&book, &a).unwrap().losses, 1);

        r.declare_dead(&b.file, t1, "its GCS refuses connections".into());
        book.note_end(c.file.clone(), EndReason::Removed);
        r.observe(&c, Origin::Watched, Ok(None), Instant::now(), t1);
        r.forget(&a.file);
        book.sync(r.clusters(), r.generation(), t1);
        let ended = |book: &Book, f: &Found| row(book, f).and_then(|r| r.ended);
        assert_eq!(ended(&book, &a), Some((EndReason::Detached, t1)));
        assert_eq!(ended(&book, &b), Some((EndReason::Died, t1)));
        assert_eq!(ended(&book, &c), Some((EndReason::Removed, t1)));
        assert!(row(&book, &old).is_none());

        // Kept for KEEP_ENDED, then gone.
        book.sync(
            r.clusters(),
            r.generation(),
            t1 + KEEP_ENDED - Duration::from_secs(1),
        );
        assert_eq!(book.len(), 3);
        book.sync(r.clusters(), r.generation(), t1 + KEEP_ENDED);
        assert_eq!(book.len(), 0);
    }

    #[test]
    fn ended_clusters_kept_are_bounded_whatever_the_churn() {
        let mut r = Clusters::new(Duration::from_secs(20));
        let mut book = Book::default();
        let t0 = SystemTime::now();
        for i in 0..(MAX_ENDED + 500) {
            let f = found(&format!("/tmp/ray_{i}"), &format!("session_x_{i}"));
            let at = t0 + Duration::from_millis(i as u64);
            see(&mut r, &f, &["10.213.1.1:8080"], at);
            book.sync(r.clusters(), r.generation(), at);
            r.forget(&f.file);
            book.sync(r.clusters(), r.generation(), at);
            assert!(book.len() <= MAX_ENDED, "{} rows at {i}", book.len());
        }
        assert_eq!(book.len(), MAX_ENDED);
        // The newest are kept, the oldest went.
        let sessions: BTreeSet<String> = book
            .rows()
            .into_iter()
            .map(|r| r.labels.ray_session)
            .collect();
        assert!(sessions.contains(&format!("session_x_{}", MAX_ENDED + 499)));
        assert!(!sessions.contains("session_x_0"));
    }
}
