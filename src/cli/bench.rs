//! `raywatch bench`: hands each measurement to `crate::bench` (the numbers of docs/BENCHMARKS.md).

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
    }
    Ok(Exit::Success)
}
