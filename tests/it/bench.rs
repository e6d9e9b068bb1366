//! `raywatch-bench`, the measurements' binary (feature `bench`): it runs, and the shipped binary does not list it.

use predicates::prelude::*;
use predicates::str::contains;

use crate::support::raywatch;
#[cfg(feature = "bench")]
use crate::support::raywatch_bin;

#[test]
fn raywatch_does_not_list_bench() {
    raywatch(&["--help"])
        .assert()
        .success()
        .stdout(contains("bench").not());
    raywatch(&["bench"])
        .assert()
        .code(1)
        .stderr(contains("unrecognized subcommand"));
}

/// Runs `raywatch-bench` against this build's raywatch; its stdout, once it succeeded.
#[cfg(feature = "bench")]
fn bench_stdout(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raywatch-bench"))
        .args(args)
        .env("RAYWATCH_BIN", raywatch_bin())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "raywatch-bench {args:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A short real run keeps the benchmark code working: a stack, two synthetic
/// clusters, and a row of figures.
#[cfg(feature = "bench")]
#[test]
fn idle_bench_measures_a_real_stack() {
    let stdout = bench_stdout(&["idle", "--clusters", "2", "--seconds", "2"]);
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| 2 |"))
        .unwrap_or_else(|| panic!("no row for 2 clusters in:\n{stdout}"));
    assert!(
        row.matches(" % |").count() == 2 && row.contains("MiB"),
        "row: {row}"
    );
}

/// The export benchmark, small: an hour's blocks of a few series, exported
/// plain and gzip, every synthesised sample accounted for.
#[cfg(feature = "bench")]
#[test]
fn export_bench_measures_a_real_export() {
    let stdout = bench_stdout(&["export", "--series", "12", "--span", "10m"]);
    // 12 series × (10 min / 10 s + 1) samples.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| 12 (6 per metric) | 732 |"))
        .unwrap_or_else(|| panic!("no row for 12 series in:\n{stdout}"));
    assert!(row.contains("MiB"), "row: {row}");
}

/// The doctor benchmark, small: a stack, three live synthetic clusters, a row of figures.
#[cfg(feature = "bench")]
#[test]
fn doctor_bench_times_doctor_on_a_real_stack() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_raywatch-bench"))
        .args(["doctor", "--clusters", "3", "--runs", "3"])
        .env("RAYWATCH_BIN", raywatch_bin())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "raywatch-bench doctor failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| 3 | 3 |"))
        .unwrap_or_else(|| panic!("no row for 3 clusters in:\n{stdout}"));
    assert!(
        row.matches(" ms |").count() == 3 && row.contains("MiB"),
        "row: {row}"
    );
}

/// The fleet-scale benchmark, small (its hosts are network namespaces, so it
/// needs root): two hosts of two Ray-sized nodes each push to the center, the
/// figures come out, and none of its namespaces is left.
#[cfg(feature = "bench")]
#[test]
fn fleet_scale_bench_measures_a_pushed_fleet_and_leaves_no_namespace() {
    if !nix::unistd::geteuid().is_root() {
        crate::support::unmet("root, to create network namespaces");
    }
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_raywatch-bench"))
        .args([
            "fleet-scale",
            "--hosts",
            "2",
            "--clusters",
            "2",
            "--seconds",
            "20",
        ])
        .env("RAYWATCH_BIN", raywatch_bin())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "raywatch-bench fleet-scale failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = |start: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no row {start:?} in:\n{stdout}"))
            .to_string()
    };
    assert!(
        row("| fleet | 2 hosts × 2 clusters").contains("series per node"),
        "{stdout}"
    );
    let lag = row("| remote-write lag");
    assert!(lag.contains("p50") && lag.contains("p95"), "row: {lag}");
    assert!(row("| per-host Prometheus RSS").contains("MiB"));
    let ingest = row("| VictoriaMetrics ingestion");
    let rate: f64 = ingest
        .split(" | ")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("row: {ingest}"));
    // Four nodes of ~800 series every 10 s reach the center.
    assert!(rate > 200.0, "row: {ingest}");
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("rwb-{pid}-")))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
