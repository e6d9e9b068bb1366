//! The `status` report as people read it, and the lines `up` prints of the stack: every
//! name that comes from a file, a process or a user escaped.

use std::fmt::Write as _;
use std::time::Duration;

use super::{
    ClusterStatus, DashboardStatus, GrafanaStatus, Health, JobAccess, PrometheusMode,
    PrometheusStatus, StatusReport, WatchStatus,
};
use crate::escape;
use crate::supervisor::ChildStatus;

/// A Dashboard's URL and what its job API demands, for people.
pub fn dashboard_line(d: &DashboardStatus) -> String {
    let url = escape::text(&d.url);
    match d.job_api {
        JobAccess::Open => format!(
            "{url}  OPEN: its job API runs any local user's code as you (restart the cluster after `eval \"$(raywatch env)\"`)"
        ),
        JobAccess::Token => match &d.token_file {
            Some(f) => format!("{url}  token auth on (token in {})", escape::path(f)),
            None => format!("{url}  token auth on"),
        },
        JobAccess::Unknown => format!(
            "{url}  job API not checked: {}",
            escape::text(d.detail.as_deref().unwrap_or("no answer"))
        ),
    }
}

/// The report as people read it.
pub fn render(r: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "raywatch stack at {}", escape::path(&r.home));
    let _ = writeln!(out, "  daemon      pid {}", r.daemon.pid);
    out.push_str(&stack_lines(r, false));
    if r.prometheus.mode == PrometheusMode::Agent {
        let _ = writeln!(
            out,
            "              agent mode: no local data; `raywatch query` asks --query-url"
        );
    }
    remote_write_lines(&mut out, r);
    limits_lines(&mut out, r);
    if let Some(a) = r.alerts {
        let _ = writeln!(
            out,
            "  alerts      {} firing, {} pending{}",
            a.firing,
            a.pending,
            if a.firing + a.pending > 0 {
                " (`raywatch alerts` lists them)"
            } else {
                ""
            }
        );
    }
    warning_lines(&mut out, r);
    let _ = writeln!(out);
    if r.clusters.is_empty() {
        let _ = writeln!(
            out,
            "no Ray clusters found yet (start one with `ray start --head`, or `raywatch attach PATH`)"
        );
    } else {
        let _ = writeln!(out, "clusters:");
        for c in &r.clusters {
            cluster_lines(&mut out, c);
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

/// Each remote-write destination: what it sent, and its last error while it fails.
fn remote_write_lines(out: &mut String, r: &StatusReport) {
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
}

/// The sample limit and the labels dropped, and the targets the limit refuses.
fn limits_lines(out: &mut String, r: &StatusReport) {
    let p = &r.prometheus;
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
}

/// What is left alone or goes wrong in watching and publishing.
fn warning_lines(out: &mut String, r: &StatusReport) {
    let p = &r.prometheus;
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
}

/// One cluster: its line, its links and notes, then its targets.
fn cluster_lines(out: &mut String, c: &ClusterStatus) {
    let up = c.targets.iter().filter(|t| t.health == Health::Up).count();
    let _ = writeln!(
        out,
        "  {}  {}  {}/{} targets up{}  {}  {}",
        escape::text(&c.name),
        c.state.as_str(),
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
    target_lines(out, c);
}

/// A cluster's targets: published ones with their health, the remote ones, the withheld.
fn target_lines(out: &mut String, c: &ClusterStatus) {
    for t in &c.targets {
        let _ = writeln!(
            out,
            "      {:<24} {:<7}{}{}",
            escape::text(&t.address),
            t.role.map_or("", |r| r.as_str()),
            t.health.as_str(),
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
    for l in &c.nodes_lost {
        let _ = writeln!(
            out,
            "      {:<24} LOST: Ray no longer lists this node (for {})",
            escape::text(&l.address),
            humantime::format_duration(Duration::from_secs(
                (crate::clock::unix_now() - l.since_unix).max(0.0) as u64
            ))
        );
    }
}

/// The lines `up` and `status` share: Prometheus (URL, PID, readiness, restarts,
/// why it last exited, where its password is, who holds its port), the gateway,
/// Grafana, and what is watched. `default_roots` also names the patterns
/// `/tmp/ray*` and `$RAY_TMPDIR/ray*` on the watching line (`up` knows its
/// settings; the report lists only the folders found).
pub fn stack_lines(r: &StatusReport, default_roots: bool) -> String {
    let mut out = String::new();
    prometheus_lines(&mut out, &r.prometheus);
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
    grafana_line(&mut out, &r.grafana);
    alertmanager_line(&mut out, r);
    watching_line(&mut out, &r.watch, default_roots);
    out
}

/// Prometheus: its URL, PID, readiness and restarts, why it is down, its
/// password, who holds its port, and its data.
fn prometheus_lines(out: &mut String, p: &PrometheusStatus) {
    let state = if p.ready {
        "ready"
    } else if p.child.crash_loop {
        "CRASH LOOP"
    } else {
        "not ready"
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
    down_lines(out, &p.child);
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
}

/// Why a child last exited, and while it is down its last output and next start.
fn down_lines(out: &mut String, child: &ChildStatus) {
    if let Some(exit) = &child.last_exit {
        let _ = writeln!(out, "              last exit: {}", escape::text(exit));
    }
    if child.pid.is_none() && !child.last_output.is_empty() {
        let _ = writeln!(out, "              its last output:");
        for l in &child.last_output {
            let _ = writeln!(out, "                {}", escape::text(l));
        }
    }
    if let (None, Some(next)) = (child.pid, child.next_start_unix) {
        let now = crate::clock::unix_now();
        let _ = writeln!(
            out,
            "              next start in {:.0} s",
            (next - now).max(0.0)
        );
    }
}

fn alertmanager_line(out: &mut String, r: &StatusReport) {
    if let Some(a) = &r.alertmanager {
        let _ = writeln!(
            out,
            "  alertmanager {}  pid {}  (notifies {} webhook(s), {} Slack, {} e-mail; a password of its own)",
            escape::text(&a.url),
            a.child
                .pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            a.webhooks,
            a.slack,
            a.email
        );
    }
}

fn grafana_line(out: &mut String, g: &GrafanaStatus) {
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
}

fn watching_line(out: &mut String, w: &WatchStatus, default_roots: bool) {
    let roots: Vec<String> = w
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
        w.mode.as_str()
    );
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
