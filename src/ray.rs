//! Ray's folder layout, known here only: temp dirs, `session_*` folders, and the files raywatch reads in them.
//!
//! ```text
//! <temp dir>/                         e.g. /tmp/ray (default), or ray start --temp-dir
//!   session_<date>_<pid>/             one per `ray start` (a Ray session)
//!     prom_metrics_service_discovery.json   rewritten every 5 s (Ray ≥ 2.5x)
//!     gcs_server_port_<n>             the GCS port, as text
//!     metrics/grafana/dashboards/*.json     Ray's generated Grafana dashboards
//!   session_latest -> session_…       the last session started here
//!   ray_current_cluster               the last cluster's GCS host:port
//!   prom_metrics_service_discovery.json     Ray < 2.5x: the file itself;
//!                                     Ray ≥ 2.5x: a link to the last writer's
//! ```

use std::path::{Path, PathBuf};

/// The file Ray's head rewrites every 5 s.
pub const DISCOVERY_FILE: &str = "prom_metrics_service_discovery.json";
/// The link to the last session started in a temp dir.
pub const SESSION_LATEST: &str = "session_latest";
/// The file at the temp-dir level recording the last cluster's GCS `host:port`.
pub const CURRENT_CLUSTER: &str = "ray_current_cluster";
/// The prefix of the file recording the GCS port in a session folder.
pub const GCS_PORT_PREFIX: &str = "gcs_server_port_";
/// Where Ray writes its Grafana dashboards, below a session folder.
pub const DASHBOARDS_DIR: &str = "metrics/grafana/dashboards";
/// The name of Ray's default temp dir (in /tmp or `$RAY_TMPDIR`).
pub const DEFAULT_TEMP_DIR_NAME: &str = "ray";

/// Where an endpoint a cluster lists runs: on the head's host (the head
/// node's metrics, the autoscaler's and the dashboard's), or on a worker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Head,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Head => "head",
            Role::Worker => "worker",
        }
    }
}

/// The role of each endpoint of a discovery file's list, in order. Ray's head
/// lists every alive node's metrics endpoint, then its autoscaler's and its
/// dashboard's, which run on the head: the last endpoint's host is the head's.
/// (A worker started on the head's own host counts as the head's.)
pub fn roles(targets: &[String]) -> Vec<Role> {
    let host = |t: &str| t.rsplit_once(':').map_or(t, |(h, _)| h).to_string();
    let head = targets.last().map(|t| host(t));
    targets
        .iter()
        .map(|t| {
            if Some(host(t)) == head {
                Role::Head
            } else {
                Role::Worker
            }
        })
        .collect()
}

/// Whether `name` is a session folder's name (`session_latest` is a link, not one).
pub fn is_session_name(name: &str) -> bool {
    name.starts_with("session_") && name != SESSION_LATEST
}

/// Whether `name` may be a Ray temp dir inside /tmp or `$RAY_TMPDIR` (`ray*`).
pub fn is_temp_dir_name(name: &str) -> bool {
    name.starts_with(DEFAULT_TEMP_DIR_NAME)
}

/// Whether a folder entry is the file recording the GCS port.
pub fn is_gcs_port_file(name: &str) -> bool {
    name.starts_with(GCS_PORT_PREFIX)
}

/// The pid a session's name ends with (`session_<date>_<pid>`), used to tell
/// apart two sessions of one temp dir.
pub fn session_pid(session: &str) -> &str {
    session.rsplit('_').next().unwrap_or("")
}

/// Folders whose `ray*` children are Ray temp dirs by default: /tmp and `$RAY_TMPDIR`.
pub fn default_temp_dir_parents() -> Vec<PathBuf> {
    let mut parents = vec![PathBuf::from("/tmp")];
    if let Some(dir) = crate::env::ray_tmpdir()
        && !parents.contains(&dir)
    {
        parents.push(dir);
    }
    parents
}

/// The session a path belongs to: its `session_*` component, if any.
pub fn session_in_path(path: &Path) -> Option<String> {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .find(|c| is_session_name(c))
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_the_layout() {
        assert!(is_session_name("session_2026-01-01_00-00-00_000001_42"));
        assert!(!is_session_name("session_latest"));
        assert!(!is_session_name("logs"));
        assert_eq!(session_pid("session_2026-01-01_00-00-00_000001_42"), "42");
        assert_eq!(
            session_in_path(Path::new("/tmp/ray/session_x_1/logs")).as_deref(),
            Some("session_x_1")
        );
        assert_eq!(
            session_in_path(Path::new("/tmp/ray/session_latest/logs")),
            None
        );
        assert!(is_gcs_port_file("gcs_server_port_6379"));
    }

    #[test]
    fn the_last_endpoints_host_is_the_heads_the_others_are_workers() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let nodes = list(&[
            "10.0.0.2:8080",
            "10.0.0.1:8080",
            "10.0.0.3:8080",
            "10.0.0.1:44217",
            "10.0.0.1:44227",
        ]);
        let got: Vec<&str> = roles(&nodes).into_iter().map(Role::as_str).collect();
        assert_eq!(got, ["worker", "head", "worker", "head", "head"]);
        assert_eq!(roles(&list(&["127.0.0.1:44217"])), [Role::Head]);
        assert!(roles(&[]).is_empty());
        let v6 = list(&["[fd00::2]:8080", "[fd00::1]:8080", "[fd00::1]:44217"]);
        assert_eq!(roles(&v6), [Role::Worker, Role::Head, Role::Head]);
    }
}
