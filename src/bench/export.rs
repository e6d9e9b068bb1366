//! `raywatch-bench export`: `raywatch export`'s throughput (samples/s) and peak
//! RSS for a cluster with an hour of data.
//!
//! The hour is synthesised, not waited for: an OpenMetrics file with
//! `series` series of one cluster (labelled as raywatch labels a Ray node's
//! series, spread over metric names six series each, as an idle 1-node Ray 2.60 has about 900 series of 157 names), one sample per
//! `interval` over the hour that ended a minute ago, is turned into blocks
//! with `promtool tsdb create-blocks-from openmetrics` in the data folder of
//! a new stack's home before `raywatch up` starts its Prometheus. Then the
//! real `raywatch export` runs against it, plain and gzip, timed; its peak RSS
//! is its VmHWM, sampled every 10 ms until it exits.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::home::Home;

/// The cluster name the synthetic data carries.
const CLUSTER: &str = "bench-export";

/// Runs the benchmark for each series count; prints Markdown rows.
pub fn export(
    series_counts: &[usize],
    per_metric: usize,
    span: Duration,
    interval: Duration,
) -> Result<()> {
    println!(
        "| series | samples | file | wall time | samples/s | peak RSS (VmHWM) | gzip file | gzip wall time | gzip samples/s | gzip peak RSS |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &series in series_counts {
        let row = one(series, per_metric.max(1), span, interval)?;
        println!("{row}");
    }
    Ok(())
}

fn one(series: usize, per_metric: usize, span: Duration, interval: Duration) -> Result<String> {
    let dir = tempfile::Builder::new()
        .prefix("rwbench-export-")
        .tempdir_in("/tmp")?;
    let home = Home::resolve(Some(dir.path().join("home")))?;
    home.ensure()?;
    let end = crate::clock::unix_now() - 60.0;
    let start = end - span.as_secs_f64();
    let input = dir.path().join("synthetic.om");
    synthesise(&input, series, per_metric, start, end, interval)?;
    create_blocks(&input, &home)?;
    let raywatch = super::raywatch_exe()?;
    let run = |args: &[&str]| {
        Command::new(&raywatch)
            .arg("--home")
            .arg(home.root())
            .args(args)
            .stdin(Stdio::null())
            .output()
    };
    let up = run(&[
        "up",
        "--no-default-watch",
        "--scrape-interval",
        &crate::config::prometheus_duration(interval),
    ])?;
    if !up.status.success() {
        bail!(
            "raywatch up failed: {}",
            String::from_utf8_lossy(&up.stderr)
        );
    }
    let result = (|| {
        let plain = measure(&raywatch, &home, &dir.path().join("out.om"), start, end)?;
        let gz = measure(&raywatch, &home, &dir.path().join("out.om.gz"), start, end)?;
        let points = (span.as_secs_f64() / interval.as_secs_f64()) as usize + 1;
        if plain.samples as usize != series * points {
            eprintln!(
                "note: {} samples exported, {series} series × {points} points synthesised",
                plain.samples,
            );
        }
        Ok(row(series, per_metric, &plain, &gz))
    })();
    let _ = run(&["down"]);
    result
}

/// Turns the synthetic OpenMetrics file `input` into blocks in `home`'s
/// Prometheus data folder (with promtool), then removes it.
fn create_blocks(input: &std::path::Path, home: &Home) -> Result<()> {
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg(input)
        .arg(home.prometheus_data())
        .output()
        .context("cannot run promtool (install Prometheus' promtool)")?;
    if !out.status.success() {
        bail!(
            "promtool refused the synthetic data: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs_err::remove_file(input)?;
    Ok(())
}

/// The table row of one series count: the plain export beside the gzip one.
fn row(series: usize, per_metric: usize, plain: &Measured, gz: &Measured) -> String {
    let rate = |m: &Measured| m.samples as f64 / m.wall.as_secs_f64();
    format!(
        "| {series} ({per_metric} per metric) | {} | {} | {:.2} s | {:.0} | {} | {} | {:.2} s | {:.0} | {} |",
        plain.samples,
        crate::status::human_bytes(plain.bytes),
        plain.wall.as_secs_f64(),
        rate(plain),
        crate::status::human_bytes(plain.peak_kib * 1024),
        crate::status::human_bytes(gz.bytes),
        gz.wall.as_secs_f64(),
        rate(gz),
        crate::status::human_bytes(gz.peak_kib * 1024),
    )
}

struct Measured {
    samples: u64,
    bytes: u64,
    wall: Duration,
    peak_kib: u64,
}

/// One `raywatch export` of the synthetic cluster, timed, its VmHWM sampled.
fn measure(
    raywatch: &std::path::Path,
    home: &Home,
    out: &std::path::Path,
    from: f64,
    to: f64,
) -> Result<Measured> {
    let started = Instant::now();
    let mut child = Command::new(raywatch)
        .arg("--home")
        .arg(home.root())
        .args(["export", CLUSTER, "--from"])
        .arg(format!("{:.3}", from - 1.0))
        .arg("--to")
        .arg(format!("{:.3}", to + 1.0))
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if let Some(kib) = vm_hwm(pid) {
            peak = peak.max(kib);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = started.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
    if !status.success() {
        bail!("raywatch export failed: {stderr}");
    }
    // "wrote N samples of …"
    let samples = stderr
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("cannot read the sample count from {stderr:?}"))?;
    Ok(Measured {
        samples,
        bytes: fs_err::metadata(out)?.len(),
        wall,
        peak_kib: peak,
    })
}

fn vm_hwm(pid: u32) -> Option<u64> {
    fs_err::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Writes `series` series of one cluster, one sample each `interval` from
/// `start` to `end`, as OpenMetrics (gauges, `per_metric` series per metric name).
fn synthesise(
    path: &std::path::Path,
    series: usize,
    per_metric: usize,
    start: f64,
    end: f64,
    interval: Duration,
) -> Result<()> {
    let mut w = std::io::BufWriter::new(fs_err::File::create(path)?);
    let metrics = series.div_ceil(per_metric);
    let step_ms = interval.as_millis() as i64;
    let (start_ms, end_ms) = ((start * 1000.0) as i64, (end * 1000.0) as i64);
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for m in 0..metrics {
        let name = format!("ray_bench_metric_{m:04}");
        writeln!(w, "# TYPE {name} gauge")?;
        let mut t = start_ms;
        while t <= end_ms {
            for s in 0..per_metric.min(series - m * per_metric) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let v = (x % 100_000) as f64 / 1000.0;
                writeln!(
                    w,
                    "{name}{{Component=\"c{s}\",SessionName=\"session_bench\",WorkerId=\"{:040x}\",instance=\"127.0.0.1:9999\",job=\"ray\",ray_io_cluster=\"{CLUSTER}\",ray_session=\"session_bench\",ray_temp_dir=\"/tmp/ray\",ray_user=\"bench\"}} {v} {}.{:03}",
                    s * 7919,
                    t.div_euclid(1000),
                    t.rem_euclid(1000)
                )?;
            }
            t += step_ms;
        }
    }
    writeln!(w, "# EOF")?;
    w.flush()?;
    Ok(())
}
