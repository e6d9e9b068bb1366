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
}
