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
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::local::{percentile, sample};
use crate::discovery::DISCOVERY_FILE;
use crate::home::Home;

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?)
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e3
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// `| name | n | median | p95 | min | max |` of durations.
fn row(name: &str, mut v: Vec<Duration>, unit_ms_decimals: usize) -> String {
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
struct Victoria {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Victoria {
    fn start(rt: &tokio::runtime::Runtime, http: &reqwest::Client) -> Result<Victoria> {
        let dir = tempfile::Builder::new()
            .prefix("rwfleet-vm-")
            .tempdir_in("/tmp")?;
        let port = crate::ports::free_port()?;
        let log_path = dir.path().join("victoria-metrics.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
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

    fn write_url(&self) -> String {
        format!("{}/api/v1/write", self.url())
    }

    /// An instant query (through raywatch's one Prometheus client): the result
    /// vector, each sample as JSON (`metric`, `value`).
    async fn query(&self, _http: &reqwest::Client, promql: &str) -> Result<Vec<Value>> {
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

/// A discovery file as Ray writes it (one group, every target), via a temp file and a rename.
fn write_listing(file: &Path, targets: &[String]) -> Result<()> {
    let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let tmp = file.with_extension("tmp");
    fs_err::write(
        &tmp,
        format!(
            r#"[{{"labels": {{"job": "ray"}}, "targets": [{}]}}]"#,
            list.join(", ")
        ),
    )?;
    fs_err::rename(&tmp, file)?;
    Ok(())
}

/// Synthetic Ray heads: one session per listing under `root`, each discovery
/// file rewritten every 5 s like Ray's head does (the writes spread evenly).
pub(crate) struct Heads {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heads {
    pub(crate) fn start(root: &Path, listings: Vec<Vec<String>>) -> Result<Heads> {
        let files = listings
            .into_iter()
            .enumerate()
            .map(|(k, targets)| {
                let d = root.join(format!("session_fleet_{k}"));
                fs_err::create_dir(&d)?;
                let f = d.join(DISCOVERY_FILE);
                write_listing(&f, &targets)?;
                Ok((f, targets))
            })
            .collect::<Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let gap = Duration::from_secs(5) / files.len().max(1) as u32;
                while !stop.load(Ordering::Relaxed) {
                    for (f, targets) in &files {
                        let _ = write_listing(f, targets);
                        std::thread::sleep(gap);
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                }
            })
        };
        Ok(Heads {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Heads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls `check` every `every` until it gives a value, for at most `limit`.
fn wait_for<T>(
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
    let _heads = Heads::start(&stack.root, vec![endpoint.addrs.clone()])?;

    let export = || -> Result<Vec<(i64, f64)>> {
        let start = (unix_ms() / 1e3) as i64 - 60;
        let body = rt.block_on(async {
            http.get(format!("{}/api/v1/export", vm.url()))
                .query(&[("match[]", TICK.to_string()), ("start", start.to_string())])
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        })?;
        Ok(export_samples(&body))
    };
    wait_for(
        "the synthetic cluster's series in VictoriaMetrics",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || export().ok().filter(|s| !s.is_empty()),
    )?;
    // Settle, then time only samples scraped after this point.
    std::thread::sleep(Duration::from_secs(5));
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
    let floor = victoria_floor(&rt, &http, &vm, samples)?;
    // Context: what else this Prometheus sends, and its queue settings.
    let rate = rt
        .block_on(vm.query(
            &http,
            "sum(rate(prometheus_remote_storage_samples_total{ray_host=\"bench-lag\"}[1m]))",
        ))
        .ok()
        .and_then(|r| {
            r.first()
                .and_then(|s| s["value"][1].as_str().map(String::from))
        })
        .and_then(|s| s.parse::<f64>().ok());
    let queue = queue_config(&rt, &stack.home).unwrap_or_else(|e| format!("unknown ({e})"));
    let within_1s = lags.iter().filter(|d| **d < Duration::from_secs(1)).count();
    println!("| path | samples | median | p95 | min | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "{}",
        row(
            "scraped (sample timestamp) → returned by VictoriaMetrics' /api/v1/export",
            lags,
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
        values.len()
    );
    polls.sort();
    println!(
        "poll: every 20 ms plus the request ({} requests, median {:.1} ms, p95 {:.1} ms)",
        polls.len(),
        ms(percentile(&polls, 0.5)),
        ms(percentile(&polls, 0.95))
    );
    if let Some(r) = rate {
        println!(
            "samples this Prometheus sent, all series: {r:.0}/s (prometheus_remote_storage_samples_total)"
        );
    }
    println!("queue_config (Prometheus' defaults, from /api/v1/status/config): {queue}");
    Ok(())
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
                    .block_on(async {
                        http.get(format!("{}/api/v1/export", vm.url()))
                            .query(&[
                                ("match[]", FLOOR.to_string()),
                                ("start", (ts / 1000 - 60).to_string()),
                            ])
                            .send()
                            .await?
                            .text()
                            .await
                    })
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

/// The text of synthetic cluster `slot`: `series` gauges (10 per metric name)
/// whose values change at every scrape, like a Ray node's.
fn synthetic_body(slot: usize, series: usize, scrape: u64) -> String {
    let mut out = String::with_capacity(series * 64);
    for k in 0..series {
        let name = format!("ray_bench_gauge_{}", k / 10);
        if k % 10 == 0 {
            out.push_str(&format!("# TYPE {name} gauge\n"));
        }
        let mut x = (slot as u64) << 40 ^ (k as u64) << 20 ^ scrape;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^= x >> 33;
        out.push_str(&format!(
            "{name}{{SessionName=\"bench_{slot}\",index=\"{}\"}} {:.2}\n",
            k % 10,
            (x % 100_000) as f64 / 100.0
        ));
    }
    out
}

/// Allocated size of everything under `path` (like `du`), in bytes; 0 when missing.
fn du(path: &Path) -> u64 {
    let Ok(m) = fs_err::symlink_metadata(path) else {
        return 0;
    };
    if !m.is_dir() {
        return m.blocks() * 512;
    }
    let inner: u64 = fs_err::read_dir(path)
        .map(|d| d.flatten().map(|e| du(&e.path())).sum())
        .unwrap_or(0);
    m.blocks() * 512 + inner
}

/// A `Vm…:` line of /proc/<pid>/status, in KiB.
fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = fs_err::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// Prometheus' RSS and disk, full (TSDB) versus agent (WAL only): two stacks
/// side by side, each scraping the same `clusters` synthetic clusters of
/// `series` gauges every `interval` and remote-writing to one VictoriaMetrics,
/// measured after `duration` of scraping.
pub fn agent(clusters: usize, series: usize, interval: Duration, duration: Duration) -> Result<()> {
    let rt = runtime()?;
    let http = http()?;
    let vm = Victoria::start(&rt, &http)?;
    let scrapes: Arc<Vec<std::sync::atomic::AtomicU64>> =
        Arc::new((0..clusters).map(|_| Default::default()).collect());
    let endpoints = Endpoints::serve(
        clusters,
        Arc::new(move |i| {
            let n = scrapes[i].fetch_add(1, Ordering::Relaxed);
            synthetic_body(i, series, n)
        }),
    )?;
    let write = vm.write_url();
    let interval_flag = crate::config::prometheus_duration(interval);
    let modes = ["server", "agent"];
    let mut stacks = Vec::new();
    for mode in modes {
        let host = format!("bench-{mode}");
        let mut flags = vec![
            "--remote-write",
            &write,
            "--scrape-interval",
            &interval_flag,
            "--host-label",
            &host,
        ];
        if mode == "agent" {
            flags.push("--agent");
        }
        let stack = FleetStack::up(&flags)?;
        let heads = Heads::start(
            &stack.root,
            endpoints.addrs.iter().map(|a| vec![a.clone()]).collect(),
        )?;
        // Heads first: they stop before their stack goes.
        stacks.push((mode, heads, stack));
    }
    let t_wait = Instant::now();
    wait_for(
        "every synthetic cluster up in both stacks (seen in VictoriaMetrics)",
        Duration::from_secs(180),
        Duration::from_secs(1),
        || {
            let r = rt
                .block_on(vm.query(
                    &http,
                    "count by (ray_host) (up{job=\"ray\", ray_host=~\"bench-.*\"} == 1)",
                ))
                .ok()?;
            let full = r.len() == modes.len()
                && r.iter()
                    .all(|s| s["value"][1].as_str() == Some(&clusters.to_string()));
            full.then_some(())
        },
    )?;
    eprintln!(
        "all {clusters} clusters up in both stacks after {:.0} s; scraping for {duration:?}",
        t_wait.elapsed().as_secs_f64()
    );
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let pids: Vec<u32> = stacks
        .iter()
        .map(|(_, _, s)| s.prometheus_pid())
        .collect::<Result<_>>()?;
    let ticks0: Vec<u64> = pids
        .iter()
        .map(|&p| Ok(sample(p)?.0))
        .collect::<Result<_>>()?;
    let start = Instant::now();
    let mut peak = vec![0u64; pids.len()];
    while start.elapsed() < duration {
        for (k, &p) in pids.iter().enumerate() {
            peak[k] = peak[k].max(sample(p)?.1);
        }
        std::thread::sleep(Duration::from_secs(5).min(duration.saturating_sub(start.elapsed())));
        eprint!(
            "\r{:.0} s of {:.0} s",
            start.elapsed().as_secs_f64(),
            duration.as_secs_f64()
        );
    }
    eprintln!();
    let window = start.elapsed().as_secs_f64();
    let sent = rt.block_on(vm.query(&http, "count by (ray_host) ({ray_host=~\"bench-.*\"})"))?;
    println!(
        "| mode | Prometheus RSS at the end | RSS peak in the window (sampled every 5 s) | VmHWM | Prometheus CPU | disk | of which WAL | series in VictoriaMetrics |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (k, (mode, _, stack)) in stacks.iter().enumerate() {
        let pid = stack.prometheus_pid()?;
        if pid != pids[k] {
            bail!("the {mode} stack's Prometheus restarted during the benchmark");
        }
        let (ticks1, rss, _) = sample(pid)?;
        peak[k] = peak[k].max(rss);
        let hwm = status_kib(pid, "VmHWM:")?;
        let cpu = (ticks1 - ticks0[k]) as f64 / tick / window * 100.0;
        let (store, label) = if *mode == "agent" {
            ("agent", "<home>/prometheus/agent/")
        } else {
            ("data", "<home>/prometheus/data/")
        };
        let dir = stack.home.prometheus_dir().join(store);
        let series = sent
            .iter()
            .find(|s| s["metric"]["ray_host"].as_str() == Some(&format!("bench-{mode}")))
            .and_then(|s| s["value"][1].as_str().map(String::from))
            .unwrap_or_else(|| "?".into());
        println!(
            "| {} | {} | {} | {} | {cpu:.1} % | {:.1} MiB ({label}) | {:.1} MiB | {series} |",
            if *mode == "agent" {
                "agent (`up --agent --remote-write …`)"
            } else {
                "full (`up --remote-write …`)"
            },
            mib(rss),
            mib(peak[k]),
            mib(hwm),
            du(&dir) as f64 / (1 << 20) as f64,
            du(&dir.join("wal")) as f64 / (1 << 20) as f64,
        );
    }
    println!();
    println!(
        "{clusters} synthetic clusters × {series} gauges (values change at every scrape), scrape interval {interval_flag}, {window:.0} s of scraping after all were up; both stacks ran side by side and remote-wrote to one VictoriaMetrics"
    );
    Ok(())
}

/// The http_sd endpoint with `clusters` live clusters of `targets` targets
/// each: response time of `GET /sd` (with the token) over `requests`
/// requests, on one kept-alive connection and on a new connection each time.
pub fn sd(clusters: usize, targets: usize, requests: usize) -> Result<()> {
    let rt = runtime()?;
    let port = crate::ports::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let stack = FleetStack::up(&["--sd-listen", &addr])?;
    // Loopback ports held by this process (raywatch publishes a local target
    // only while a trusted uid listens on it), answering nothing.
    let mut free = (20000u16..=u16::MAX).filter(|&p| crate::ports::is_free(p));
    let listings = (0..clusters)
        .map(|_| {
            (0..targets)
                .map(|_| {
                    free.next()
                        .map(|p| format!("127.0.0.1:{p}"))
                        .context("not enough free ports")
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    let held = super::local::Held::new();
    for t in listings.iter().flatten() {
        held.hold(t)?;
    }
    let _heads = Heads::start(&stack.root, listings)?;
    let token = fs_err::read_to_string(stack.home.sd_token())?
        .trim()
        .to_string();
    let url = format!("http://{addr}/sd");
    let get = |client: &reqwest::Client| -> Result<(Duration, Vec<u8>)> {
        rt.block_on(async {
            let t = Instant::now();
            let resp = client.get(&url).bearer_auth(&token).send().await?;
            if !resp.status().is_success() {
                bail!("GET /sd: {}", resp.status());
            }
            let body = resp.bytes().await?.to_vec();
            Ok((t.elapsed(), body))
        })
    };
    let kept = http()?;
    let t_wait = Instant::now();
    wait_for(
        &format!("all {clusters} clusters in GET /sd"),
        Duration::from_secs(300),
        Duration::from_millis(500),
        || {
            let (_, body) = get(&kept).ok()?;
            let v: Value = serde_json::from_slice(&body).ok()?;
            (v.as_array()?.len() >= clusters).then_some(())
        },
    )?;
    eprintln!(
        "all {clusters} clusters served after {:.0} s",
        t_wait.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(5));
    let fresh = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()?;
    let (mut on_kept, mut on_fresh) = (Vec::new(), Vec::new());
    let mut last = Vec::new();
    for _ in 0..requests {
        let (d, body) = get(&kept)?;
        on_kept.push(d);
        last = body;
        std::thread::sleep(Duration::from_millis(10));
        on_fresh.push(get(&fresh)?.0);
        std::thread::sleep(Duration::from_millis(10));
    }
    let v: Value = serde_json::from_slice(&last)?;
    let groups = v.as_array().context("GET /sd is not a JSON array")?;
    let n_targets: usize = groups
        .iter()
        .map(|g| g["targets"].as_array().map_or(0, Vec::len))
        .sum();
    println!("| GET /sd with the bearer token | requests | median | p95 | min | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "{}",
        row(
            "one kept-alive connection (as Prometheus' http_sd client)",
            on_kept,
            1
        )
    );
    println!("{}", row("a new TCP connection per request", on_fresh, 1));
    println!();
    println!(
        "response: {} bytes ({:.0} KiB), {} target groups, {n_targets} targets ({clusters} synthetic clusters × {targets} targets, rewritten every 5 s throughout)",
        last.len(),
        last.len() as f64 / 1024.0,
        groups.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_victoria_metrics_export_lines() {
        let body = "{\"metric\":{\"__name__\":\"raywatch_bench_tick\"},\"values\":[3,4],\"timestamps\":[1000,2000]}\n\n";
        assert_eq!(export_samples(body), vec![(1000, 3.0), (2000, 4.0)]);
    }

    #[test]
    fn synthetic_bodies_change_at_every_scrape() {
        let a = synthetic_body(3, 20, 0);
        assert_eq!(a.lines().filter(|l| !l.starts_with('#')).count(), 20);
        assert_ne!(a, synthetic_body(3, 20, 1));
    }
}
