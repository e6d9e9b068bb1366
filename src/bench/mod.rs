//! `raywatch-bench`: the measurements behind docs/BENCHMARKS.md, a binary of its own.
//!
//! Built only with the `bench` feature (`cargo build --release --features bench
//! --bin raywatch-bench`), so the shipped `raywatch` neither carries nor lists
//! it. Every benchmark runs the real `raywatch` binary (the one beside this
//! one, or `$RAYWATCH_BIN`) against a real Prometheus, in temp homes it removes.

pub mod agent;
pub mod alert_cost;
pub mod doctor;
pub mod export;
pub mod fleet;
pub mod kill_notify;
pub mod local;
pub mod netns;
pub mod scale;
pub mod sd;
pub mod soak;
pub mod top;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::config::parse_duration;

/// Measure raywatch against a real Prometheus (the figures of docs/BENCHMARKS.md).
#[derive(Parser, Debug)]
#[command(name = "raywatch-bench", version)]
pub struct BenchCli {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Discovery-file rename to target listed by Prometheus, beside Prometheus' own floor.
    Latency {
        #[arg(long, default_value_t = 50)]
        trials: usize,
        /// Live clusters (rewritten every 5 s) beside the trials.
        #[arg(long, default_value_t = 0)]
        background: usize,
        /// Only raywatch's share (rename → its targets file written), trials 0–500 ms apart.
        #[arg(long)]
        own_only: bool,
    },
    /// N sessions at once: both processes' CPU after, and the time until all are listed.
    Join {
        #[arg(long, default_value_t = 1000)]
        clusters: usize,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Clusters joining and leaving for a long time: memory, fds, final presence, latency.
    Soak {
        #[arg(long, default_value_t = 1000)]
        clusters: usize,
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        every: Duration,
    },
    /// The daemon's and Prometheus' CPU and RSS with N synthetic clusters rewriting every 5 s.
    Idle {
        #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
        clusters: Vec<usize>,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Remote-write lag: a sample's scrape to queryable in a local VictoriaMetrics.
    FleetLag {
        /// Samples to time (one series, scraped every 1 s).
        #[arg(long, default_value_t = 60)]
        samples: usize,
    },
    /// Prometheus' RSS and disk, full mode beside agent mode, both remote-writing.
    Agent {
        #[arg(long, default_value_t = 100)]
        clusters: usize,
        /// Gauges per synthetic cluster.
        #[arg(long, default_value_t = 200)]
        series: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        scrape_interval: Duration,
        /// Scraping time measured, once every cluster is up.
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Needs root: N hosts (network namespaces), each a stack with M synthetic
    /// Ray-sized nodes, feeding one central host: lag, per-host and central RSS and CPU.
    FleetScale {
        #[arg(long, default_value_t = 20)]
        hosts: usize,
        /// Synthetic clusters (of one node, ~800 series) per host.
        #[arg(long, default_value_t = 50)]
        clusters: usize,
        /// The measured window, once every target is up.
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        /// push: agent-mode stacks remote-write to one VictoriaMetrics; pull: one
        /// central Prometheus scrapes every node through the hosts' http_sd.
        #[arg(long, value_enum, default_value = "push")]
        mode: scale::Mode,
    },
    /// One refresh of `raywatch top` with N synthetic clusters: wall time, queries, RSS.
    Top {
        #[arg(long, value_delimiter = ',', default_value = "20,1000")]
        clusters: Vec<usize>,
        /// Refreshes timed at each count.
        #[arg(long, default_value_t = 100)]
        refreshes: usize,
        /// Start the stacks with `up --no-top-rules` (top asks every value live).
        #[arg(long)]
        no_top_rules: bool,
    },
    /// `raywatch export` of a cluster with an hour of data: samples/s and peak RSS.
    Export {
        /// Series of the synthetic cluster, one run per count.
        #[arg(long, value_delimiter = ',', default_value = "900,9000")]
        series: Vec<usize>,
        /// Series per metric name (an idle 1-node Ray 2.60: about 900 series of 157 names).
        #[arg(long, default_value_t = 6)]
        per_metric: usize,
        /// How much data each series has.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        span: Duration,
        /// One sample per series this often.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        interval: Duration,
    },
    /// `raywatch doctor --json` with N live synthetic clusters and the stack up: wall time, peak RSS.
    Doctor {
        #[arg(long, default_value_t = 20)]
        clusters: usize,
        /// Runs timed.
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Response time and size of the http_sd endpoint (`up --sd-listen`).
    Sd {
        #[arg(long, default_value_t = 1000)]
        clusters: usize,
        /// Targets per synthetic cluster.
        #[arg(long, default_value_t = 3)]
        targets: usize,
        #[arg(long, default_value_t = 300)]
        requests: usize,
    },
    /// A real Ray cluster with a running task SIGKILLed: time to the webhook's
    /// notification, split into liveness, rule evaluation and Alertmanager.
    KillNotify {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The `ray` executable (default: `$RAYWATCH_TEST_RAY`, else ~/.cache/raywatch-venv/bin/ray).
        #[arg(long)]
        ray: Option<PathBuf>,
        /// The stack's scrape (and rule evaluation) interval.
        #[arg(long, default_value = "10s")]
        scrape_interval: String,
    },
    /// Prometheus' CPU with N synthetic clusters, with and without the built-in alert rules.
    AlertCost {
        #[arg(long, default_value_t = 1000)]
        clusters: usize,
        /// Each measured window.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Windows of each (alternating: rules on, off, on, off, ...).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
    },
}

/// The `raywatch` binary the benchmarks run: `$RAYWATCH_BIN`, else the one beside this binary.
pub fn raywatch_exe() -> Result<PathBuf> {
    if let Some(bin) = crate::env::raywatch_bin() {
        return Ok(bin);
    }
    let me = std::env::current_exe().context("cannot find this binary's path")?;
    let beside = me.with_file_name("raywatch");
    if !beside.is_file() {
        anyhow::bail!(
            "no raywatch binary beside {} (build it: cargo build --release), or set RAYWATCH_BIN",
            me.display()
        );
    }
    Ok(beside)
}

/// Runs one benchmark; prints its figures (Markdown rows) on stdout.
pub fn run(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Latency {
            trials,
            background,
            own_only,
        } => local::latency_with(trials, background, own_only),
        BenchCommand::Join { clusters, seconds } => local::join(clusters, seconds),
        BenchCommand::Soak {
            clusters,
            duration,
            every,
        } => soak::soak(clusters, duration, every),
        BenchCommand::Idle { clusters, seconds } => local::idle(&clusters, seconds),
        BenchCommand::Export {
            series,
            per_metric,
            span,
            interval,
        } => export::export(&series, per_metric, span, interval),
        BenchCommand::FleetLag { samples } => fleet::fleet_lag(samples),
        BenchCommand::FleetScale {
            hosts,
            clusters,
            seconds,
            mode,
        } => scale::fleet_scale(hosts, clusters, seconds, mode),
        BenchCommand::Agent {
            clusters,
            series,
            scrape_interval,
            duration,
        } => agent::agent(clusters, series, scrape_interval, duration),
        BenchCommand::Sd {
            clusters,
            targets,
            requests,
        } => sd::sd(clusters, targets, requests),
        BenchCommand::Top {
            clusters,
            refreshes,
            no_top_rules,
        } => top::top(&clusters, refreshes, no_top_rules),
        BenchCommand::Doctor { clusters, runs } => doctor::doctor(clusters, runs),
        BenchCommand::KillNotify {
            runs,
            ray,
            scrape_interval,
        } => kill_notify::kill_notify(
            runs,
            &ray.unwrap_or_else(kill_notify::default_ray),
            &scrape_interval,
        ),
        BenchCommand::AlertCost {
            clusters,
            seconds,
            rounds,
        } => alert_cost::alert_cost(clusters, seconds, rounds),
    }
}

/// The `raywatch-bench` binary's main.
pub fn main() -> ExitCode {
    let cli = BenchCli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
