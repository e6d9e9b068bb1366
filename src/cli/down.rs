//! `raywatch down`: stopping the daemon, Prometheus and Grafana by their recorded PIDs, and `--purge`.

use std::time::Duration;

use crate::api::Method;
use anyhow::{Context, Result};

use super::{Exit, lock_home, runtime};
use crate::api;
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
    let daemon_pid = crate::process::read_pid(&home.daemon_pid());
    let prometheus_pid = crate::process::read_pid(&home.prometheus_pid());
    // A daemon that does not answer within 5 s is stopped by PID below.
    let asked = rt
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                api::call(&home.socket(), Method::POST, "/v1/shutdown", None),
            )
            .await
        })
        .is_ok_and(|r| r.is_ok());
    // The daemon stops Prometheus itself; whatever is left (a dead daemon's
    // child, a daemon that did not answer) is stopped here, by recorded PID, after
    // checking that the PID still runs what raywatch started.
    let home_str = home.root().to_string_lossy().into_owned();
    if let Some(pid) = daemon_pid {
        let ours = |cmd: &[String]| {
            cmd.iter().any(|a| a == "daemon") && cmd.iter().any(|a| a == &home_str)
        };
        crate::process::stop(
            pid,
            ours,
            if asked {
                Duration::from_secs(20)
            } else {
                Duration::ZERO
            },
        );
    }
    if let Some(pid) = prometheus_pid {
        let yml = format!("--config.file={}", home.prometheus_yml().display());
        crate::process::stop(pid, |cmd: &[String]| cmd.contains(&yml), Duration::ZERO);
    }
    if let Some(pid) = crate::process::read_pid(&home.grafana_pid()) {
        let ini = home.grafana_dir().join("grafana.ini").display().to_string();
        crate::process::stop(
            pid,
            |cmd: &[String]| cmd.iter().any(|a| a.contains(&ini)),
            Duration::ZERO,
        );
    }
    for f in [
        home.daemon_pid(),
        home.prometheus_pid(),
        home.grafana_pid(),
        home.socket(),
    ] {
        let _ = std::fs::remove_file(f);
    }
    if purge {
        std::fs::remove_dir_all(home.root())
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
