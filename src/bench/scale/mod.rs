//! `raywatch-bench fleet-scale`: a fleet of simulated hosts (network namespaces) feeding one center.
//!
//! Needs root. Each host is a network namespace of its own ([`super::netns`])
//! running a real raywatch stack (`ip netns exec`, own temp home) that watches
//! N synthetic clusters (discovery files rewritten like Ray's by the test kit's
//! [`Rewriter`]), each cluster's one node served by an exporter of this
//! process bound inside that host's namespace with a Ray-sized payload (about
//! 800 series, values changing every scrape). The center is one more
//! namespace: a VictoriaMetrics that every stack remote-writes to in agent mode
//! (`--mode push`), or a Prometheus configured from `raywatch fleet-config`
//! that pulls every node through the hosts' http_sd (`--mode pull`). Everything
//! is stopped and every namespace removed when it returns, on error and on
//! Ctrl-C too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::fleet::{mib, runtime};
use super::local::{percentile, sample};
use super::netns::{self, Host, Lan};
use crate::discovery::DISCOVERY_FILE;
use crate::home::Home;
use crate::testkit::Rewriter;

/// How the center gets the fleet's samples.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every host's Prometheus in agent mode remote-writes to one VictoriaMetrics.
    Push,
    /// One central Prometheus scrapes every node, found through the hosts' http_sd.
    Pull,
}

/// The series the lag is timed on: one per tenth cluster, beside its Ray series.
const TICK: &str = "raywatch_bench_scale_tick";

/// Where the center listens (its own namespace: no port can be taken).
const CENTER_PORT: u16 = 8428;
const SD_PORT: u16 = 9555;

mod payload;

pub(crate) use payload::{node_series, render};

/// One synthetic node: its series and how often it was scraped.
struct Node {
    series: Vec<(String, bool)>,
    scrapes: AtomicU64,
    tick: bool,
}

/// The nodes' exporters: every listener (bound inside its host's namespace)
/// served by one runtime of this process until dropped.
struct Exporters {
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Exporters {
    fn serve(listeners: Vec<(TcpListener, Arc<Node>)>) -> Result<Exporters> {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let rt = runtime()?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                for (l, node) in listeners {
                    let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                        continue;
                    };
                    let app = axum::Router::new().route(
                        "/metrics",
                        axum::routing::get(move || {
                            let n = node.scrapes.fetch_add(1, Ordering::Relaxed);
                            let text = render(&node.series, n, node.tick);
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
        });
        Ok(Exporters {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Exporters {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A raywatch stack inside a host's namespace, in a temp home; `down --purge` on drop.
struct HostStack {
    ns: String,
    home: Home,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl HostStack {
    fn up(host: &Host, label: &str, extra: &[String]) -> Result<HostStack> {
        let dir = tempfile::Builder::new()
            .prefix("rwscale-")
            .tempdir_in("/tmp")?;
        let home = Home::resolve(Some(dir.path().join("home")))?;
        let root = dir.path().join("ray");
        fs_err::create_dir(&root)?;
        let stack = HostStack {
            ns: host.ns.clone(),
            home,
            root,
            _dir: dir,
        };
        let out = stack
            .raywatch()?
            .args(["up", "--no-default-watch", "--watch"])
            .arg(&stack.root)
            .args(["--host-label", label])
            .args(extra)
            .output()?;
        if !out.status.success() {
            bail!(
                "raywatch up in {} failed: {}",
                host.ns,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stack)
    }

    /// `ip netns exec <ns> raywatch --home <home>`.
    fn raywatch(&self) -> Result<Command> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns])
            .arg(super::raywatch_exe()?)
            .arg("--home")
            .arg(self.home.root())
            .stdin(Stdio::null());
        Ok(c)
    }

    fn prometheus_pid(&self) -> Result<u32> {
        crate::process::read_pid(&self.home.prometheus_pid()).with_context(|| {
            format!(
                "no Prometheus PID in {}",
                self.home.prometheus_pid().display()
            )
        })
    }
}

impl Drop for HostStack {
    fn drop(&mut self) {
        if let Ok(mut c) = self.raywatch() {
            let _ = c.args(["down", "--purge"]).output();
        }
    }
}

/// Every host's stack, taken down all at once (each `down` waits for its
/// Prometheus to finish; one after the other, 20 of them take a minute).
struct Stacks(Vec<HostStack>);

impl Drop for Stacks {
    fn drop(&mut self) {
        std::thread::scope(|s| {
            for stack in self.0.drain(..) {
                s.spawn(move || drop(stack));
            }
        });
    }
}

/// A central program (VictoriaMetrics or Prometheus) in its own temp folder; stopped on drop.
struct Central {
    child: Child,
    dir: tempfile::TempDir,
}

impl Central {
    fn spawn(dir: tempfile::TempDir, mut cmd: Command, what: &str) -> Result<Central> {
        let log = fs_err::File::create(dir.path().join("log"))?.into_parts().0;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Ok(Central { child, dir })
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        let _ = kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGTERM,
        );
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

/// Sleeps `d` in short steps; an error once Ctrl-C (or SIGTERM) was received.
fn nap(d: Duration, stop: &AtomicBool) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

/// The one-minute load average.
fn load() -> String {
    fs_err::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

/// The sum of every sample of `metric` (any labels) in a /metrics text.
pub(crate) fn metric_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Samples of the tick series: (series, timestamp ms) of an `/api/v1/export` answer.
fn tick_points(body: &str) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let key = v["metric"].to_string();
        for t in v["timestamps"].as_array().into_iter().flatten() {
            if let Some(t) = t.as_i64() {
                out.push((key.clone(), t));
            }
        }
    }
    out
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// (median, max) of values.
fn median_max(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (0.0, 0.0);
    }
    (v[(v.len() - 1) / 2], v[v.len() - 1])
}

/// Runs the benchmark and prints its figures (Markdown).
pub fn fleet_scale(hosts: usize, clusters: usize, seconds: u64, mode: Mode) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("fleet-scale needs root: its hosts are network namespaces (run it as root)");
    }
    if hosts == 0 || clusters == 0 || hosts > 250 {
        bail!("--hosts must be 1 to 250 and --clusters at least 1");
    }
    if seconds < 20 {
        bail!("--seconds {seconds}: the window needs at least 20 s (two 10 s scrapes)");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let load_start = load();
    let stale = netns::remove_stale()?;
    if !stale.is_empty() {
        eprintln!(
            "fleet-scale: removed {} namespaces a killed run left: {}",
            stale.len(),
            stale.join(" ")
        );
    }
    let mut lan = Lan::new()?;
    let center = lan.host("c")?;
    let hs = (0..hosts)
        .map(|i| lan.host(&format!("h{i}")))
        .collect::<Result<Vec<_>>>()?;
    eprintln!(
        "fleet-scale: {hosts} hosts on {}/16 .. {}, center {}",
        hs[0].addr,
        hs[hosts - 1].addr,
        center.addr
    );

    // Every node's exporter, bound inside its host.
    let mut served = Vec::new();
    let mut targets: Vec<Vec<String>> = Vec::new();
    let mut series_per_node = 0;
    for h in &hs {
        let ls = netns::listeners_in(&h.ns, h.addr, clusters)?;
        let mut mine = Vec::new();
        for (k, l) in ls.into_iter().enumerate() {
            let series = node_series(&h.addr.to_string(), &format!("session_scale_{k}"));
            series_per_node = series.len();
            mine.push(l.local_addr()?.to_string());
            served.push((
                l,
                Arc::new(Node {
                    series,
                    scrapes: AtomicU64::new(0),
                    tick: k % 10 == 0,
                }),
            ));
        }
        targets.push(mine);
    }
    let _exporters = Exporters::serve(served)?;

    // From here this thread (and what it spawns) is on the central host.
    netns::enter(&center.ns)?;
    let rt = runtime()?;
    let http = fresh_http()?;
    let center_url = format!("http://{}:{CENTER_PORT}", center.addr);
    let central = match mode {
        Mode::Push => {
            let dir = tempfile::Builder::new()
                .prefix("rwscale-vm-")
                .tempdir_in("/tmp")?;
            let mut cmd = Command::new("victoria-metrics");
            cmd.arg(format!("-httpListenAddr={}:{CENTER_PORT}", center.addr))
                .arg(format!(
                    "-storageDataPath={}",
                    dir.path().join("data").display()
                ))
                .arg("-retentionPeriod=1d")
                .arg("-search.latencyOffset=0s")
                .arg("-search.disableCache");
            let vm = Central::spawn(
                dir,
                cmd,
                "victoria-metrics (Debian: apt-get install victoria-metrics)",
            )?;
            wait(
                &stop,
                "VictoriaMetrics healthy",
                Duration::from_secs(60),
                || {
                    rt.block_on(async { http.get(format!("{center_url}/health")).send().await })
                        .is_ok_and(|r| r.status().is_success())
                        .then_some(())
                },
            )?;
            Some(vm)
        }
        Mode::Pull => None,
    };

    // The hosts' stacks and their synthetic clusters.
    let t_up = Instant::now();
    let mut stacks = Stacks(Vec::new());
    for (i, h) in hs.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let extra: Vec<String> = match mode {
            Mode::Push => vec![
                "--agent".into(),
                "--remote-write".into(),
                format!("http://{}:{CENTER_PORT}/api/v1/write", center.addr),
            ],
            Mode::Pull => vec!["--sd-listen".into(), format!("{}:{SD_PORT}", h.addr)],
        };
        stacks.0.push(HostStack::up(h, &format!("h{i}"), &extra)?);
    }
    let mut files = Vec::new();
    for (stack, mine) in stacks.0.iter().zip(&targets) {
        for (k, t) in mine.iter().enumerate() {
            let d = stack.root.join(format!("session_scale_{k}"));
            fs_err::create_dir(&d)?;
            let f = d.join(DISCOVERY_FILE);
            crate::testkit::write_discovery(&f, std::slice::from_ref(t))?;
            files.push((f, vec![t.clone()]));
        }
    }
    let _heads = Rewriter::start(files, super::local::RAY_PERIOD);
    eprintln!("fleet-scale: {hosts} stacks up in {}", secs(t_up.elapsed()));

    // The central Prometheus (pull): configured from `raywatch fleet-config`.
    let central = match mode {
        Mode::Push => central,
        Mode::Pull => Some(central_prometheus(&stacks.0, &hs, &center, &stop)?),
    };
    let central = central.context("no central program")?;
    let query_url = match mode {
        Mode::Push => center_url.clone(),
        Mode::Pull => format!("http://{}:{CENTER_PORT}", center.addr),
    };
    let client = crate::prometheus::Client::remote(&query_url, None, None)?;
    let want = hosts * clusters;
    let t_targets = Instant::now();
    wait(
        &stop,
        "every node target up at the center",
        Duration::from_secs(120 + want as u64 / 5),
        || {
            let v = rt
                .block_on(client.instant(&format!(
                    "count(up{{job=\"{}\"}} == 1)",
                    crate::prometheus::RAY_JOB
                )))
                .ok()?;
            let n = v.first()?.value.1.parse::<f64>().ok()? as usize;
            (n >= want).then_some(())
        },
    )?;
    // A quarter of the window (5 to 30 s) for the remote-write queues to settle.
    let settle = (seconds / 4).clamp(5, 30);
    eprintln!(
        "fleet-scale: {want} targets up at the center after {}; settling {settle} s, then measuring {seconds} s",
        secs(t_targets.elapsed())
    );
    nap(Duration::from_secs(settle), &stop)?;

    // The steady window.
    let prom_pids = stacks
        .0
        .iter()
        .map(HostStack::prometheus_pid)
        .collect::<Result<Vec<_>>>()?;
    let center_pid = central.child.id();
    let tick_hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    let ticks = |pid: u32| sample(pid).map(|s| s.0);
    let start_ticks = prom_pids
        .iter()
        .map(|p| ticks(*p))
        .collect::<Result<Vec<_>>>()?;
    let center_ticks = ticks(center_pid)?;
    let (counter_url, counter) = match mode {
        Mode::Push => (format!("{center_url}/metrics"), "vm_rows_inserted_total"),
        Mode::Pull => (
            format!("{query_url}/metrics"),
            "prometheus_tsdb_head_samples_appended_total",
        ),
    };
    let read_counter = || -> Result<f64> {
        let text = rt.block_on(async {
            http.get(&counter_url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        })?;
        Ok(metric_sum(&text, counter))
    };
    let export = || -> Result<Vec<(String, i64)>> {
        let from = (crate::clock::unix_now() as i64 - 120).to_string();
        let body = rt.block_on(async {
            http.get(format!("{center_url}/api/v1/export"))
                .query(&[("match[]", TICK), ("start", from.as_str())])
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        })?;
        Ok(tick_points(&body))
    };
    let rows_start = read_counter()?;
    let t0 = Instant::now();
    let mut seen: BTreeSet<(String, i64)> = match mode {
        Mode::Push => export()?.into_iter().collect(),
        Mode::Pull => BTreeSet::new(),
    };
    let mut lags = Vec::new();
    let mut peak_rss: BTreeMap<u32, u64> = BTreeMap::new();
    let mut sd_fetches: Vec<(Duration, usize)> = Vec::new();
    let mut last_rss = Instant::now() - Duration::from_secs(60);
    let mut next_sd = 0usize;
    while t0.elapsed() < Duration::from_secs(seconds) {
        if last_rss.elapsed() >= Duration::from_secs(5) {
            last_rss = Instant::now();
            for pid in prom_pids.iter().chain([&center_pid]) {
                let rss = sample(*pid)?.1;
                let e = peak_rss.entry(*pid).or_default();
                *e = (*e).max(rss);
            }
            if mode == Mode::Pull {
                sd_fetches.push(sd_fetch(
                    &rt,
                    &http,
                    &stacks.0[next_sd % hosts],
                    &hs[next_sd % hosts],
                )?);
                next_sd += 1;
            }
        }
        if mode == Mode::Push {
            let got = export()?;
            let now = crate::clock::unix_now() * 1e3;
            for p in got {
                let ts = p.1;
                if seen.insert(p) {
                    lags.push(Duration::from_secs_f64(((now - ts as f64) / 1e3).max(0.0)));
                }
            }
        }
        nap(Duration::from_millis(500), &stop)?;
    }
    let window = t0.elapsed().as_secs_f64();
    let rows_rate = (read_counter()? - rows_start) / window;
    let pct = |pid: u32, start: u64| -> Result<f64> {
        Ok(ticks(pid)?.saturating_sub(start) as f64 / tick_hz / window * 100.0)
    };
    let host_cpu = prom_pids
        .iter()
        .zip(&start_ticks)
        .map(|(p, s)| pct(*p, *s))
        .collect::<Result<Vec<_>>>()?;
    let center_cpu = pct(center_pid, center_ticks)?;
    let host_rss: Vec<f64> = prom_pids
        .iter()
        .map(|p| peak_rss.get(p).copied().unwrap_or(0) as f64)
        .collect();
    let (rss_med, rss_max) = median_max(host_rss);
    let (cpu_med, cpu_max) = median_max(host_cpu);
    let center_rss = peak_rss.get(&center_pid).copied().unwrap_or(0);
    let load_end = load();
    let data = dir_size(central.dir.path());

    println!("| figure | value |");
    println!("| --- | --- |");
    println!(
        "| fleet | {hosts} hosts × {clusters} clusters × 1 node, {series_per_node} series per node (every 10 s; one more on every tenth node, timed for the lag) = {} series |",
        hosts * clusters * series_per_node
            + targets.iter().map(|t| t.len().div_ceil(10)).sum::<usize>()
    );
    println!(
        "| window | {window:.0} s, after every target was up and {settle} s more; load average (1 min) {load_start} before, {load_end} at the end (2 cores) |"
    );
    let host_mode = match mode {
        Mode::Push => "agent mode, remote-writing",
        Mode::Pull => "full mode, serving http_sd",
    };
    println!(
        "| per-host Prometheus RSS ({host_mode}), peak in the window | median {}, max {} |",
        mib(rss_med as u64),
        mib(rss_max as u64)
    );
    println!("| per-host Prometheus CPU | median {cpu_med:.1} %, max {cpu_max:.1} % of a core |");
    match mode {
        Mode::Push => {
            lags.sort();
            if lags.is_empty() {
                bail!("no new tick sample reached VictoriaMetrics in {window:.0} s");
            }
            println!(
                "| remote-write lag (sample timestamp → returned by VictoriaMetrics' export; polled every 0.5 s) | p50 {}, p95 {}, max {} ({} samples of {} series) |",
                secs(percentile(&lags, 0.5)),
                secs(percentile(&lags, 0.95)),
                secs(lags[lags.len() - 1]),
                lags.len(),
                targets.iter().map(|t| t.len().div_ceil(10)).sum::<usize>()
            );
            println!(
                "| VictoriaMetrics ingestion (vm_rows_inserted_total) | {rows_rate:.0} samples/s |"
            );
            println!(
                "| VictoriaMetrics RSS (peak) / CPU | {} / {center_cpu:.1} % of a core |",
                mib(center_rss)
            );
        }
        Mode::Pull => {
            println!(
                "| central Prometheus ingestion (prometheus_tsdb_head_samples_appended_total) | {rows_rate:.0} samples/s |"
            );
            println!(
                "| central Prometheus RSS (peak) / CPU | {} / {center_cpu:.1} % of a core |",
                mib(center_rss)
            );
            let mut times: Vec<Duration> = sd_fetches.iter().map(|f| f.0).collect();
            times.sort();
            let bytes = sd_fetches.iter().map(|f| f.1).max().unwrap_or(0);
            if !times.is_empty() {
                println!(
                    "| http_sd: one GET /sd of a host with {clusters} clusters, from the center | p50 {:.1} ms, p95 {:.1} ms, {bytes} bytes ({} fetches) |",
                    super::fleet::ms(percentile(&times, 0.5)),
                    super::fleet::ms(percentile(&times, 0.95)),
                    times.len()
                );
            }
        }
    }
    println!("| central data folder at the end | {} |", mib(data / 1024));
    Ok(())
}

/// An HTTP client opening a new connection per request: the servers here
/// close idle keep-alive connections (the hosts' http_sd after 10 s,
/// VictoriaMetrics after a minute), and a central Prometheus refreshing every
/// 15 s connects anew as well.
fn fresh_http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// Bytes under `dir` (recursively).
fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs_err::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Polls `check` every 500 ms until it gives a value, for at most `limit` (or until interrupted).
fn wait<T>(
    stop: &AtomicBool,
    what: &str,
    limit: Duration,
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
        nap(Duration::from_millis(500), stop)?;
    }
}

/// One GET /sd of `host` from the center, as its Prometheus refreshes: time and bytes.
fn sd_fetch(
    rt: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    stack: &HostStack,
    host: &Host,
) -> Result<(Duration, usize)> {
    let token = fs_err::read_to_string(stack.home.sd_token())?;
    let t = Instant::now();
    let body = rt.block_on(async {
        http.get(format!("http://{}:{SD_PORT}/sd", host.addr))
            .bearer_auth(token.trim())
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await
    })?;
    Ok((t.elapsed(), body.len()))
}

/// A Prometheus on the center, configured from `raywatch fleet-config` (each
/// host's sd-token copied beside it), scraping every 10 s like the hosts.
fn central_prometheus(
    stacks: &[HostStack],
    hs: &[Host],
    center: &Host,
    stop: &AtomicBool,
) -> Result<Central> {
    let dir = tempfile::Builder::new()
        .prefix("rwscale-prom-")
        .tempdir_in("/tmp")?;
    let template = dir.path().join("sd-{host}.token");
    let mut cmd = stacks[0].raywatch()?;
    cmd.arg("fleet-config").arg("--token-file").arg(&template);
    for h in hs {
        cmd.arg("--host").arg(format!("{}:{SD_PORT}", h.addr));
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "raywatch fleet-config failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (s, h) in stacks.iter().zip(hs) {
        let f = dir.path().join(format!("sd-{}.token", h.addr));
        fs_err::copy(s.home.sd_token(), &f)?;
    }
    let yml = dir.path().join("prometheus.yml");
    fs_err::write(
        &yml,
        format!(
            "global:\n  scrape_interval: 10s\n{}",
            String::from_utf8_lossy(&out.stdout)
        ),
    )?;
    let mut prom = Command::new("prometheus");
    prom.arg(format!("--config.file={}", yml.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!(
            "--web.listen-address={}:{CENTER_PORT}",
            center.addr
        ));
    let c = Central::spawn(dir, prom, "prometheus (Debian: apt-get install prometheus)")?;
    let http = fresh_http()?;
    let rt = runtime()?;
    wait(
        stop,
        "the central Prometheus ready",
        Duration::from_secs(60),
        || {
            rt.block_on(async {
                http.get(format!("http://{}:{CENTER_PORT}/-/ready", center.addr))
                    .send()
                    .await
            })
            .is_ok_and(|r| r.status().is_success())
            .then_some(())
        },
    )?;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synthetic_node_is_ray_sized_and_every_series_distinct() {
        let series = node_series("10.213.200.1", "session_scale_0");
        assert!(
            (780..=820).contains(&series.len()),
            "{} series",
            series.len()
        );
        let names: BTreeSet<&str> = series.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names.len(), series.len(), "a series repeats");
        let text = render(&series, 3, true);
        assert_eq!(text.lines().count(), series.len() + 1);
        assert!(text.starts_with(&format!("{TICK} 3\n")));
        // Counters grow scrape by scrape; every line is `name{labels} value`.
        let again = render(&series, 4, false);
        assert_ne!(text.lines().nth(1), again.lines().next());
        assert!(
            again
                .lines()
                .all(|l| l.contains("SessionName=\"session_scale_0\"")
                    && l.rsplit(' ').next().unwrap().parse::<u64>().is_ok())
        );
    }

    #[test]
    fn sums_a_counter_over_its_labels() {
        let text = "# HELP vm_rows_inserted_total x\nvm_rows_inserted_total{type=\"promremotewrite\"} 100\nvm_rows_inserted_total{type=\"influx\"} 5\nvm_rows_inserted_total_other 7\nvm_rows 1\n";
        assert_eq!(metric_sum(text, "vm_rows_inserted_total"), 105.0);
    }

    #[test]
    fn reads_the_tick_series_per_series() {
        let body = "{\"metric\":{\"__name__\":\"t\",\"ray_host\":\"h0\"},\"values\":[1,2],\"timestamps\":[1000,2000]}\n{\"metric\":{\"__name__\":\"t\",\"ray_host\":\"h1\"},\"values\":[1],\"timestamps\":[1000]}\n";
        let p = tick_points(body);
        assert_eq!(p.len(), 3);
        assert_ne!(p[0].0, p[2].0);
        assert_eq!(p[1].1, 2000);
    }

    #[test]
    fn median_and_max() {
        assert_eq!(median_max(vec![3.0, 1.0, 2.0]), (2.0, 3.0));
        assert_eq!(median_max(vec![]), (0.0, 0.0));
    }
}
