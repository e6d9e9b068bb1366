//! `raywatch bench`: hands each measurement to `crate::bench` or `crate::bench_fleet` (the numbers of docs/BENCHMARKS.md).

use anyhow::Result;

use super::Exit;
use super::args::BenchCommand;

pub(super) fn bench(command: BenchCommand) -> Result<Exit> {
    match command {
        BenchCommand::Latency { trials } => crate::bench::latency(trials)?,
        BenchCommand::Soak {
            clusters,
            duration,
            every,
        } => crate::bench::soak(clusters, duration, every)?,
        BenchCommand::Idle { clusters, seconds } => crate::bench::idle(&clusters, seconds)?,
        BenchCommand::FleetLag { samples } => crate::bench_fleet::fleet_lag(samples)?,
        BenchCommand::Agent {
            clusters,
            series,
            scrape_interval,
            duration,
        } => crate::bench_fleet::agent(clusters, series, scrape_interval, duration)?,
        BenchCommand::Sd {
            clusters,
            targets,
            requests,
        } => crate::bench_fleet::sd(clusters, targets, requests)?,
    }
    Ok(Exit::Success)
}
