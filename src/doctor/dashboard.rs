//! The `dashboard_wiring` check: does each live Ray Dashboard of this user ask this stack for its charts?
//!
//! Ray's Dashboard reads `RAY_PROMETHEUS_HOST` once, when it starts (unset, it
//! asks `http://localhost:9090`, whoever listens there). Only this user's
//! dashboard processes are looked at: another user's environment is neither
//! readable nor to be trusted.

use std::net::{IpAddr, Ipv4Addr};

use super::{Finding, Machine, Proc, Status};
use crate::escape;

/// The variable Ray's Dashboard takes its Prometheus from.
pub const PROMETHEUS_HOST: &str = "RAY_PROMETHEUS_HOST";
/// What Ray's Dashboard asks when `RAY_PROMETHEUS_HOST` is unset.
pub const RAY_DEFAULT_PROMETHEUS: &str = "http://localhost:9090";

use crate::ray_dashboard::flag;
pub use crate::ray_dashboard::is_dashboard;

/// A URL's host and port, `localhost` read as 127.0.0.1.
fn endpoint(url: &str) -> Option<(IpAddr, u16)> {
    let u = reqwest::Url::parse(url).ok()?;
    let port = u.port_or_known_default()?;
    let host = u.host_str()?;
    let ip = if host == "localhost" {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()?
    };
    Some((ip, port))
}

/// How one dashboard is wired.
#[derive(Debug, PartialEq, Eq)]
pub enum Wiring {
    /// It asks this stack.
    Stack,
    /// `RAY_PROMETHEUS_HOST` is not set.
    Unset,
    /// It asks another URL.
    Elsewhere(String),
    /// It asks a URL and there is no stack to compare it with.
    Unknown(String),
}

/// Compares a dashboard's `RAY_PROMETHEUS_HOST` with the stack's gateway URL.
pub fn wiring(host: Option<&str>, stack: Option<&str>) -> Wiring {
    let Some(host) = host.filter(|h| !h.is_empty()) else {
        return Wiring::Unset;
    };
    let Some(stack) = stack else {
        return Wiring::Unknown(host.to_string());
    };
    let same = |a: (IpAddr, u16), b: (IpAddr, u16)| {
        a.1 == b.1 && (a.0 == b.0 || (a.0.is_loopback() && b.0.is_loopback()))
    };
    match (endpoint(host), endpoint(stack)) {
        (Some(a), Some(b)) if same(a, b) => Wiring::Stack,
        _ => Wiring::Elsewhere(host.to_string()),
    }
}

/// Who listens where a URL points, for the evidence.
fn who_listens(m: &Machine, url: &str) -> String {
    let Some((ip, port)) = endpoint(url) else {
        return "not a loopback address".into();
    };
    match m.listeners.holder(ip, port) {
        Some(l) if l.uid == m.me => format!("port {port}: yours"),
        Some(l) => format!("port {port} held by {}", crate::process::user_name(l.uid)),
        None => format!("nothing listens on port {port}"),
    }
}

/// The session and temp dir a dashboard process serves, from its flags.
fn describe(p: &Proc) -> String {
    let session = flag(&p.cmdline, "session-dir")
        .and_then(|d| crate::ray::session_in_path(std::path::Path::new(d)))
        .or_else(|| crate::process::ray_session_of(p.pid))
        .unwrap_or_else(|| "?".into());
    let temp = flag(&p.cmdline, "temp-dir").unwrap_or("?");
    format!(
        "session {} (temp dir {}, dashboard pid {})",
        escape::text(&session),
        escape::text(temp),
        p.pid
    )
}

/// Whether a dashboard serves a temp dir doctor looks at (every one, without `--root`).
pub(super) fn in_scope(m: &Machine, p: &Proc) -> bool {
    let Some(roots) = &m.only_roots else {
        return true;
    };
    flag(&p.cmdline, "temp-dir").is_some_and(|t| roots.iter().any(|r| r == std::path::Path::new(t)))
}

/// The `RAY_PROMETHEUS_HOST` of a process of this user, `None` when unset.
/// `Err` when its environment cannot be read (it exited meanwhile).
fn prometheus_host(pid: u32) -> Result<Option<String>, ()> {
    let mut env = crate::process::env_vars(pid, &[PROMETHEUS_HOST]).map_err(|_| ())?;
    Ok(env.remove(PROMETHEUS_HOST))
}

pub(super) fn dashboard_wiring(m: &Machine) -> Finding {
    const CHECK: &str = "dashboard_wiring";
    let gateway = match &m.report {
        Ok(r) => Some(r.gateway.url.clone()),
        Err(_) => m
            .config
            .as_ref()
            .filter(|c| c.gateway_port != 0)
            .map(|c| format!("http://127.0.0.1:{}", c.gateway_port)),
    };
    let mut evidence = Vec::new();
    let (mut wired, mut seen) = (0, 0);
    // Only this user's processes: another user's environment is not ours to read.
    for p in m
        .procs
        .list
        .iter()
        .filter(|p| p.uid == m.me && is_dashboard(&p.cmdline))
        .filter(|p| in_scope(m, p))
    {
        let Ok(host) = prometheus_host(p.pid) else {
            continue;
        };
        seen += 1;
        match wiring(host.as_deref(), gateway.as_deref()) {
            Wiring::Stack => wired += 1,
            Wiring::Unknown(_) => {}
            Wiring::Unset => evidence.push(format!(
                "{}: {PROMETHEUS_HOST} is not set, so its Dashboard asks {RAY_DEFAULT_PROMETHEUS} ({})",
                describe(p),
                who_listens(m, RAY_DEFAULT_PROMETHEUS)
            )),
            Wiring::Elsewhere(url) => evidence.push(format!(
                "{}: {PROMETHEUS_HOST}={} ({}), not this stack's {}",
                describe(p),
                escape::text(&url),
                who_listens(m, &url),
                gateway.as_deref().unwrap_or("?")
            )),
        }
    }
    if evidence.is_empty() {
        return Finding::ok(
            CHECK,
            match (&gateway, wired) {
                (None, _) => "no live Ray Dashboard of yours lacks RAY_PROMETHEUS_HOST (no stack to compare with)".to_string(),
                (Some(_), 0) => "no live Ray Dashboard of yours".to_string(),
                (Some(g), n) => format!("{n} live Ray Dashboard(s) of yours ask this stack ({g})"),
            },
        );
    }
    let fix = if m.report.is_ok() {
        "a Dashboard reads RAY_PROMETHEUS_HOST only when it starts: at the cluster's next start, run `eval \"$(raywatch env)\"` first, then `ray start`"
    } else {
        "start the stack (`raywatch up`); a Dashboard reads RAY_PROMETHEUS_HOST only when it starts: at the cluster's next start, run `eval \"$(raywatch env)\"` first, then `ray start`"
    };
    Finding::new(
        CHECK,
        Status::Warning,
        format!(
            "{} of {seen} live Ray Dashboard(s) of yours do not ask this stack: their Metrics tab shows nothing or another Prometheus' data",
            evidence.len()
        ),
    )
    .with(evidence, fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wiring_compares_host_and_port_and_reads_localhost_as_loopback() {
        let stack = Some("http://127.0.0.1:4321");
        assert_eq!(wiring(Some("http://localhost:4321"), stack), Wiring::Stack);
        assert_eq!(wiring(Some("http://127.0.0.1:4321/"), stack), Wiring::Stack);
        assert_eq!(wiring(None, stack), Wiring::Unset);
        assert_eq!(wiring(Some(""), stack), Wiring::Unset);
        assert_eq!(
            wiring(Some("http://127.0.0.1:9090"), stack),
            Wiring::Elsewhere("http://127.0.0.1:9090".into())
        );
        assert_eq!(
            wiring(Some("http://prom.example:4321"), stack),
            Wiring::Elsewhere("http://prom.example:4321".into())
        );
        assert_eq!(
            wiring(Some("http://x:1"), None),
            Wiring::Unknown("http://x:1".into())
        );
    }

    #[test]
    fn dashboard_command_lines() {
        let cmd = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(is_dashboard(&cmd(
            "/venv/bin/python -u /venv/lib/python3.11/site-packages/ray/dashboard/dashboard.py --host=127.0.0.1 --temp-dir=/tmp/ray"
        )));
        assert!(!is_dashboard(&cmd(
            "/venv/bin/python -u /venv/lib/python3.11/site-packages/ray/dashboard/agent.py"
        )));
        assert_eq!(
            flag(
                &cmd("python x --temp-dir=/tmp/r --session-dir=/tmp/r/session_1"),
                "temp-dir"
            ),
            Some("/tmp/r")
        );
    }
}
