//! `raywatch-bench kill-notify`: a real Ray cluster with a running task is
//! SIGKILLed; how long until a loopback webhook hears of it, split into
//! raywatch's share (its targets leave: liveness), Prometheus' (the
//! `RayClusterDied` rule pending, then firing after its `for`) and
//! Alertmanager's (grouping: the webhook receives the notification).
//!
//! Each run starts a stack of its own (`up --notify-webhook`), so no earlier
//! run's alert group delays the next notification by a group interval.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use super::fleet::{FleetStack, wait_for};
use crate::prometheus::Client;
use crate::testkit::HttpSink;

/// A Ray driver that keeps one task running (and one pending) on a cluster.
const BUSY: &str = r#"
import sys, time, ray
ray.init(address=open(sys.argv[1]).read().strip())
@ray.remote
def busy():
    while True:
        time.sleep(0.1)
refs = [busy.remote() for _ in range(2)]
time.sleep(3600)
"#;

/// The `ray` executable: `$RAYWATCH_TEST_RAY` (scripts/test's virtualenv), else `~/.cache/raywatch-venv`.
pub fn default_ray() -> PathBuf {
    std::env::var_os("RAYWATCH_TEST_RAY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/raywatch-venv/bin/ray")
        })
}

/// A loopback webhook receiver (at `/hook` of an [`HttpSink`]).
struct Webhook {
    url: String,
    sink: HttpSink,
}

impl Webhook {
    fn start() -> Result<Webhook> {
        let sink = HttpSink::start()?;
        Ok(Webhook {
            url: format!("{}/hook", sink.base),
            sink,
        })
    }

    /// When a firing `RayClusterDied` naming `cluster` arrived.
    fn died(&self, cluster: &str) -> Option<Instant> {
        self.sink.received().iter().find_map(|r| {
            let (at, body) = (&r.at, &r.body);
            let v: serde_json::Value = serde_json::from_str(body).ok()?;
            let hit = v["status"] == "firing"
                && v["alerts"].as_array()?.iter().any(|a| {
                    a["labels"]["alertname"] == "RayClusterDied"
                        && a["labels"]["ray_io_cluster"] == cluster
                });
            hit.then_some(*at)
        })
    }
}

/// A real single-node Ray head in `temp_dir` (free loopback ports, its own
/// process group), killed by its process group on drop; and its driver.
struct Ray {
    head: Child,
    driver: Option<Child>,
    killed: bool,
}

impl Ray {
    fn start(ray: &Path, temp_dir: &Path) -> Result<Ray> {
        let port = || crate::ports::free_port().map(|p| p.to_string());
        let mut cmd = Command::new(ray);
        cmd.args(["start", "--head", "--block", "--num-cpus", "1"])
            .arg("--disable-usage-stats")
            .arg(format!("--temp-dir={}", temp_dir.display()))
            .arg(format!("--port={}", port()?))
            .arg(format!("--dashboard-port={}", port()?))
            .arg(format!("--metrics-export-port={}", port()?))
            .arg(format!("--ray-client-server-port={}", port()?))
            .arg(format!("--dashboard-agent-listen-port={}", port()?))
            .arg(format!("--dashboard-agent-grpc-port={}", port()?))
            .arg(format!("--runtime-env-agent-port={}", port()?))
            .arg("--object-store-memory=100000000")
            .env("AUTOSCALER_METRIC_PORT", port()?)
            .env("DASHBOARD_METRIC_PORT", port()?);
        let head = ray_env(&mut cmd)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot run {} start", ray.display()))?;
        Ok(Ray {
            head,
            driver: None,
            killed: false,
        })
    }

    /// Runs [`BUSY`] against the cluster whose address is in `address_file`.
    fn drive(&mut self, ray: &Path, address_file: &Path, dir: &Path) -> Result<()> {
        let script = dir.join("busy.py");
        fs_err::write(&script, BUSY)?;
        let mut cmd = Command::new(ray.with_file_name("python"));
        cmd.arg(&script).arg(address_file);
        self.driver = Some(ray_env(&mut cmd).spawn()?);
        Ok(())
    }

    /// SIGKILL to the head's whole process group (every process of the
    /// cluster), once: its group ID is not signalled after the head is reaped.
    fn kill9(&mut self) {
        if std::mem::replace(&mut self.killed, true) {
            return;
        }
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.head.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.head.wait();
        if let Some(d) = &mut self.driver {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

impl Drop for Ray {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Ray started the way raywatch's tests start it: loopback, no usage stats, auth explicit.
fn ray_env(cmd: &mut Command) -> &mut Command {
    cmd.env("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .env("RAY_AUTH_MODE", "disabled")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
}

/// One run's times from the kill.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    /// raywatch withdrew the cluster's targets (found it dead).
    liveness: Duration,
    /// The alert's `activeAt` (its condition first held: pending).
    pending: Duration,
    /// The alert seen firing in `/api/v1/alerts`.
    firing: Duration,
    /// The webhook received the notification.
    webhook: Duration,
}

/// Kill → notification, `runs` times, each with a fresh stack and cluster.
pub fn kill_notify(runs: usize, ray: &Path, scrape_interval: &str) -> Result<()> {
    if !ray.is_file() {
        bail!(
            "no ray at {} (scripts/test installs one; or pass --ray PATH)",
            ray.display()
        );
    }
    println!(
        "| run | kill → targets withdrawn (raywatch) | → rule pending (activeAt) | → firing | → webhook received |"
    );
    println!("| --- | --- | --- | --- | --- |");
    let mut all = Vec::new();
    for i in 1..=runs {
        let r = one_run(ray, scrape_interval)?;
        println!(
            "| {i} | {} | {} | {} | {} |",
            s(r.liveness),
            s(r.pending),
            s(r.firing),
            s(r.webhook)
        );
        all.push(r);
    }
    let med = |f: fn(&Run) -> Duration| {
        let mut v: Vec<Duration> = all.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    let m = Run {
        liveness: med(|r| r.liveness),
        pending: med(|r| r.pending),
        firing: med(|r| r.firing),
        webhook: med(|r| r.webhook),
    };
    println!(
        "| median | {} | {} | {} | {} |",
        s(m.liveness),
        s(m.pending),
        s(m.firing),
        s(m.webhook)
    );
    println!();
    println!(
        "shares of the median: raywatch (liveness) {}; Prometheus (rule evaluation and `for`) {}; Alertmanager (group wait, sending) {}",
        s(m.liveness),
        s(m.firing.saturating_sub(m.liveness)),
        s(m.webhook.saturating_sub(m.firing))
    );
    Ok(())
}

fn s(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The cluster's targets raywatch publishes, by its `ray_io_cluster` label.
fn published_by_cluster(dir: &Path) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for e in fs_err::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "json")
            && let Ok(bytes) = fs_err::read(e.path())
            && let Ok(groups) = serde_json::from_slice::<Vec<serde_json::Value>>(&bytes)
        {
            for g in groups {
                let n = g["targets"].as_array().map_or(0, Vec::len);
                if let Some(name) = g["labels"]["ray_io_cluster"].as_str()
                    && n > 0
                {
                    out.push((name.to_string(), n));
                }
            }
        }
    }
    out
}

/// Seconds from `wall0` to an RFC 3339 time (Prometheus' `activeAt`).
fn since(wall0: SystemTime, rfc3339: &str) -> Option<Duration> {
    let at = humantime::parse_rfc3339(rfc3339).ok()?;
    Some(at.duration_since(wall0).unwrap_or_default())
}

/// A stack and a busy cluster, the kill, and the four times.
fn one_run(ray: &Path, scrape_interval: &str) -> Result<Run> {
    let hook = Webhook::start()?;
    let stack = FleetStack::up(&[
        "--scrape-interval",
        scrape_interval,
        "--notify-webhook",
        &hook.url,
    ])?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let api = Client::for_home(&stack.home)?;
    let mut cluster = Ray::start(ray, &stack.root)?;
    let targets = stack.home.targets_dir();
    let long = Duration::from_secs(180);
    let name = wait_for(
        "the cluster's targets",
        long,
        Duration::from_secs(1),
        || published_by_cluster(&targets).pop().map(|(n, _)| n),
    )?;
    let address = stack.root.join("ray_current_cluster");
    wait_for(
        "the cluster's address",
        long,
        Duration::from_secs(1),
        || {
            let a = fs_err::read_to_string(&address).ok()?;
            (!a.trim().is_empty()).then_some(())
        },
    )?;
    let scratch = stack.root.parent().context("no folder around the root")?;
    cluster.drive(ray, &address, scratch)?;
    let running = format!(r#"sum(ray_tasks{{ray_io_cluster="{name}",State=~"RUNNING.*"}}) > 0"#);
    wait_for("a task running", long, Duration::from_secs(1), || {
        rt.block_on(api.instant(&running))
            .ok()
            .filter(|v| !v.is_empty())
    })?;

    time_the_kill(&mut cluster, &rt, &api, &hook, &targets, &name)
}

/// Kills the cluster, then polls the four moments of a [`Run`] (every 100 ms).
fn time_the_kill(
    cluster: &mut Ray,
    rt: &tokio::runtime::Runtime,
    api: &Client,
    hook: &Webhook,
    targets: &Path,
    name: &str,
) -> Result<Run> {
    let (t0, wall0) = (Instant::now(), SystemTime::now());
    cluster.kill9();
    let mut run = Run::default();
    let mut seen = [false; 4];
    while !seen.iter().all(|s| *s) {
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("not notified within 300 s (seen: {seen:?}, {run:?})");
        }
        if !seen[0]
            && !published_by_cluster(targets)
                .iter()
                .any(|(n, _)| *n == name)
        {
            (run.liveness, seen[0]) = (t0.elapsed(), true);
        }
        let alerts = rt.block_on(api.alerts()).unwrap_or_default();
        let died = alerts.iter().find(|a| {
            a.labels.get("alertname").map(String::as_str) == Some("RayClusterDied")
                && a.labels.get("ray_io_cluster").map(String::as_str) == Some(name)
        });
        if let Some(a) = died {
            if !seen[1]
                && let Some(d) = a.active_at.as_deref().and_then(|t| since(wall0, t))
            {
                (run.pending, seen[1]) = (d, true);
            }
            if !seen[2] && a.state == "firing" {
                (run.firing, seen[2]) = (t0.elapsed(), true);
            }
        }
        if let Some(at) = hook.died(name) {
            (run.webhook, seen[3]) = (at.duration_since(t0), true);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(run)
}
