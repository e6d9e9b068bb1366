//! `raywatch-bench agent`: Prometheus' RSS and disk in full mode beside agent
//! mode, both remote-writing the same synthetic clusters to one VictoriaMetrics.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::fleet::{Endpoints, FleetStack, Victoria, heads, http, mib, runtime, wait_for};
use super::local::sample;
use crate::testkit::Rewriter;

/// The two stacks' modes, and their `ray_host` labels `bench-<mode>`.
const MODES: [&str; 2] = ["server", "agent"];

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
    let scrapes: Arc<Vec<AtomicU64>> =
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
    let stacks = MODES
        .iter()
        .map(|mode| Moded::up(mode, &write, &interval_flag, &endpoints))
        .collect::<Result<Vec<_>>>()?;
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
            let full = r.len() == MODES.len()
                && r.iter()
                    .all(|s| s["value"][1].as_str() == Some(&clusters.to_string()));
            full.then_some(())
        },
    )?;
    eprintln!(
        "all {clusters} clusters up in both stacks after {:.0} s; scraping for {duration:?}",
        t_wait.elapsed().as_secs_f64()
    );
    let mut window = Window::watch(&stacks, duration)?;
    let sent = rt.block_on(vm.query(&http, "count by (ray_host) ({ray_host=~\"bench-.*\"})"))?;
    println!(
        "| mode | Prometheus RSS at the end | RSS peak in the window (sampled every 5 s) | VmHWM | Prometheus CPU | disk | of which WAL | series in VictoriaMetrics |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (k, stack) in stacks.iter().enumerate() {
        println!("{}", window.row(k, stack, &sent)?);
    }
    println!();
    println!(
        "{clusters} synthetic clusters × {series} gauges (values change at every scrape), scrape interval {interval_flag}, {:.0} s of scraping after all were up; both stacks ran side by side and remote-wrote to one VictoriaMetrics",
        window.secs
    );
    Ok(())
}

/// One of the two stacks, its heads dropped before it (fields drop in order).
struct Moded {
    mode: &'static str,
    _heads: Rewriter,
    stack: FleetStack,
}

impl Moded {
    fn up(mode: &'static str, write: &str, interval: &str, endpoints: &Endpoints) -> Result<Moded> {
        let host = format!("bench-{mode}");
        let mut flags = vec![
            "--remote-write",
            write,
            "--scrape-interval",
            interval,
            "--host-label",
            &host,
        ];
        if mode == "agent" {
            flags.push("--agent");
        }
        let stack = FleetStack::up(&flags)?;
        let heads = heads(
            &stack.root,
            endpoints.addrs.iter().map(|a| vec![a.clone()]).collect(),
        )?;
        Ok(Moded {
            mode,
            _heads: heads,
            stack,
        })
    }
}

/// Each stack's Prometheus over the measured window: its PID, CPU ticks at the
/// start, and RSS peak (sampled every 5 s).
struct Window {
    pids: Vec<u32>,
    ticks0: Vec<u64>,
    peak: Vec<u64>,
    secs: f64,
    tick: f64,
}

impl Window {
    /// Samples every stack's Prometheus for `duration`.
    fn watch(stacks: &[Moded], duration: Duration) -> Result<Window> {
        let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
        let pids: Vec<u32> = stacks
            .iter()
            .map(|s| s.stack.prometheus_pid())
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
            std::thread::sleep(
                Duration::from_secs(5).min(duration.saturating_sub(start.elapsed())),
            );
            eprint!(
                "\r{:.0} s of {:.0} s",
                start.elapsed().as_secs_f64(),
                duration.as_secs_f64()
            );
        }
        eprintln!();
        Ok(Window {
            pids,
            ticks0,
            peak,
            secs: start.elapsed().as_secs_f64(),
            tick,
        })
    }

    /// The table's row of stack `k` (`sent`: series per `ray_host` in VictoriaMetrics).
    fn row(&mut self, k: usize, moded: &Moded, sent: &[Value]) -> Result<String> {
        let (mode, stack) = (moded.mode, &moded.stack);
        let pid = stack.prometheus_pid()?;
        if pid != self.pids[k] {
            bail!("the {mode} stack's Prometheus restarted during the benchmark");
        }
        let (ticks1, rss, _) = sample(pid)?;
        self.peak[k] = self.peak[k].max(rss);
        let hwm = status_kib(pid, "VmHWM:")?;
        let cpu = (ticks1 - self.ticks0[k]) as f64 / self.tick / self.secs * 100.0;
        let (store, label) = if mode == "agent" {
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
        Ok(format!(
            "| {} | {} | {} | {} | {cpu:.1} % | {:.1} MiB ({label}) | {:.1} MiB | {series} |",
            if mode == "agent" {
                "agent (`up --agent --remote-write …`)"
            } else {
                "full (`up --remote-write …`)"
            },
            mib(rss),
            mib(self.peak[k]),
            mib(hwm),
            du(&dir) as f64 / (1 << 20) as f64,
            du(&dir.join("wal")) as f64 / (1 << 20) as f64,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_bodies_change_at_every_scrape() {
        let a = synthetic_body(3, 20, 0);
        assert_eq!(a.lines().filter(|l| !l.starts_with('#')).count(), 20);
        assert_ne!(a, synthetic_body(3, 20, 1));
    }
}
