//! The `status` report: its JSON schema (stable, documented in the README); [`render`]
//! writes its human form.

mod render;
mod sizes;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::supervisor::ChildStatus;

pub use crate::remote_write::RemoteWriteStatus;
pub use render::{human_bytes, render, ssh_hint, stack_lines};
pub use sizes::{ScrapeSizes, annotate};

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub schema: u32,
    pub home: PathBuf,
    pub daemon: DaemonStatus,
    pub prometheus: PrometheusStatus,
    pub grafana: GrafanaStatus,
    /// Ray's way into Prometheus (`RAY_PROMETHEUS_HOST`): serves only this user.
    #[serde(default)]
    pub gateway: GatewayStatus,
    pub watch: WatchStatus,
    pub clusters: Vec<ClusterStatus>,
    pub rejected: Vec<RejectedInput>,
    /// The last error writing `<home>/targets/`, until a write succeeds again.
    pub targets_error: Option<String>,
    /// Every remote-write destination, from Prometheus' own metrics and log.
    #[serde(default)]
    pub remote_write: Vec<RemoteWriteStatus>,
    /// The stack's Alertmanager, when it runs one (`up --notify-webhook`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<AlertmanagerStatus>,
    /// The alerts the stack's Prometheus fires and holds pending (filled in by
    /// `raywatch status` itself; absent when it could not ask, or as an agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertCounts>,
}

/// The stack's Alertmanager: where, how many receivers, its process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertmanagerStatus {
    pub url: String,
    pub port: u16,
    pub binary: PathBuf,
    /// The webhooks notifications go to (`up --notify-webhook`, `--notify-webhook-file`).
    pub webhooks: usize,
    /// The Slack webhooks (`up --notify-slack-webhook-file`).
    #[serde(default)]
    pub slack: usize,
    /// The e-mail addresses (`up --notify-email`).
    #[serde(default)]
    pub email: usize,
    #[serde(flatten)]
    pub child: ChildStatus,
}

/// How many alerts fire and wait out their `for` (`raywatch alerts` lists them).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct AlertCounts {
    pub firing: usize,
    pub pending: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub started_unix: f64,
    pub socket: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrometheusStatus {
    #[serde(default)]
    pub mode: PrometheusMode,
    pub url: String,
    pub port: u16,
    pub binary: PathBuf,
    pub ready: bool,
    pub user: String,
    pub password_file: PathBuf,
    /// The datasource name given to Grafana (Ray's `RAY_PROMETHEUS_NAME`).
    pub datasource_name: String,
    /// Prometheus' own file-watch errors: above 0, it finds new target files only
    /// on its 30 s refresh.
    #[serde(default)]
    pub sd_watcher_errors: f64,
    /// Targets raywatch published a while ago (past Prometheus' discovery and
    /// first scrape) that Prometheus still has no `up` series for.
    #[serde(default)]
    pub unscraped_targets: Vec<String>,
    /// Set when Prometheus' port is held by another user or process: raywatch
    /// then sends it nothing.
    #[serde(default)]
    pub listener_problem: Option<String>,
    /// When Prometheus is not ready: the other users holding connections to its
    /// port (`600 connections to Prometheus' port 40125 held by uid 1001 (bob)`).
    #[serde(default)]
    pub connections_held: Option<String>,
    /// Why raywatch could not read Prometheus' answers (e.g. one over the size
    /// limit), while it answers /-/ready: the figures below are then missing.
    #[serde(default)]
    pub read_error: Option<String>,
    /// Why Prometheus last moved to another port (its port was taken), if it did.
    #[serde(default)]
    pub port_note: Option<String>,
    /// Where Prometheus keeps its data (`--storage.tsdb.path`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Bytes of Prometheus' data on disk (blocks, WAL, head chunks).
    #[serde(default)]
    pub data_bytes: Option<u64>,
    /// Bytes left to it on that file system.
    #[serde(default)]
    pub data_free_bytes: Option<u64>,
    /// How long samples are kept (`--retention`), e.g. "30d".
    #[serde(default)]
    pub retention: Option<String>,
    /// Samples one scrape of one target may carry (`up --sample-limit`); null: no limit.
    #[serde(default)]
    pub sample_limit: Option<u64>,
    /// Labels removed from every series before it is stored (`up --drop-label`).
    #[serde(default)]
    pub drop_labels: Vec<String>,
    /// Scrapes Prometheus refused for exceeding the sample limit since it started
    /// (`prometheus_target_scrapes_exceeded_sample_limit_total`): catches a target
    /// that crosses the limit only now and then.
    #[serde(default)]
    pub scrapes_over_sample_limit: f64,
    #[serde(flatten)]
    pub child: ChildStatus,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub url: String,
    pub port: u16,
    /// Connections refused because their socket belonged to another uid.
    pub refused_connections: u64,
    /// Requests refused because they were not Prometheus' query API.
    pub refused_requests: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrafanaStatus {
    /// Whether a Grafana binary was found at `up`.
    pub installed: bool,
    pub binary: Option<PathBuf>,
    /// Set when Grafana runs (installed).
    pub url: Option<String>,
    pub port: u16,
    pub ready: bool,
    pub admin_password_file: PathBuf,
    pub provisioning_dir: PathBuf,
    pub anonymous: bool,
    #[serde(flatten)]
    pub child: ChildStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatchStatus {
    pub mode: WatchMode,
    pub roots: Vec<PathBuf>,
    pub degraded: Option<String>,
    /// Session folders of other (untrusted) users in the roots: neither read nor watched.
    #[serde(default)]
    pub foreign_session_dirs: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    pub state: ClusterState,
    pub dead_reason: Option<String>,
    pub session: String,
    pub session_dir: Option<PathBuf>,
    pub temp_dir: PathBuf,
    pub discovery_file: PathBuf,
    pub user: String,
    pub source: ClusterSource,
    /// Unix time raywatch last saw the discovery file rewritten.
    pub last_rewrite_unix: f64,
    /// Set while a live cluster's discovery file is gone (moved or deleted):
    /// where it was, since when, and what keeps the cluster live.
    #[serde(default)]
    pub discovery_file_gone: Option<String>,
    /// Ray's default dashboard for this cluster in this stack's Grafana, when it runs.
    pub grafana_url: Option<String>,
    pub targets: Vec<TargetStatus>,
    /// Endpoints the cluster lists that are scraped under another cluster (or none).
    pub withheld: Vec<WithheldTarget>,
    /// Targets that are not addresses of this machine: expected for a multi-node
    /// cluster, suspicious otherwise (Prometheus scrapes whatever a file names).
    pub remote_targets: Vec<String>,
    /// Samples the last scrape of all its targets carried (Prometheus'
    /// `scrape_samples_scraped`); null before the first scrape.
    #[serde(default)]
    pub samples_per_scrape: Option<f64>,
    /// Nodes a live cluster stopped listing (Ray lists its alive nodes only):
    /// lost, unless one comes back on the same address.
    #[serde(default)]
    pub nodes_lost: Vec<LostNode>,
    /// The cluster's Ray Dashboard and whether its job API demands Ray's token
    /// (filled in by `raywatch status` itself: the daemon does not ask).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<DashboardStatus>,
}

/// A node (metrics endpoint) a live cluster no longer lists.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LostNode {
    pub address: String,
    /// When raywatch saw Ray drop it from the cluster's discovery file.
    pub since_unix: f64,
}

/// A live cluster's Ray Dashboard, as `raywatch status` found it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DashboardStatus {
    pub url: String,
    pub pid: u32,
    pub job_api: JobAccess,
    /// Why `job_api` is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The file the Dashboard takes its token from (`null`: from its environment, or no token auth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetStatus {
    pub address: String,
    /// On the head's host or a worker's (see [`crate::ray::roles`]).
    #[serde(default)]
    pub role: Option<crate::ray::Role>,
    pub health: Health,
    /// Samples its last scrape carried; null before the first scrape.
    #[serde(default)]
    pub samples_per_scrape: Option<f64>,
    /// Set when its scrapes fail for carrying more samples than the sample
    /// limit: what it carries, the limit, and the flag that raises it.
    #[serde(default)]
    pub sample_limit_exceeded: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WithheldTarget {
    pub address: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RejectedInput {
    pub path: PathBuf,
    pub reason: String,
    pub since_unix: f64,
}

/// What Prometheus keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrometheusMode {
    /// A local TSDB, queried.
    #[default]
    Server,
    /// The WAL only: it remote-writes everything.
    Agent,
}

/// How the daemon learns of changes in the watched roots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    Inotify,
    /// Events are unavailable: the roots are rescanned.
    Rescan,
}

impl WatchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchMode::Inotify => "inotify",
            WatchMode::Rescan => "rescan",
        }
    }
}

/// Whether a cluster's targets are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    Live,
    Dead,
}

impl ClusterState {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterState::Live => "live",
            ClusterState::Dead => "dead",
        }
    }
}

/// How raywatch found a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterSource {
    /// Under a watched root.
    Watch,
    /// `raywatch attach`.
    Attach,
}

/// What a Dashboard's job API demands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobAccess {
    /// Jobs need Ray's token.
    Token,
    /// Any local user can submit jobs, which run as the cluster's user.
    Open,
    Unknown,
}

impl JobAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            JobAccess::Token => "token",
            JobAccess::Open => "open",
            JobAccess::Unknown => "unknown",
        }
    }
}

/// A target's last scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
    /// Not scraped yet.
    Unknown,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Unknown => "unknown",
        }
    }
}

/// Connections another user holds to Prometheus' port that are worth naming
/// when it is not ready: a few may be a port scan, this many hold it up.
pub const HELD_CONNECTIONS_NAMED: usize = 10;

/// The other users (not `me`) holding at least [`HELD_CONNECTIONS_NAMED`] of the
/// connections `by_uid` to Prometheus' `port`, as one line; None when none does.
pub fn connections_held(by_uid: &[(u32, usize)], me: u32, port: u16) -> Option<String> {
    let named: Vec<String> = by_uid
        .iter()
        .filter(|(uid, n)| *uid != me && *n >= HELD_CONNECTIONS_NAMED)
        .map(|(uid, n)| {
            format!(
                "{n} connections to Prometheus' port {port} held by uid {uid} ({})",
                crate::process::user_name(*uid)
            )
        })
        .collect();
    (!named.is_empty()).then(|| {
        format!(
            "{}: Prometheus takes a limited number and closes idle ones after {}",
            named.join("; "),
            crate::prometheus::READ_TIMEOUT
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        let child = serde_json::json!({
            "pid": 7, "restarts": 0, "last_exit": null, "next_start_unix": null,
            "crash_loop": false, "last_output": []
        });
        let mut prometheus = serde_json::json!({
            "url": "http://127.0.0.1:40123", "port": 40123, "binary": "/usr/bin/prometheus",
            "ready": true, "user": "raywatch", "password_file": "/h/secrets/prometheus-password",
            "datasource_name": "Prometheus"
        });
        let mut grafana = serde_json::json!({
            "installed": false, "binary": null, "url": null, "port": 40125, "ready": false,
            "admin_password_file": "/h/secrets/grafana-admin-password",
            "provisioning_dir": "/h/grafana/provisioning", "anonymous": false
        });
        for part in [&mut prometheus, &mut grafana] {
            part.as_object_mut()
                .unwrap()
                .extend(child.as_object().unwrap().clone());
        }
        serde_json::from_value(serde_json::json!({
            "schema": SCHEMA, "home": "/h",
            "daemon": { "pid": 4242, "started_unix": 0.0, "socket": "/h/run/raywatch.sock" },
            "prometheus": prometheus,
            "grafana": grafana,
            "watch": { "mode": "inotify", "roots": ["/tmp/ray", "/data/ray_\u{1b}[2J"], "degraded": null },
            "clusters": [], "rejected": [], "targets_error": null
        }))
        .unwrap()
    }

    /// The README documents these names of `status --json`; people read the same.
    #[test]
    fn states_keep_their_json_names() {
        fn json(v: impl Serialize) -> String {
            serde_json::to_value(v)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        }
        for (v, name) in [
            (PrometheusMode::Server, "server"),
            (PrometheusMode::Agent, "agent"),
        ] {
            assert_eq!(json(v), name);
        }
        for (v, name) in [
            (ClusterSource::Watch, "watch"),
            (ClusterSource::Attach, "attach"),
        ] {
            assert_eq!(json(v), name);
        }
        for (v, name) in [
            (WatchMode::Inotify, "inotify"),
            (WatchMode::Rescan, "rescan"),
        ] {
            assert_eq!((json(v), v.as_str()), (name.into(), name));
        }
        for (v, name) in [(ClusterState::Live, "live"), (ClusterState::Dead, "dead")] {
            assert_eq!((json(v), v.as_str()), (name.into(), name));
        }
        for (v, name) in [
            (JobAccess::Token, "token"),
            (JobAccess::Open, "open"),
            (JobAccess::Unknown, "unknown"),
        ] {
            assert_eq!((json(v), v.as_str()), (name.into(), name));
        }
        for (v, name) in [
            (Health::Up, "up"),
            (Health::Down, "down"),
            (Health::Unknown, "unknown"),
        ] {
            assert_eq!((json(v), v.as_str()), (name.into(), name));
        }
        // A report without a mode (written before agent mode) is a server's.
        assert_eq!(report().prometheus.mode, PrometheusMode::Server);
    }

    #[test]
    fn connections_held_by_another_user_are_named_with_their_count() {
        let by_uid = [(1001, 600), (1000, 40), (1002, 3)];
        let line = connections_held(&by_uid, 1000, 40123).unwrap();
        assert!(
            line.starts_with("600 connections to Prometheus' port 40123 held by uid 1001 ("),
            "{line}"
        );
        assert!(
            !line.contains("uid 1000") && !line.contains("uid 1002"),
            "{line}"
        );
        assert_eq!(connections_held(&[(1000, 600)], 1000, 40123), None);
        let mut r = report();
        r.prometheus.ready = false;
        r.prometheus.connections_held = Some(line.clone());
        assert!(stack_lines(&r, false).contains(&format!("  WARNING     {line}")));
    }

    #[test]
    fn status_renders_the_lines_up_prints() {
        let r = report();
        let shared = stack_lines(&r, false);
        assert!(render(&r).contains(&shared), "{}", render(&r));
        for part in [
            "  prometheus  http://127.0.0.1:40123",
            "  grafana     not installed",
        ] {
            assert!(shared.contains(part), "{part:?} missing:\n{shared}");
        }
    }

    #[test]
    fn a_gone_discovery_file_is_noted_under_its_live_cluster_escaped() {
        let mut r = report();
        let note = "its discovery file stopped being rewritten: it is gone from /tmp/ray_\u{1b}[2J/s/d.json";
        let cluster: ClusterStatus = serde_json::from_value(serde_json::json!({
            "name": "alice-ray_x", "state": "live", "dead_reason": null,
            "session": "session_1", "session_dir": null, "temp_dir": "/tmp/ray_x",
            "discovery_file": "/tmp/ray_x/d.json", "user": "alice", "source": "watch",
            "last_rewrite_unix": 0.0, "grafana_url": null, "targets": [],
            "withheld": [], "remote_targets": [], "discovery_file_gone": note
        }))
        .unwrap();
        r.clusters = vec![cluster];
        let text = render(&r);
        assert!(
            text.contains("      note: its discovery file stopped being rewritten: it is gone from /tmp/ray_\\e[2J/s/d.json"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn a_lost_node_is_listed_under_its_cluster_escaped() {
        let mut r = report();
        let mut cluster: ClusterStatus = serde_json::from_value(serde_json::json!({
            "name": "alice-ray_x", "state": "live", "dead_reason": null,
            "session": "session_1", "session_dir": null, "temp_dir": "/tmp/ray_x",
            "discovery_file": "/tmp/ray_x/d.json", "user": "alice", "source": "watch",
            "last_rewrite_unix": 0.0, "grafana_url": null, "targets": [],
            "withheld": [], "remote_targets": []
        }))
        .unwrap();
        assert!(
            cluster.nodes_lost.is_empty(),
            "a report without the field has none"
        );
        cluster.nodes_lost = vec![LostNode {
            address: "10.213.3.1:8080\u{1b}[2J".into(),
            since_unix: crate::clock::unix_now() - 90.0,
        }];
        r.clusters = vec![cluster];
        let text = render(&r);
        assert!(
            text.contains(
                "      10.213.3.1:8080\\e[2J     LOST: Ray no longer lists this node (for 1m 30s)"
            ) || text.contains(
                "      10.213.3.1:8080\\e[2J     LOST: Ray no longer lists this node (for 1m 31s)"
            ),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn a_target_over_the_sample_limit_is_flagged_with_the_limit_and_the_flag_escaped() {
        let mut r = report();
        r.prometheus.sample_limit = Some(200_000);
        r.prometheus.drop_labels = vec!["WorkerId".into()];
        let target = |address: &str, health: Health, n: f64| TargetStatus {
            address: address.into(),
            role: Some(crate::ray::Role::Head),
            health,
            samples_per_scrape: Some(n),
            sample_limit_exceeded: None,
        };
        let cluster: ClusterStatus = serde_json::from_value(serde_json::json!({
            "name": "alice-ray_\u{1b}[2J", "state": "live", "dead_reason": null,
            "session": "session_1", "session_dir": null, "temp_dir": "/tmp/ray_x",
            "discovery_file": "/tmp/ray_x/d.json", "user": "alice", "source": "watch",
            "last_rewrite_unix": 0.0, "grafana_url": null, "targets": [],
            "withheld": [], "remote_targets": []
        }))
        .unwrap();
        r.clusters = vec![ClusterStatus {
            targets: vec![
                target("127.0.0.1:1", Health::Down, 300_000.0),
                target("127.0.0.1:2", Health::Up, 12.0),
            ],
            ..cluster
        }];
        let health = std::collections::HashMap::from([
            (
                ("alice-ray_\u{1b}[2J".to_string(), "127.0.0.1:1".to_string()),
                0.0,
            ),
            (
                ("alice-ray_\u{1b}[2J".to_string(), "127.0.0.1:2".to_string()),
                1.0,
            ),
        ]);
        let sizes = ScrapeSizes(
            health
                .keys()
                .map(|k| {
                    (
                        k.clone(),
                        if k.1.ends_with(":1") { 300_000.0 } else { 12.0 },
                    )
                })
                .collect(),
        );
        annotate(&mut r, &health, &sizes, crate::guard::SampleLimit(200_000));
        assert_eq!(r.clusters[0].samples_per_scrape, Some(300_012.0));
        assert!(r.clusters[0].targets[1].sample_limit_exceeded.is_none());
        let text = render(&r);
        assert!(!text.contains('\u{1b}'), "{text}");
        for part in [
            "  limits      200000 samples per scrape per target; labels dropped: WorkerId",
            "WARNING     the sample limit refuses 1 target(s): alice-ray_\\e[2J/127.0.0.1:1",
            "300012 samples/scrape",
            "127.0.0.1:1              head   down  300000 samples/scrape",
            "OVER SAMPLE LIMIT: refused: its scrapes carry 300000 samples, over the sample limit of 200000",
            "`raywatch up --sample-limit 380000`",
        ] {
            assert!(text.contains(part), "{part:?} missing:\n{text}");
        }
    }

    #[test]
    fn the_watching_line_names_the_default_patterns_when_asked_and_escapes_roots() {
        let r = report();
        let line = |default_roots| {
            stack_lines(&r, default_roots)
                .lines()
                .find(|l| l.starts_with("  watching    "))
                .unwrap()
                .to_string()
        };
        assert_eq!(
            line(false),
            "  watching    /tmp/ray, /data/ray_\\e[2J (inotify)"
        );
        assert_eq!(
            line(true),
            "  watching    /tmp/ray* and $RAY_TMPDIR/ray*; /tmp/ray, /data/ray_\\e[2J (inotify)"
        );
    }
}
