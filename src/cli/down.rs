//! `raywatch down`: stopping the daemon, Prometheus and Grafana by their recorded PIDs, and `--purge`.

use std::time::Duration;

use anyhow::{Context, Result};

use super::{Exit, lock_home, runtime};
use crate::api;
use crate::daemon::StackProcess;
use crate::escape;
use crate::home::Home;

pub(super) fn down(home: &Home, purge: bool) -> Result<Exit> {
    if !home.exists() {
        println!("no raywatch stack at {}", escape::path(home.root()));
        return Ok(Exit::Success);
    }
    crate::home::check_private_dir(home.root())?;
    let _lock = lock_home(home, "down")?;
    let rt = runtime()?;
    // Read before the daemon removes them on its way out.
    let pids = StackProcess::ALL.map(|p| crate::process::read_pid(&p.pid_file(home)));
    // A daemon that does not answer within 5 s is stopped by PID below.
    let asked = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                api::request(&home.socket(), &api::ShutdownRequest),
            )
            .await
        })
        .is_ok_and(|r| r.is_ok());
    // The daemon stops Prometheus itself; whatever is left (a dead daemon's
    // child, a daemon that did not answer) is stopped here, by recorded PID, after
    // checking that the PID still runs what raywatch started.
    for (process, pid) in StackProcess::ALL.into_iter().zip(pids) {
        let Some(pid) = pid else { continue };
        let patience = if asked && process == StackProcess::Daemon {
            Duration::from_secs(20)
        } else {
            Duration::ZERO
        };
        crate::process::stop(pid, &process.marks(home), patience);
    }
    for f in [
        home.daemon_pid(),
        home.prometheus_pid(),
        home.grafana_pid(),
        home.socket(),
    ] {
        let _ = fs_err::remove_file(f);
    }
    if purge {
        fs_err::remove_dir_all(home.root())
            .with_context(|| format!("cannot delete {}", escape::path(home.root())))?;
        println!("raywatch stopped; {} deleted", escape::path(home.root()));
    } else {
        println!(
            "raywatch stopped (data kept in {}; `raywatch down --purge` deletes it)",
            escape::path(home.root())
        );
    }
    Ok(Exit::Success)
}
