//! `raywatch-bench top`: what one refresh of `raywatch top` costs with N synthetic clusters
//! (wall time, PromQL requests), and the RSS of `raywatch top` itself.
//!
//! Each synthetic cluster is a session under the stack's root whose one target serves the
//! per-node series a Ray 2.60 head exports (CPU, memory, object store, a few task states;
//! every tenth with two GPUs), so every branch of the batched queries has data.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::fleet::{Endpoints, FleetStack, heads};
use super::local::percentile;
use crate::prometheus::{Client, Counted, Counter};
use crate::testkit::Rewriter;
use crate::top::Source;
use crate::top::model::Key;

/// The text of synthetic cluster `i`'s node endpoint.
pub(crate) fn node_metrics(i: usize) -> String {
    let node = format!(
        r#"IsHeadNode="true",RayNodeType="head",SessionName="session_top_{i}",Version="2.60.0",ip="127.0.0.1""#
    );
    let addr =
        format!(r#"Component="raylet",NodeAddress="127.0.0.1",SessionName="session_top_{i}""#);
    let mut t = String::new();
    let cpu = (i * 7) % 100;
    for (m, v) in [
        ("ray_node_cpu_utilization", cpu.to_string()),
        ("ray_node_cpu_count", "8".into()),
        ("ray_node_mem_used", (1u64 << 30).to_string()),
        ("ray_node_mem_total", (16u64 << 30).to_string()),
        ("ray_node_disk_usage", (10u64 << 30).to_string()),
        ("ray_node_disk_free", (90u64 << 30).to_string()),
    ] {
        t.push_str(&format!("{m}{{{node}}} {v}\n"));
    }
    t.push_str(&format!("ray_object_store_used_memory{{{addr}}} 1000000\n"));
    t.push_str(&format!(
        "ray_object_store_available_memory{{{addr}}} 99000000\n"
    ));
    t.push_str(&format!(
        "ray_cluster_active_nodes{{SessionName=\"session_top_{i}\",node_type=\"node_{i}\"}} 1\n"
    ));
    for (state, v) in [
        ("FINISHED", i % 50),
        ("RUNNING", 1),
        ("PENDING_NODE_ASSIGNMENT", i % 3),
        ("FAILED", i % 2),
    ] {
        t.push_str(&format!(
            "ray_tasks{{Name=\"f\",Source=\"owner\",State=\"{state}\",IsRetry=\"0\",SessionName=\"session_top_{i}\"}} {v}\n"
        ));
    }
    t.push_str("process_start_time_seconds 1.7e9\n");
    if i.is_multiple_of(10) {
        for g in 0..2 {
            let gpu = format!(r#"{node},GpuIndex="{g}",GpuDeviceName="NVIDIA A10G""#);
            t.push_str(&format!("ray_node_gpus_available{{{gpu}}} 1\n"));
            t.push_str(&format!(
                "ray_node_gpus_utilization{{{gpu}}} {}\n",
                (i + g * 40) % 100
            ));
            t.push_str(&format!("ray_node_gram_used{{{gpu}}} 4096\n"));
            t.push_str(&format!("ray_node_gram_available{{{gpu}}} 20480\n"));
        }
    }
    t
}

/// Peak RSS (KiB) of `raywatch top --once --json`: its VmHWM, read until it exits. Its
/// stdout is drained only after a second, so with a large answer it waits on the pipe
/// after its peak. (wait4's ru_maxrss would count the bench's own pages, which a
/// vfork-spawned child shares until it execs.)
fn once_peak_kib(mut child: std::process::Child) -> Result<(std::process::ExitStatus, u64)> {
    let status_file = format!("/proc/{}/status", child.id());
    let mut stdout = child.stdout.take().context("no stdout")?;
    let drain = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    });
    let mut peak = 0;
    loop {
        if let Some(kib) = fs_err::read_to_string(&status_file).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        }) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            let _ = drain.join();
            return Ok((status, peak));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One refresh of `top` at each cluster count: wall time (p50, p95), requests per refresh,
/// where the values came from (recording rules or live), Prometheus' CPU over a minute
/// without `top` (the rules' evaluation is in it), and the peak RSS of
/// `raywatch top --once --json` and of the screen (in tmux, when present).
pub fn top(counts: &[usize], refreshes: usize, no_top_rules: bool) -> Result<()> {
    println!(
        "| clusters | refreshes | values | p50 ms | p95 ms | queries/refresh | cluster view p95 ms | Prometheus CPU, a minute without top | top --once RSS MiB | top screen RSS MiB |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for &n in counts {
        let bench = Bench::up(n, no_top_rules)?;
        bench.wait_all_live()?;
        let quiet_cpu = bench.quiet_cpu()?;
        let (took, mut queries, key) = bench.refreshes(refreshes)?;
        if bench.source == Source::Recorded {
            bench.compare_live(refreshes, &took)?;
        }
        let detail = bench.cluster_views(&key, refreshes.min(50))?;
        bench.where_the_time_goes()?;
        if bench.source == Source::Recorded {
            bench.where_recorded_time_goes()?;
        }
        bench.branches()?;
        let (once_kib, screen) = bench.rss()?;
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
        queries.sort();
        queries.dedup();
        let values = match bench.source {
            Source::Recorded => "recorded",
            Source::Live => "live",
        };
        println!(
            "| {n} | {refreshes} | {values} | {} | {} | {} | {} | {quiet_cpu:.1} % | {:.1} | {screen} |",
            ms(percentile(&took, 0.5)),
            ms(percentile(&took, 0.95)),
            queries
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            ms(percentile(&detail, 0.95)),
            once_kib as f64 / 1024.0,
        );
    }
    Ok(())
}

/// A stack with `n` synthetic clusters, and the client `top` asks it with.
/// (Fields drop in order: the client, then the heads, before their stack.)
struct Bench {
    n: usize,
    api: Counted,
    rt: tokio::runtime::Runtime,
    source: Source,
    _heads: Rewriter,
    _endpoints: Endpoints,
    stack: FleetStack,
}

/// Milliseconds of the median.
fn p50_ms(v: &[Duration]) -> f64 {
    percentile(v, 0.5).as_secs_f64() * 1000.0
}

/// Sorts each list of timings.
fn sort_all(lists: &mut [&mut Vec<Duration>]) {
    for v in lists {
        v.sort();
    }
}

impl Bench {
    fn up(n: usize, no_top_rules: bool) -> Result<Bench> {
        let mut args = vec!["--scrape-interval", "5s"];
        if no_top_rules {
            args.push("--no-top-rules");
        }
        let stack = FleetStack::up(&args)?;
        let endpoints = Endpoints::serve(n, Arc::new(node_metrics))?;
        let heads = heads(
            &stack.root,
            endpoints.addrs.iter().map(|a| vec![a.clone()]).collect(),
        )?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let api = Client::for_queries(&stack.home)?.counted(Counter::default());
        let source = rt.block_on(crate::top::source(&api));
        Ok(Bench {
            n,
            api,
            rt,
            source,
            _heads: heads,
            _endpoints: endpoints,
            stack,
        })
    }

    /// One refresh of the cluster list, asked from `source`.
    fn refresh(&self, source: Source) -> Result<crate::top::Clusters> {
        self.rt.block_on(crate::top::fetch_clusters(
            &self.api,
            source,
            crate::top::DEAD_FOR,
            false,
        ))
    }

    /// Waits until every cluster is live, with a minute of history for the sparklines.
    fn wait_all_live(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let c = self.refresh(self.source)?;
            let live = c
                .clusters
                .iter()
                .filter(|c| c.is_live() && c.cpu_percent.is_some())
                .count();
            if live >= self.n {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {live} of {} clusters live after 300 s",
                self.n
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Prometheus' CPU (% of a core) over a minute without `top`: scrapes, and
    /// the rules' evaluation when recorded.
    fn quiet_cpu(&self) -> Result<f64> {
        let prometheus = self.stack.prometheus_pid()?;
        let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
        let (cpu0, t0) = (super::local::sample(prometheus)?.0, Instant::now());
        std::thread::sleep(Duration::from_secs(60));
        let used = super::local::sample(prometheus)?.0 - cpu0;
        Ok(used as f64 / tick / t0.elapsed().as_secs_f64() * 100.0)
    }

    /// `refreshes` refreshes: their sorted times, the requests each made, and the first cluster.
    fn refreshes(&self, refreshes: usize) -> Result<(Vec<Duration>, Vec<u64>, Key)> {
        let mut took = Vec::new();
        let mut queries = Vec::new();
        let mut first = None;
        for _ in 0..refreshes {
            let t0 = Instant::now();
            let c = self.refresh(self.source)?;
            took.push(t0.elapsed());
            queries.push(c.queries);
            first.get_or_insert_with(|| c.clusters[0].key());
        }
        took.sort();
        Ok((took, queries, first.context("no cluster")?))
    }

    /// The same refreshes asked live, back to back with the recorded ones (the
    /// machine's load changes between runs; this compares both on one stack, one minute).
    fn compare_live(&self, refreshes: usize, recorded: &[Duration]) -> Result<()> {
        let mut live = Vec::new();
        for _ in 0..refreshes {
            let t0 = Instant::now();
            self.refresh(Source::Live)?;
            live.push(t0.elapsed());
        }
        live.sort();
        eprintln!(
            "{} clusters: the same refresh asked live: p50 {:.1} ms, p95 {:.1} ms (recorded: p50 {:.1} ms, p95 {:.1} ms)",
            self.n,
            p50_ms(&live),
            percentile(&live, 0.95).as_secs_f64() * 1000.0,
            p50_ms(recorded),
            percentile(recorded, 0.95).as_secs_f64() * 1000.0
        );
        Ok(())
    }

    /// `times` refreshes of one cluster's view, sorted.
    fn cluster_views(&self, key: &Key, times: usize) -> Result<Vec<Duration>> {
        let mut detail = Vec::new();
        for _ in 0..times {
            let t0 = Instant::now();
            self.rt.block_on(crate::top::fetch_cluster(
                &self.api,
                key,
                Duration::from_secs(900),
                None,
            ))?;
            detail.push(t0.elapsed());
        }
        detail.sort();
        Ok(detail)
    }

    /// How long two or three queries, asked side by side, take.
    fn side_by_side(&self, queries: &[String]) -> Result<Duration> {
        let ask = |i: usize| self.api.api.instant_raw(&queries[i]);
        let t0 = Instant::now();
        if let [_, _, _] = queries {
            let (x, y, z) = self
                .rt
                .block_on(async { tokio::join!(ask(0), ask(1), ask(2)) });
            x?;
            y?;
            z?;
        } else {
            let (x, y) = self.rt.block_on(async { tokio::join!(ask(0), ask(1)) });
            x?;
            y?;
        }
        Ok(t0.elapsed())
    }

    /// How long the sparklines' range query `spark` takes.
    fn range(&self, spark: &str) -> Result<Duration> {
        let now = crate::top::now_unix();
        let t0 = Instant::now();
        self.rt
            .block_on(self.api.api.range::<crate::top::model::Labels>(
                spark,
                now - 900.0,
                now,
                Duration::from_secs(30),
            ))?;
        Ok(t0.elapsed())
    }

    /// Where a refresh's time goes: the instant query's HTTP round trip, its
    /// decoding, the same in three parts, the range query.
    fn where_the_time_goes(&self) -> Result<()> {
        let table = crate::top::queries::clusters(crate::top::DEAD_FOR);
        let parts = crate::top::queries::clusters_split(crate::top::DEAD_FOR, 3);
        let chained = crate::top::queries::clusters_split_chained(crate::top::DEAD_FOR, 3);
        let spark = crate::top::queries::sparklines();
        let (mut http, mut whole, mut range, mut split, mut chain, mut size) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            0,
        );
        for _ in 0..20 {
            let t0 = Instant::now();
            let (_, body) = self.rt.block_on(self.api.api.instant_raw(&table))?;
            http.push(t0.elapsed());
            size = body.len();
            let t0 = Instant::now();
            self.rt.block_on(self.api.api.instant(&table))?;
            whole.push(t0.elapsed());
            split.push(self.side_by_side(&parts[..3])?);
            chain.push(self.side_by_side(&chained[..3])?);
            range.push(self.range(&spark)?);
        }
        sort_all(&mut [&mut http, &mut whole, &mut range, &mut split, &mut chain]);
        eprintln!(
            "{} clusters: one instant query p50 {:.1} ms HTTP, {:.1} ms with decoding, answer {} KiB; range query p50 {:.1} ms; the same in three parts side by side p50 {:.1} ms HTTP (as chains of `or`: {:.1} ms)",
            self.n,
            p50_ms(&http),
            p50_ms(&whole),
            size / 1024,
            p50_ms(&range),
            p50_ms(&split),
            p50_ms(&chain)
        );
        Ok(())
    }

    /// Where a recorded refresh's time goes: its instant query whole, its two
    /// halves alone, the answer's decoding, the sparklines' range query.
    fn where_recorded_time_goes(&self) -> Result<()> {
        let parts = crate::top::rules::clusters(crate::top::DEAD_FOR, 2);
        let whole = crate::top::rules::clusters(crate::top::DEAD_FOR, 1);
        let spark = crate::top::rules::sparklines();
        let mut t: [Vec<Duration>; 5] = Default::default();
        let mut size = 0;
        for _ in 0..20 {
            let t0 = Instant::now();
            let (_, body) = self.rt.block_on(self.api.api.instant_raw(&whole[0]))?;
            t[0].push(t0.elapsed());
            size = body.len();
            let t0 = Instant::now();
            self.rt.block_on(
                self.api
                    .api
                    .instant_as::<crate::top::model::Labels>(&whole[0]),
            )?;
            t[1].push(t0.elapsed());
            let t0 = Instant::now();
            self.rt.block_on(self.api.api.instant_raw(&whole[1]))?;
            t[2].push(t0.elapsed());
            t[3].push(self.side_by_side(&parts[..2])?);
            t[4].push(self.range(&spark)?);
        }
        for v in &mut t {
            v.sort();
        }
        eprintln!(
            "{} clusters, recorded: every field in one selector p50 {:.1} ms HTTP ({} KiB), {:.1} ms with decoding; in two selectors side by side {:.1} ms; last_seen {:.1} ms; sparklines' range query {:.1} ms",
            self.n,
            p50_ms(&t[0]),
            size / 1024,
            p50_ms(&t[1]),
            p50_ms(&t[3]),
            p50_ms(&t[2]),
            p50_ms(&t[4])
        );
        Ok(())
    }

    /// Each branch of the live query alone, p50 of 5.
    fn branches(&self) -> Result<()> {
        for b in crate::top::queries::clusters_branches(crate::top::DEAD_FOR) {
            let mut t = Vec::new();
            for _ in 0..5 {
                let t0 = Instant::now();
                self.rt.block_on(self.api.api.instant_raw(&b))?;
                t.push(t0.elapsed());
            }
            t.sort();
            let name = b
                .rsplit("\"rw_field\", \"")
                .next()
                .unwrap_or("")
                .split('"')
                .next()
                .unwrap_or("");
            eprintln!("  branch {name}: p50 {:.1} ms", p50_ms(&t));
        }
        Ok(())
    }

    /// Peak RSS of `raywatch top --once --json` (KiB) and of the screen (MiB, or – without tmux).
    fn rss(&self) -> Result<(u64, String)> {
        let exe = super::raywatch_exe()?;
        let once = Command::new(&exe)
            .arg("--home")
            .arg(self.stack.home.root())
            .args(["top", "--once", "--json"])
            .stdout(Stdio::piped())
            .spawn()?;
        let (status, once_kib) = once_peak_kib(once)?;
        anyhow::ensure!(status.success(), "raywatch top --once failed");
        let screen = screen_rss_kib(&exe, &self.stack)
            .map_or("–".to_string(), |k| format!("{:.1}", k as f64 / 1024.0));
        Ok((once_kib, screen))
    }
}

/// The peak RSS (KiB) of `raywatch top` on a 200×50 tmux screen after 30 refreshes
/// every 500 ms, or None without tmux.
fn screen_rss_kib(exe: &std::path::Path, stack: &FleetStack) -> Option<u64> {
    let dir = tempfile::Builder::new()
        .prefix("rwtop-")
        .tempdir_in("/tmp")
        .ok()?;
    let socket = dir.path().join("tmux.sock");
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args(args)
            .env_remove("TMUX")
            .output()
    };
    let pidfile = dir.path().join("pid");
    let cmd = format!(
        "echo $$ > '{}'; exec '{}' --home '{}' top --interval 500ms",
        pidfile.display(),
        exe.display(),
        stack.home.root().display()
    );
    let out = tmux(&["new-session", "-d", "-x", "200", "-y", "50", &cmd]).ok()?;
    if !out.status.success() {
        return None;
    }
    std::thread::sleep(Duration::from_secs(16));
    let pid = fs_err::read_to_string(&pidfile).ok()?;
    let status = fs_err::read_to_string(format!("/proc/{}/status", pid.trim())).ok();
    let _ = tmux(&["send-keys", "-t", "0", "q"]);
    std::thread::sleep(Duration::from_millis(500));
    let _ = tmux(&["kill-server"]);
    status?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
