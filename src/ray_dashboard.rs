//! Ray's Dashboard processes of a user: where each listens, which session it serves, and whether its job API demands Ray's token.
//!
//! The Dashboard's job API (`POST /api/jobs/`) runs any entrypoint as the
//! cluster's user. Whether it is open is asked with a read-only `GET
//! /api/jobs/` carrying no credential (200: open to every local user; 401/403:
//! token auth is on), sent only to an address of this machine and only when
//! the socket listening there belongs to the dashboard's user.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the job API probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One Ray Dashboard head process, from its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dashboard {
    pub pid: u32,
    pub uid: u32,
    /// Where it serves HTTP (`--host`, `--port`); `0.0.0.0` is asked on 127.0.0.1.
    pub addr: SocketAddr,
    pub session_dir: Option<PathBuf>,
    pub temp_dir: Option<PathBuf>,
    /// The Ray version of its package (`ray-X.Y.Z.dist-info` beside it).
    pub version: Option<String>,
}

/// Whether a command line is Ray's Dashboard head (`…/ray/dashboard/dashboard.py`).
pub fn is_dashboard(cmdline: &[String]) -> bool {
    cmdline
        .iter()
        .take(4)
        .any(|a| a.ends_with("/dashboard/dashboard.py"))
}

/// The value of `--name=value` on a command line.
pub fn flag<'a>(cmdline: &'a [String], name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    cmdline.iter().find_map(|a| a.strip_prefix(&prefix))
}

impl Dashboard {
    /// The dashboard a command line starts, when it is one and names its port.
    pub fn from_cmdline(pid: u32, uid: u32, cmdline: &[String]) -> Option<Dashboard> {
        if !is_dashboard(cmdline) {
            return None;
        }
        let port: u16 = flag(cmdline, "port")?.parse().ok()?;
        let host = flag(cmdline, "host").unwrap_or("127.0.0.1");
        let ip = match host {
            "localhost" | "" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            h => h.parse::<IpAddr>().ok()?,
        };
        let ip = if ip.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            ip
        };
        Some(Dashboard {
            pid,
            uid,
            addr: SocketAddr::new(ip, port),
            session_dir: flag(cmdline, "session-dir").map(PathBuf::from),
            temp_dir: flag(cmdline, "temp-dir").map(PathBuf::from),
            version: version_of(cmdline),
        })
    }

    /// The URL people open.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether it serves the cluster of `session_dir` (Ray ≥ 2.5x), else of
    /// `temp_dir` (older Ray: one cluster per temp dir).
    pub fn serves(&self, session_dir: Option<&Path>, temp_dir: &Path) -> bool {
        match (session_dir, &self.session_dir) {
            (Some(want), Some(have)) => want == have,
            _ => self.temp_dir.as_deref() == Some(temp_dir),
        }
    }
}

/// The Dashboards `uid` runs, from /proc.
pub fn dashboards_of(uid: u32) -> Vec<Dashboard> {
    let Ok(all) = ::procfs::process::all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter(|p| p.uid().is_ok_and(|u| u == uid))
        .filter_map(|p| {
            let pid = p.pid as u32;
            Dashboard::from_cmdline(pid, uid, &crate::process::cmdline(pid)?)
        })
        .collect()
}

/// What the job API answered without a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobApi {
    /// It demands Ray's token (401/403).
    Token,
    /// It answered 200: every local user can run code as the cluster's user.
    Open,
    /// Not asked, or no clear answer: why.
    Unknown(String),
}

impl JobApi {
    /// The answer as the status report names it.
    pub fn access(&self) -> crate::status::JobAccess {
        match self {
            JobApi::Token => crate::status::JobAccess::Token,
            JobApi::Open => crate::status::JobAccess::Open,
            JobApi::Unknown(_) => crate::status::JobAccess::Unknown,
        }
    }

    /// Why the answer is unknown.
    pub fn detail(&self) -> Option<&str> {
        match self {
            JobApi::Unknown(why) => Some(why),
            _ => None,
        }
    }
}

/// Asks a Dashboard's job API, without a credential, whether it runs anyone's code.
pub async fn probe(d: &Dashboard, listeners: &crate::process::Listeners) -> JobApi {
    let locals = crate::ports::local_addresses();
    if !(d.addr.ip().is_loopback() || locals.contains(&d.addr.ip())) {
        return JobApi::Unknown(format!("{} is not an address of this machine", d.addr));
    }
    match listeners.holder(d.addr.ip(), d.addr.port()) {
        Some(l) if l.uid == d.uid => {}
        Some(l) => {
            return JobApi::Unknown(format!(
                "port {} is held by {}, not by the Dashboard's user",
                d.addr.port(),
                crate::process::user_name(l.uid)
            ));
        }
        None => return JobApi::Unknown(format!("nothing listens on {}", d.addr)),
    }
    let client = match reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PROBE_TIMEOUT)
        .build()
    {
        Ok(c) => c,
        Err(e) => return JobApi::Unknown(e.to_string()),
    };
    match client
        .get(format!("http://{}/api/jobs/", d.addr))
        .send()
        .await
    {
        Ok(r) => match r.status().as_u16() {
            200 => JobApi::Open,
            401 | 403 => JobApi::Token,
            // This Ray has no token auth: its job API takes anyone's jobs.
            _ if too_old(d) => JobApi::Open,
            s => JobApi::Unknown(format!("GET /api/jobs/ answered {s}")),
        },
        Err(e) if e.is_timeout() => {
            JobApi::Unknown(format!("no answer within {} s", PROBE_TIMEOUT.as_secs()))
        }
        Err(e) => JobApi::Unknown(format!("no answer: {e}")),
    }
}

/// Whether a Dashboard's Ray predates token auth.
fn too_old(d: &Dashboard) -> bool {
    d.version
        .as_deref()
        .and_then(crate::ray_auth::parse_version)
        .is_some_and(|v| !crate::ray_auth::has_token_auth(v))
}

/// Probes several Dashboards side by side, answers in their order.
pub async fn probe_all(ds: &[Dashboard]) -> Vec<JobApi> {
    let listeners = std::sync::Arc::new(crate::process::Listeners::read());
    let mut set = tokio::task::JoinSet::new();
    for (i, d) in ds.iter().cloned().enumerate() {
        let listeners = listeners.clone();
        set.spawn(async move { (i, probe(&d, &listeners).await) });
    }
    let mut out = vec![JobApi::Unknown("not asked".into()); ds.len()];
    while let Some(Ok((i, a))) = set.join_next().await {
        out[i] = a;
    }
    out
}

/// Fills in the Dashboard of each live cluster of this user in `report`: its
/// URL, whether its job API demands a token, and where the token is.
pub async fn annotate(report: &mut crate::status::StatusReport) {
    let me = nix::unistd::geteuid().as_raw();
    let my_name = crate::process::user_name(me);
    let live = |c: &crate::status::ClusterStatus| {
        c.state == crate::status::ClusterState::Live && c.user == my_name
    };
    if !report.clusters.iter().any(live) {
        return;
    }
    let dashboards = dashboards_of(me);
    let mut wanted: Vec<(usize, Dashboard)> = Vec::new();
    for (i, c) in report.clusters.iter().enumerate().filter(|(_, c)| live(c)) {
        if let Some(d) = dashboards
            .iter()
            .find(|d| d.serves(c.session_dir.as_deref(), &c.temp_dir))
        {
            wanted.push((i, d.clone()));
        }
    }
    let only: Vec<Dashboard> = wanted.iter().map(|(_, d)| d.clone()).collect();
    let answers = probe_all(&only).await;
    for ((i, d), a) in wanted.into_iter().zip(answers) {
        report.clusters[i].dashboard = Some(crate::status::DashboardStatus {
            url: d.url(),
            pid: d.pid,
            job_api: a.access(),
            detail: a.detail().map(String::from),
            token_file: (a == JobApi::Token).then(|| token_source(d.pid)).flatten(),
        });
    }
}

/// [`probe_all`] on a runtime of its own, for synchronous callers.
pub fn probe_all_blocking(ds: &[Dashboard]) -> Vec<JobApi> {
    if ds.is_empty() {
        return Vec::new();
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(probe_all(ds)),
        Err(e) => vec![JobApi::Unknown(e.to_string()); ds.len()],
    }
}

/// Where a Dashboard of this user takes Ray's token from: its
/// `RAY_AUTH_TOKEN_PATH`, else Ray's default file (`None`: the token is in
/// its environment, `RAY_AUTH_TOKEN`). Only this user's processes are read.
pub fn token_source(pid: u32) -> Option<PathBuf> {
    let env = crate::process::env_vars(
        pid,
        &[crate::ray_auth::TOKEN_PATH_VAR, "RAY_AUTH_TOKEN", "HOME"],
    )
    .ok()?;
    if let Some(p) = env.get(crate::ray_auth::TOKEN_PATH_VAR) {
        return Some(PathBuf::from(p));
    }
    if env.contains_key("RAY_AUTH_TOKEN") {
        return None;
    }
    // Ray's default file, in the Dashboard's own home.
    match env.get("HOME") {
        Some(home) => Some(Path::new(home).join(".ray").join("auth_token")),
        None => crate::ray_auth::ray_default_token_file(),
    }
}

/// The Ray version a Dashboard runs, from the `ray-X.Y.Z.dist-info` beside its package.
pub fn version_of(cmdline: &[String]) -> Option<String> {
    let script = cmdline
        .iter()
        .take(4)
        .find(|a| a.ends_with("/dashboard/dashboard.py"))?;
    let site_packages = Path::new(script).parent()?.parent()?.parent()?;
    crate::ray_auth::dist_info_version(site_packages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn a_dashboard_command_line_gives_its_address_and_session() {
        let d = Dashboard::from_cmdline(
            7,
            1000,
            &cmd(
                "/venv/bin/python -u /venv/lib/python3.11/site-packages/ray/dashboard/dashboard.py --host=0.0.0.0 --port=8265 --port-retries=0 --temp-dir=/tmp/r --session-dir=/tmp/r/session_1",
            ),
        )
        .unwrap();
        assert_eq!(d.addr, "127.0.0.1:8265".parse().unwrap());
        assert_eq!(d.url(), "http://127.0.0.1:8265");
        assert!(d.serves(Some(Path::new("/tmp/r/session_1")), Path::new("/x")));
        assert!(!d.serves(Some(Path::new("/tmp/r/session_2")), Path::new("/tmp/r")));
        assert!(d.serves(None, Path::new("/tmp/r")));
        assert!(
            Dashboard::from_cmdline(
                7,
                1000,
                &cmd("/venv/bin/python -u /venv/lib/python3.11/site-packages/ray/dashboard/agent.py --port=1")
            )
            .is_none()
        );
        assert!(
            Dashboard::from_cmdline(
                7,
                1000,
                &cmd("python /x/dashboard/dashboard.py --host=::1 --port=99")
            )
            .is_some_and(|d| d.addr == "[::1]:99".parse().unwrap())
        );
    }
}
