//! `raywatch-bench fleet-lag | agent | sd`: the fleet figures of docs/BENCHMARKS.md.
//!
//! Like [`super::local`], each benchmark starts its own stacks (the raywatch binary, a
//! temp home, `--no-default-watch`) and synthetic Ray heads (discovery files
//! written like Ray's: temp file, then rename, rewritten every 5 s). What a
//! fleet adds: a central VictoriaMetrics on a free loopback port (in its own
//! temp folder, stopped by its PID), and metrics endpoints served from this
//! process, so Prometheus scrapes real samples. Everything started here is
//! stopped, and every temp folder removed, when the benchmark returns.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::local::percentile;
use crate::discovery::DISCOVERY_FILE;
use crate::home::Home;
use crate::testkit::Rewriter;

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub(crate) fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?)
}

fn unix_ms() -> f64 {
    crate::clock::unix_now() * 1e3
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `| name | n | median | p95 | min | max |` of durations.
pub(crate) fn row(name: &str, mut v: Vec<Duration>, unit_ms_decimals: usize) -> String {
    v.sort();
    let f = |d: Duration| format!("{:.*} ms", unit_ms_decimals, ms(d));
    format!(
        "| {name} | {} | {} | {} | {} | {} |",
        v.len(),
        f(percentile(&v, 0.5)),
        f(percentile(&v, 0.95)),
        f(v[0]),
        f(v[v.len() - 1])
    )
}

/// A stack of the raywatch binary in a temp home, watching its own Ray root, with extra `up` flags.
pub(crate) struct FleetStack {
    pub(crate) home: Home,
    pub(crate) root: PathBuf,
    _dir: tempfile::TempDir,
}

impl FleetStack {
    pub(crate) fn up(extra: &[&str]) -> Result<FleetStack> {
        let dir = tempfile::Builder::new()
            .prefix("rwfleet-")
            .tempdir_in("/tmp")?;
        let home = Home::resolve(Some(dir.path().join("home")))?;
        let root = dir.path().join("ray_fleet");
        fs_err::create_dir(&root)?;
        // Built before `up`, so a half-started stack is taken down too.
        let stack = FleetStack {
            home,
            root,
            _dir: dir,
        };
        let out = Command::new(super::raywatch_exe()?)
            .arg("--home")
            .arg(stack.home.root())
            .args(["up", "--no-default-watch", "--watch"])
            .arg(&stack.root)
            .args(extra)
            .output()?;
        if !out.status.success() {
            bail!(
                "raywatch up {} failed: {}",
                extra.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stack)
    }

    pub(crate) fn prometheus_pid(&self) -> Result<u32> {
        crate::process::read_pid(&self.home.prometheus_pid()).with_context(|| {
            format!(
                "no Prometheus PID in {}",
                self.home.prometheus_pid().display()
            )
        })
    }
}

impl Drop for FleetStack {
    fn drop(&mut self) {
        let _ = Command::new(super::raywatch_exe().unwrap_or_default())
            .arg("--home")
            .arg(self.home.root())
            .args(["down", "--purge"])
            .output();
    }
}

/// A single-node VictoriaMetrics on a free loopback port, in its own temp
/// folder, started like the fleet tests start it; stopped by its PID on drop.
pub(crate) struct Victoria {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Victoria {
    pub(crate) fn start(rt: &tokio::runtime::Runtime, http: &reqwest::Client) -> Result<Victoria> {
        let dir = tempfile::Builder::new()
            .prefix("rwfleet-vm-")
            .tempdir_in("/tmp")?;
        let port = crate::ports::free_port()?;
        let log_path = dir.path().join("victoria-metrics.log");
        let log = fs_err::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?
            .into_parts()
            .0;
        let child = Command::new("victoria-metrics")
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!(
                "-storageDataPath={}",
                dir.path().join("data").display()
            ))
            .arg("-retentionPeriod=1d")
            // The newest samples at once (the default hides the last 30 s).
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start victoria-metrics (Debian: apt-get install victoria-metrics)")?;
        let vm = Victoria {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = rt
                .block_on(async { http.get(format!("{}/health", vm.url())).send().await })
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(vm);
            }
            if Instant::now() > deadline {
                bail!("victoria-metrics was not healthy within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn write_url(&self) -> String {
        format!("{}/api/v1/write", self.url())
    }

    /// The `/api/v1/export` lines of the series `name` since `start` (unix
    /// seconds), read bounded like every answer of a query API
    /// ([`crate::prometheus::answer::read_bounded`]); `success_only`: an HTTP
    /// error status is an error (else its body is returned as any other).
    async fn export(
        &self,
        http: &reqwest::Client,
        name: &str,
        start: i64,
        success_only: bool,
    ) -> Result<String> {
        let mut resp = http
            .get(format!("{}/api/v1/export", self.url()))
            .query(&[("match[]", name.to_string()), ("start", start.to_string())])
            .send()
            .await?;
        if success_only {
            resp = resp.error_for_status()?;
        }
        let from = format!("VictoriaMetrics at {}", self.url());
        let body = crate::prometheus::answer::read_bounded(resp, &from).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// An instant query (through raywatch's one Prometheus client): the result
    /// vector, each sample as JSON (`metric`, `value`).
    pub(crate) async fn query(&self, _http: &reqwest::Client, promql: &str) -> Result<Vec<Value>> {
        let samples = crate::prometheus::Client::remote(&self.url(), None, None)?
            .instant(promql)
            .await?;
        Ok(samples
            .into_iter()
            .map(|s| serde_json::json!({"metric": s.metric, "value": [s.value.0, s.value.1]}))
            .collect())
    }
}

impl Drop for Victoria {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text an endpoint serves: called with the endpoint's index at every scrape.
pub(crate) type Body = Arc<dyn Fn(usize) -> String + Send + Sync>;

/// N metrics endpoints on free loopback ports (`GET /metrics`), served by one
/// thread of this process until dropped.
pub(crate) struct Endpoints {
    pub(crate) addrs: Vec<String>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Endpoints {
    pub(crate) fn serve(n: usize, body: Body) -> Result<Endpoints> {
        let listeners = (0..n)
            .map(|_| {
                let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .collect::<Result<Vec<_>>>()?;
        let addrs = listeners
            .iter()
            .map(|l| Ok(l.local_addr()?.to_string()))
            .collect::<Result<Vec<_>>>()?;
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let rt = runtime()?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                for (i, l) in listeners.into_iter().enumerate() {
                    let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                        continue;
                    };
                    let body = body.clone();
                    let app = axum::Router::new().route(
                        "/metrics",
                        axum::routing::get(move || {
                            let text = body(i);
                            async move {
                                (
                                    [(
                                        axum::http::header::CONTENT_TYPE,
                                        "text/plain; version=0.0.4",
                                    )],
                                    text,
                                )
                            }
                        }),
                    );
                    tokio::spawn(async move {
                        let _ = axum::serve(l, app).await;
                    });
                }
                let _ = stopped.changed().await;
            });
            // Dropping the runtime here cancels every server and connection task.
        });
        Ok(Endpoints {
            addrs,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Endpoints {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Synthetic Ray heads: one session per listing under `root`, each discovery
/// file rewritten every 5 s like Ray's head does (the writes spread evenly), until dropped.
pub(crate) fn heads(root: &Path, listings: Vec<Vec<String>>) -> Result<Rewriter> {
    let files = listings
        .into_iter()
        .enumerate()
        .map(|(k, targets)| {
            let d = root.join(format!("session_fleet_{k}"));
            fs_err::create_dir(&d)?;
            let f = d.join(DISCOVERY_FILE);
            crate::testkit::write_discovery(&f, &targets)?;
            Ok((f, targets))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Rewriter::start(files, super::local::RAY_PERIOD))
}

/// Polls `check` every `every` until it gives a value, for at most `limit`.
pub(crate) fn wait_for<T>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(every);
    }
}

/// The series of the lag benchmark: its value is the whole seconds since the start.
const TICK: &str = "raywatch_bench_tick";

/// One sample of an `/api/v1/export` answer: timestamp (ms) and value.
fn export_samples(body: &str) -> Vec<(i64, f64)> {
    let mut out = Vec::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let (Some(ts), Some(vals)) = (v["timestamps"].as_array(), v["values"].as_array()) else {
            continue;
        };
        for (t, x) in ts.iter().zip(vals) {
            if let (Some(t), Some(x)) = (t.as_i64(), x.as_f64()) {
                out.push((t, x));
            }
        }
    }
    out
}

/// Remote-write lag: a sample's scrape (its timestamp) to the moment it is
/// queryable in VictoriaMetrics, for `samples` consecutive samples of one
/// series scraped every second.
pub fn fleet_lag(samples: usize) -> Result<()> {
    let rt = runtime()?;
    let http = http()?;
    let vm = Victoria::start(&rt, &http)?;
    let t0 = Instant::now();
    let endpoint = Endpoints::serve(
        1,
        Arc::new(move |_| {
            format!(
                "# HELP {TICK} Seconds since the benchmark started.\n# TYPE {TICK} gauge\n{TICK} {}\n",
                t0.elapsed().as_secs()
            )
        }),
    )?;
    let write = vm.write_url();
    let stack = FleetStack::up(&[
        "--remote-write",
        &write,
        "--scrape-interval",
        "1s",
        "--host-label",
        "bench-lag",
    ])?;
    let _heads = heads(&stack.root, vec![endpoint.addrs.clone()])?;
    let export = || tick_samples(&rt, &http, &vm);
    wait_for(
        "the synthetic cluster's series in VictoriaMetrics",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || export().ok().filter(|s| !s.is_empty()),
    )?;
    // Settle, then time only samples scraped after this point.
    std::thread::sleep(Duration::from_secs(5));
    let lags = Lags::time(export, samples)?;
    let floor = victoria_floor(&rt, &http, &vm, samples)?;
    // Context: what else this Prometheus sends, and its queue settings.
    let rate = sent_rate(&rt, &http, &vm);
    let queue = queue_config(&rt, &stack.home).unwrap_or_else(|e| format!("unknown ({e})"));
    lags.print(floor, samples);
    if let Some(r) = rate {
        println!(
            "samples this Prometheus sent, all series: {r:.0}/s (prometheus_remote_storage_samples_total)"
        );
    }
    println!("queue_config (Prometheus' defaults, from /api/v1/status/config): {queue}");
    Ok(())
}

/// The lag benchmark's samples of the last minute in VictoriaMetrics.
fn tick_samples(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    vm: &Victoria,
) -> Result<Vec<(i64, f64)>> {
    let start = (unix_ms() / 1e3) as i64 - 60;
    let body = rt.block_on(vm.export(http, TICK, start, true))?;
    Ok(export_samples(&body))
}

/// The samples per second the stack's Prometheus remote-writes, all series.
fn sent_rate(rt: &tokio::runtime::Runtime, http: &reqwest::Client, vm: &Victoria) -> Option<f64> {
    rt.block_on(vm.query(
        http,
        "sum(rate(prometheus_remote_storage_samples_total{ray_host=\"bench-lag\"}[1m]))",
    ))
    .ok()
    .and_then(|r| {
        r.first()
            .and_then(|s| s["value"][1].as_str().map(String::from))
    })
    .and_then(|s| s.parse::<f64>().ok())
}

/// Scrape-to-queryable lags of new samples, their distinct values, and the polls' times.
struct Lags {
    lags: Vec<Duration>,
    values: BTreeSet<i64>,
    polls: Vec<Duration>,
}

impl Lags {
    /// Polls `export` every 20 ms until `samples` samples newer than the first poll's arrived.
    fn time(export: impl Fn() -> Result<Vec<(i64, f64)>>, samples: usize) -> Result<Lags> {
        let mut seen: BTreeSet<i64> = export()?.into_iter().map(|(t, _)| t).collect();
        let after = seen.last().copied().unwrap_or(0);
        let (mut lags, mut values, mut polls) = (Vec::new(), BTreeSet::new(), Vec::new());
        let deadline = Instant::now() + Duration::from_secs(2 * samples as u64 + 120);
        while lags.len() < samples {
            if Instant::now() > deadline {
                bail!("only {} of {samples} samples arrived", lags.len());
            }
            let sent = Instant::now();
            let got = export()?;
            let now = unix_ms();
            polls.push(sent.elapsed());
            for (t, v) in got {
                if t > after && seen.insert(t) {
                    lags.push(Duration::from_secs_f64(((now - t as f64) / 1e3).max(0.0)));
                    values.insert(v as i64);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        lags.truncate(samples);
        Ok(Lags {
            lags,
            values,
            polls,
        })
    }

    /// The table (beside VictoriaMetrics' own `floor`) and the notes under it.
    fn print(mut self, floor: Vec<Duration>, samples: usize) {
        let within_1s = self
            .lags
            .iter()
            .filter(|d| **d < Duration::from_secs(1))
            .count();
        println!("| path | samples | median | p95 | min | max |");
        println!("| --- | --- | --- | --- | --- | --- |");
        println!(
            "{}",
            row(
                "scraped (sample timestamp) → returned by VictoriaMetrics' /api/v1/export",
                self.lags,
                0
            )
        );
        println!(
            "{}",
            row(
                "floor: a sample imported straight into VictoriaMetrics (/api/v1/import) → returned by /api/v1/export",
                floor,
                0
            )
        );
        println!();
        println!("scraped → queryable under 1 s: {within_1s} of {samples} samples");
        println!(
            "distinct values among the timed samples: {} (one series, scraped every 1 s)",
            self.values.len()
        );
        self.polls.sort();
        println!(
            "poll: every 20 ms plus the request ({} requests, median {:.1} ms, p95 {:.1} ms)",
            self.polls.len(),
            ms(percentile(&self.polls, 0.5)),
            ms(percentile(&self.polls, 0.95))
        );
    }
}

/// VictoriaMetrics' own share: a sample (timestamped now) imported straight
/// into it, to the first export that returns it; `trials` times, each after a
/// random 0–1 s pause (so the trials do not lock onto its flush ticks), after
/// one untimed import that registers the series.
fn victoria_floor(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    vm: &Victoria,
    trials: usize,
) -> Result<Vec<Duration>> {
    const FLOOR: &str = "raywatch_bench_floor";
    let mut out = Vec::new();
    // The first import registers the series (slower, and not what is timed).
    for i in 0..=trials {
        let mut b = [0u8; 2];
        std::io::Read::read_exact(&mut fs_err::File::open("/dev/urandom")?, &mut b)?;
        std::thread::sleep(Duration::from_millis(
            u64::from(u16::from_le_bytes(b)) % 1000,
        ));
        let ts = unix_ms() as i64;
        let line =
            format!(r#"{{"metric":{{"__name__":"{FLOOR}"}},"values":[{i}],"timestamps":[{ts}]}}"#);
        let t0 = Instant::now();
        rt.block_on(async {
            http.post(format!("{}/api/v1/import", vm.url()))
                .body(line)
                .send()
                .await?
                .error_for_status()
        })?;
        let took = wait_for(
            "an imported sample in VictoriaMetrics",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || {
                let body = rt
                    .block_on(vm.export(http, FLOOR, ts / 1000 - 60, false))
                    .ok()?;
                export_samples(&body)
                    .iter()
                    .any(|(t, _)| *t == ts)
                    .then(|| t0.elapsed())
            },
        )?;
        if i > 0 {
            out.push(took);
        }
    }
    Ok(out)
}

/// The first remote write's queue_config as the running Prometheus has it (defaults filled in).
fn queue_config(rt: &tokio::runtime::Runtime, home: &Home) -> Result<String> {
    let client = crate::prometheus::Client::for_home(home)?;
    let body = rt.block_on(client.get_text("/api/v1/status/config"))?;
    let v: Value = serde_json::from_str(&body)?;
    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(v["data"]["yaml"].as_str().context("no yaml")?)?;
    let q = &yaml["remote_write"][0]["queue_config"];
    let keys = [
        "capacity",
        "max_shards",
        "min_shards",
        "max_samples_per_send",
        "batch_send_deadline",
    ];
    Ok(keys
        .iter()
        .map(|k| {
            let v = match &q[*k] {
                serde_yaml_ng::Value::Number(n) => n.to_string(),
                serde_yaml_ng::Value::String(s) => s.clone(),
                other => format!("{other:?}"),
            };
            format!("{k} {v}")
        })
        .collect::<Vec<_>>()
        .join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_victoria_metrics_export_lines() {
        let body = "{\"metric\":{\"__name__\":\"raywatch_bench_tick\"},\"values\":[3,4],\"timestamps\":[1000,2000]}\n\n";
        assert_eq!(export_samples(body), vec![(1000, 3.0), (2000, 4.0)]);
    }
}
