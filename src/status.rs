//! The `status` report: its JSON schema (stable, documented in the README) and its human form.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::escape;
use crate::remote_write::RemoteWriteStatus;
use crate::supervisor::ChildStatus;

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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub started_unix: f64,
    pub socket: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrometheusStatus {
    /// "server" (local TSDB, queries) or "agent" (WAL only, remote write).
    #[serde(default)]
    pub mode: String,
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
    /// "inotify", or "rescan" when events are unavailable.
    pub mode: String,
    pub roots: Vec<PathBuf>,
    pub degraded: Option<String>,
    /// Session folders of other (untrusted) users in the roots: neither read nor watched.
    #[serde(default)]
    pub foreign_session_dirs: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    /// "live" or "dead".
    pub state: String,
    pub dead_reason: Option<String>,
    pub session: String,
    pub session_dir: Option<PathBuf>,
    pub temp_dir: PathBuf,
    pub discovery_file: PathBuf,
    pub user: String,
    /// "watch" (found under a watched root) or "attach".
    pub source: String,
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
    /// The cluster's Ray Dashboard and whether its job API demands Ray's token
    /// (filled in by `raywatch status` itself: the daemon does not ask).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<DashboardStatus>,
}

/// A live cluster's Ray Dashboard, as `raywatch status` found it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DashboardStatus {
    pub url: String,
    pub pid: u32,
    /// "token" (jobs need Ray's token), "open" (any local user can submit jobs,
    /// which run as the cluster's user) or "unknown".
    pub job_api: String,
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
    /// "up", "down", or "unknown" (not scraped yet).
    pub health: String,
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

/// A Dashboard's URL and what its job API demands, for people.
pub fn dashboard_line(d: &DashboardStatus) -> String {
    let url = escape::text(&d.url);
    match d.job_api.as_str() {
        "open" => format!(
            "{url}  OPEN: its job API runs any local user's code as you (restart the cluster after `eval \"$(raywatch env)\"`)"
        ),
        "token" => match &d.token_file {
            Some(f) => format!("{url}  token auth on (token in {})", escape::path(f)),
            None => format!("{url}  token auth on"),
        },
        _ => format!(
            "{url}  job API not checked: {}",
            escape::text(d.detail.as_deref().unwrap_or("no answer"))
        ),
    }
}

/// The report as people read it.
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let p = &r.prometheus;
    let _ = writeln!(out, "raywatch stack at {}", escape::path(&r.home));
    let _ = writeln!(out, "  daemon      pid {}", r.daemon.pid);
    out.push_str(&stack_lines(r, false));
    if p.mode == "agent" {
        let _ = writeln!(
            out,
            "              agent mode: no local data; `raywatch query` asks --query-url"
        );
    }
    for rw in &r.remote_write {
        let _ = writeln!(
            out,
            "  remote write {}  sent {:.0}, failed {:.0}, retried {:.0}{}",
            escape::text(&rw.url),
            rw.samples_sent,
            rw.samples_failed,
            rw.samples_retried,
            rw.last_error
                .as_deref()
                .map(|e| format!("\n              FAILING: {}", escape::text(e)))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "  limits      {} samples per scrape per target{}{}",
        p.sample_limit
            .map(|n| n.to_string())
            .unwrap_or_else(|| "no limit on".into()),
        if p.scrapes_over_sample_limit > 0.0 {
            format!(
                " ({:.0} scrapes refused since Prometheus started)",
                p.scrapes_over_sample_limit
            )
        } else {
            String::new()
        },
        if p.drop_labels.is_empty() {
            String::new()
        } else {
            format!(
                "; labels dropped: {}",
                p.drop_labels
                    .iter()
                    .map(|l| escape::text(l).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    let refused: Vec<String> = r
        .clusters
        .iter()
        .flat_map(|c| {
            c.targets
                .iter()
                .filter(|t| t.sample_limit_exceeded.is_some())
                .map(move |t| format!("{}/{}", escape::text(&c.name), escape::text(&t.address)))
        })
        .collect();
    if !refused.is_empty() {
        let _ = writeln!(
            out,
            "  WARNING     the sample limit refuses {} target(s): {} (raise it with `raywatch up --sample-limit N`)",
            refused.len(),
            refused
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if r.watch.foreign_session_dirs > 0 {
        let _ = writeln!(
            out,
            "              {} session folder(s) of other users left alone (not read, not watched)",
            r.watch.foreign_session_dirs
        );
    }
    if !p.unscraped_targets.is_empty() {
        let _ = writeln!(
            out,
            "  WARNING     Prometheus is not scraping {} published target(s) ({}); see {}",
            p.unscraped_targets.len(),
            p.unscraped_targets
                .iter()
                .take(3)
                .map(|t| escape::text(t).into_owned())
                .collect::<Vec<_>>()
                .join(", "),
            escape::path(&r.home.join("logs/prometheus.log"))
        );
    }
    if p.sd_watcher_errors > 0.0 {
        let _ = writeln!(
            out,
            "  warning     Prometheus could not watch the targets folder ({} errors); it re-reads it every 30 s",
            p.sd_watcher_errors
        );
    }
    if let Some(d) = &r.watch.degraded {
        let _ = writeln!(out, "  warning     {}", escape::text(d));
    }
    if let Some(e) = &r.targets_error {
        let _ = writeln!(out, "  ERROR       {}", escape::text(e));
    }
    let _ = writeln!(out);
    if r.clusters.is_empty() {
        let _ = writeln!(
            out,
            "no Ray clusters found yet (start one with `ray start --head`, or `raywatch attach PATH`)"
        );
    } else {
        let _ = writeln!(out, "clusters:");
        for c in &r.clusters {
            let up = c.targets.iter().filter(|t| t.health == "up").count();
            let _ = writeln!(
                out,
                "  {}  {}  {}/{} targets up{}  {}  {}",
                escape::text(&c.name),
                escape::text(&c.state),
                up,
                c.targets.len(),
                c.samples_per_scrape
                    .map(|n| format!("  {n:.0} samples/scrape"))
                    .unwrap_or_default(),
                escape::text(&c.session),
                escape::path(&c.temp_dir)
            );
            if let Some(url) = &c.grafana_url {
                let _ = writeln!(out, "      grafana: {}", escape::text(url));
            }
            if let Some(d) = &c.dashboard {
                let _ = writeln!(out, "      dashboard: {}", dashboard_line(d));
            }
            if let Some(reason) = &c.dead_reason {
                let _ = writeln!(out, "      dead: {}", escape::text(reason));
            }
            if let Some(note) = &c.discovery_file_gone {
                let _ = writeln!(out, "      note: {}", escape::text(note));
            }
            for t in &c.targets {
                let _ = writeln!(
                    out,
                    "      {:<24} {}{}",
                    escape::text(&t.address),
                    escape::text(&t.health),
                    t.samples_per_scrape
                        .map(|n| format!("  {n:.0} samples/scrape"))
                        .unwrap_or_default()
                );
                if let Some(note) = &t.sample_limit_exceeded {
                    let _ = writeln!(out, "        OVER SAMPLE LIMIT: {}", escape::text(note));
                }
            }
            if !c.remote_targets.is_empty() {
                let _ = writeln!(
                    out,
                    "      note: not addresses of this machine: {} (fine for a multi-node cluster)",
                    c.remote_targets
                        .iter()
                        .map(|t| escape::text(t))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            for w in &c.withheld {
                let _ = writeln!(
                    out,
                    "      {:<24} not scraped here: {}",
                    escape::text(&w.address),
                    escape::text(&w.reason)
                );
            }
        }
    }
    let _ = writeln!(out, "\nfrom a laptop: {}", ssh_hint(r));
    if !r.rejected.is_empty() {
        let _ = writeln!(out, "\nrejected inputs:");
        for j in &r.rejected {
            let _ = writeln!(
                out,
                "  {}: {}",
                escape::path(&j.path),
                escape::text(&j.reason)
            );
        }
    }
    out
}

/// The lines `up` and `status` share: Prometheus (URL, PID, readiness, restarts,
/// why it last exited, where its password is, who holds its port), the gateway,
/// Grafana, and what is watched. `default_roots` also names the patterns
/// `/tmp/ray*` and `$RAY_TMPDIR/ray*` on the watching line (`up` knows its
/// settings; the report lists only the folders found).
pub fn stack_lines(r: &StatusReport, default_roots: bool) -> String {
    let mut out = String::new();
    let p = &r.prometheus;
    let state = if p.ready {
        "ready".to_string()
    } else if p.child.crash_loop {
        "CRASH LOOP".to_string()
    } else {
        "not ready".to_string()
    };
    let _ = writeln!(
        out,
        "  prometheus  {}  pid {}  {state}  (restarts: {})",
        escape::text(&p.url),
        p.child
            .pid
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into()),
        p.child.restarts
    );
    if let Some(exit) = &p.child.last_exit {
        let _ = writeln!(out, "              last exit: {}", escape::text(exit));
    }
    if p.child.pid.is_none() && !p.child.last_output.is_empty() {
        let _ = writeln!(out, "              its last output:");
        for l in &p.child.last_output {
            let _ = writeln!(out, "                {}", escape::text(l));
        }
    }
    if let (None, Some(next)) = (p.child.pid, p.child.next_start_unix) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let _ = writeln!(
            out,
            "              next start in {:.0} s",
            (next - now).max(0.0)
        );
    }
    let _ = writeln!(
        out,
        "              user {}, password in {}",
        escape::text(&p.user),
        escape::path(&p.password_file)
    );
    if let Some(problem) = &p.listener_problem {
        let _ = writeln!(out, "  WARNING     {}", escape::text(problem));
    }
    if let Some(held) = &p.connections_held {
        let _ = writeln!(out, "  WARNING     {}", escape::text(held));
    }
    if let Some(e) = &p.read_error {
        let _ = writeln!(
            out,
            "  WARNING     its answers cannot be read: {}",
            escape::text(e)
        );
    }
    if let Some(note) = &p.port_note {
        let _ = writeln!(out, "              {}", escape::text(note));
    }
    if let Some(bytes) = p.data_bytes {
        let _ = writeln!(
            out,
            "  data        {} in {} (retention {}{})",
            human_bytes(bytes),
            p.data_dir.as_deref().map(escape::path).unwrap_or_default(),
            escape::text(p.retention.as_deref().unwrap_or("?")),
            p.data_free_bytes
                .map(|f| format!("; {} free", human_bytes(f)))
                .unwrap_or_default()
        );
    }
    if r.gateway.port != 0 {
        let refused = r.gateway.refused_connections + r.gateway.refused_requests;
        let _ = writeln!(
            out,
            "  gateway     {}  (RAY_PROMETHEUS_HOST: serves only this user, no credential{})",
            escape::text(&r.gateway.url),
            if refused > 0 {
                format!("; refused {refused} from others")
            } else {
                String::new()
            }
        );
    }
    let g = &r.grafana;
    match &g.url {
        Some(url) => {
            let _ = writeln!(
                out,
                "  grafana     {}  pid {}  {}  (admin, password in {})",
                escape::text(url),
                g.child
                    .pid
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
                if g.ready { "ready" } else { "not ready" },
                escape::path(&g.admin_password_file)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  grafana     not installed; dashboards provisioned in {} (`raywatch grafana dir`)",
                escape::path(&g.provisioning_dir)
            );
        }
    }
    let roots: Vec<String> = r
        .watch
        .roots
        .iter()
        .map(|r| escape::path(r).into_owned())
        .collect();
    let mut watched = Vec::new();
    if default_roots {
        watched.push("/tmp/ray* and $RAY_TMPDIR/ray*".to_string());
    }
    if !roots.is_empty() {
        watched.push(roots.join(", "));
    }
    let _ = writeln!(
        out,
        "  watching    {} ({})",
        if watched.is_empty() {
            "nothing yet".to_string()
        } else {
            watched.join("; ")
        },
        escape::text(&r.watch.mode)
    );
    out
}

/// Bytes for people: `812 KiB`, `1.4 GiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else if v < 10.0 {
        format!("{v:.1} {}", UNITS[i])
    } else {
        format!("{v:.0} {}", UNITS[i])
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

/// An `ssh -L` line that forwards this stack's ports from a laptop.
pub fn ssh_hint(r: &StatusReport) -> String {
    let host = fs_err::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this-host".into());
    let user = crate::process::user_name(nix::unistd::geteuid().as_raw());
    let mut line = format!("ssh -N -L {p}:127.0.0.1:{p}", p = r.prometheus.port);
    if r.grafana.url.is_some() {
        line.push_str(&format!(" -L {p}:127.0.0.1:{p}", p = r.grafana.port));
    }
    line.push_str(&format!(" {}@{}", escape::text(&user), escape::text(&host)));
    line
}

/// What one scrape of each target carried, from Prometheus' own
/// `scrape_samples_scraped` series, keyed by (cluster, instance).
#[derive(Debug, Default, Clone)]
pub struct ScrapeSizes(pub HashMap<(String, String), f64>);

impl ScrapeSizes {
    /// The PromQL that [`ScrapeSizes::from_samples`] reads.
    pub fn promql() -> String {
        format!(
            "scrape_samples_scraped{{job=\"{}\"}}",
            crate::prometheus::RAY_JOB
        )
    }

    pub fn from_samples(samples: &[crate::prometheus::Sample]) -> ScrapeSizes {
        let mut map = HashMap::new();
        for s in samples {
            let (Some(c), Some(i)) = (s.metric.get("ray_io_cluster"), s.metric.get("instance"))
            else {
                continue;
            };
            if let Ok(v) = s.value.1.parse::<f64>() {
                map.insert((c.clone(), i.clone()), v);
            }
        }
        ScrapeSizes(map)
    }

    pub fn get(&self, cluster: &str, instance: &str) -> Option<f64> {
        self.0
            .get(&(cluster.to_string(), instance.to_string()))
            .copied()
    }
}

/// Fills in the samples per scrape of every target and cluster of a report,
/// and flags the targets the sample limit refuses.
pub fn annotate(
    report: &mut StatusReport,
    health: &HashMap<(String, String), f64>,
    sizes: &ScrapeSizes,
    limit: crate::guard::SampleLimit,
) {
    for c in &mut report.clusters {
        let mut total = None;
        for t in &mut c.targets {
            let n = sizes.get(&c.name, &t.address);
            t.samples_per_scrape = n;
            let up = health.get(&(c.name.clone(), t.address.clone())).copied();
            if crate::guard::over_limit(up, n, limit) {
                t.sample_limit_exceeded = n.map(|n| crate::guard::over_limit_note(n, limit));
            }
            if let Some(n) = n {
                *total.get_or_insert(0.0) += n;
            }
        }
        c.samples_per_scrape = total;
    }
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
    fn a_target_over_the_sample_limit_is_flagged_with_the_limit_and_the_flag_escaped() {
        let mut r = report();
        r.prometheus.sample_limit = Some(200_000);
        r.prometheus.drop_labels = vec!["WorkerId".into()];
        let target = |address: &str, health: &str, n: f64| TargetStatus {
            address: address.into(),
            health: health.into(),
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
                target("127.0.0.1:1", "down", 300_000.0),
                target("127.0.0.1:2", "up", 12.0),
            ],
            ..cluster
        }];
        let health = HashMap::from([
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
            "127.0.0.1:1              down  300000 samples/scrape",
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
