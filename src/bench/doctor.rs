//! `raywatch-bench doctor`: the wall time and peak RSS of `raywatch doctor --json` on a
//! machine with N live clusters.
//!
//! A real stack watches one root holding N synthetic Ray sessions, each discovery
//! file rewritten every 5 s and listing one metrics endpoint this process serves;
//! doctor runs with its default roots (so /tmp/ray* besides the stack's), with the
//! stack up: every check does its real work, the daemon's status report included.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::fleet::{Endpoints, FleetStack, heads};
use super::local::percentile;

/// The series each synthetic cluster's endpoint serves.
fn node_metrics(i: usize) -> String {
    format!(
        "ray_node_cpu_utilization{{SessionName=\"session_fleet_{i}\",ip=\"127.0.0.1\"}} {}\n",
        i % 100
    )
}

/// Runs `raywatch doctor --json` `runs` times with `clusters` live clusters; prints a
/// Markdown table row: wall time (median, p95, max) and the peak RSS of one run.
pub fn doctor(clusters: usize, runs: usize) -> Result<()> {
    let raywatch = super::raywatch_exe()?;
    let stack = FleetStack::up(&["--scrape-interval", "5s"])?;
    let endpoints = Endpoints::serve(clusters, Arc::new(node_metrics))?;
    let listings = endpoints.addrs.iter().map(|a| vec![a.clone()]).collect();
    let _heads = heads(&stack.root, listings)?;
    // Every cluster followed (and so in the status report doctor reads).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(&raywatch)
            .arg("--home")
            .arg(stack.home.root())
            .args(["status", "--json"])
            .output()?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let live = report["clusters"]
            .as_array()
            .map(|c| c.iter().filter(|c| c["state"] == "live").count())
            .unwrap_or(0);
        if live >= clusters {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {live} of {clusters} clusters live after 60 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut walls = Vec::with_capacity(runs);
    let mut peak_kib = 0;
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        let mut child = Command::new(&raywatch)
            .arg("--home")
            .arg(stack.home.root())
            .args(["doctor", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if let Some(kib) = vm_hwm(pid) {
                peak_kib = peak_kib.max(kib);
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        walls.push(started.elapsed());
        // 0: no problem; 1: a problem found (e.g. another user's Prometheus): both are answers.
        if !matches!(status.code(), Some(0 | 1)) {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut err)?;
            bail!("raywatch doctor failed ({status}): {err}");
        }
    }
    walls.sort();
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    println!("| clusters | runs | wall p50 | wall p95 | wall max | peak RSS (VmHWM) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!(
        "| {clusters} | {} | {} | {} | {} | {:.1} MiB |",
        walls.len(),
        ms(percentile(&walls, 0.5)),
        ms(percentile(&walls, 0.95)),
        ms(walls[walls.len() - 1]),
        peak_kib as f64 / 1024.0
    );
    Ok(())
}

fn vm_hwm(pid: u32) -> Option<u64> {
    fs_err::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
