//! The command line the daemon runs Prometheus with.

use crate::config::{StackConfig, prometheus_duration};
use crate::home::Home;

use super::version::major_version;

/// `--web.read-timeout`: how long a connection may sit without sending its request
/// (or idle between requests). Prometheus' 5 minutes let any local user, without
/// the password, hold every connection it accepts for that long.
pub const READ_TIMEOUT: &str = "30s";

/// `--web.max-connections` for a hard open-files limit of `nofile` (Go programs
/// raise their soft limit to it): half of it, between Prometheus' default 512 and
/// 8192, so that idle connections cannot take the files its storage needs.
pub fn max_connections(nofile: u64) -> u64 {
    (nofile / 2).clamp(512, 8192)
}

/// This process' hard limit of open files (Prometheus inherits it).
pub fn open_files_limit() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1024)
}

/// The command line the daemon runs Prometheus with ([`args_for`] this process'
/// open-files limit).
pub fn args(home: &Home, cfg: &StackConfig) -> Vec<String> {
    args_for(home, cfg, open_files_limit())
}

/// The command line of Prometheus under a hard open-files limit of `nofile`. No
/// lifecycle endpoints: the daemon reloads with SIGHUP. Idle connections are
/// closed after [`READ_TIMEOUT`], and it takes [`max_connections`]. As an agent,
/// Prometheus keeps only a WAL (`--enable-feature=agent` on 2.x, `--agent` on 3.x)
/// and takes no TSDB flags.
pub fn args_for(home: &Home, cfg: &StackConfig, nofile: u64) -> Vec<String> {
    let mut args = vec![
        format!("--config.file={}", home.prometheus_yml().display()),
        format!("--web.config.file={}", home.web_yml().display()),
        format!("--web.read-timeout={READ_TIMEOUT}"),
        format!("--web.max-connections={}", max_connections(nofile)),
    ];
    if cfg.agent {
        match major_version(&cfg.prometheus_bin) {
            Some(v) if v >= 3 => args.push("--agent".into()),
            _ => args.push("--enable-feature=agent".into()),
        }
        args.push(format!(
            "--storage.agent.path={}",
            home.prometheus_dir().join("agent").display()
        ));
    } else {
        args.push(format!(
            "--storage.tsdb.path={}",
            home.prometheus_data().display()
        ));
        args.push(format!(
            "--storage.tsdb.retention.time={}",
            prometheus_duration(cfg.retention)
        ));
    }
    args.push(format!(
        "--web.listen-address=127.0.0.1:{}",
        cfg.prometheus_port
    ));
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_follows_the_open_files_limit() {
        assert_eq!(max_connections(1024), 512);
        assert_eq!(max_connections(4096), 2048);
        assert_eq!(max_connections(20_000), 8192);
        assert_eq!(max_connections(u64::MAX), 8192);
        assert!(max_connections(open_files_limit()) >= 512);
    }
}
