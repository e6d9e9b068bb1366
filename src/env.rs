//! Every environment variable raywatch reads, in one place (flags that have one name it with clap's `env =`).
//!
//! | variable | read for |
//! | --- | --- |
//! | `RAYWATCH_HOME` | the stack's home (`--home`) |
//! | `XDG_STATE_HOME`, `HOME` | the default home (`$XDG_STATE_HOME/raywatch`, else `~/.local/state/raywatch`) |
//! | `RAYWATCH_PROMETHEUS` | the Prometheus binary, before `PATH` |
//! | `RAYWATCH_GRAFANA` | the Grafana binary, before `PATH` |
//! | `XDG_CACHE_HOME` | where downloaded programs are kept (else `~/.cache/raywatch`) |
//! | `RAYWATCH_PROMETHEUS_URL`, `RAYWATCH_ALERTMANAGER_URL`, `RAYWATCH_GRAFANA_URL` | a site mirror's tarball, instead of the official release |
//! | `RAYWATCH_PROMETHEUS_SHA256`, `RAYWATCH_ALERTMANAGER_SHA256`, `RAYWATCH_GRAFANA_SHA256` | that tarball's SHA-256, instead of the checksum list beside it |
//! | `RAYWATCH_DOWNLOAD_STALL` | how long a download may go without progress (default 60s; tests shorten it) |
//! | `PATH` | finding `prometheus`, `promtool`, `grafana`, `grafana-server` |
//! | `RAY_TMPDIR` | Ray's temp-dir parent, watched besides /tmp |
//! | `RAY_PROMETHEUS_NAME` | the datasource name Ray's Dashboard expects (at `up`) |
//! | `RAYWATCH_LOG` | the log filter (tracing's `EnvFilter` syntax, default `info`) |
//! | `NO_COLOR` | `top` draws without colours when set (no-color.org) |
//! | `RAYWATCH_TOP_DEAD_FOR` | `top`: how long a dead cluster stays on screen (default 10m; tests shorten it) |
//! | `RAYWATCH_BIN` | `raywatch-bench` only: the `raywatch` binary to measure (else the one beside it) |

use std::path::PathBuf;

/// A variable's value when it is set and not empty.
fn non_empty(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// `$RAY_TMPDIR`: where Ray puts its temp dirs instead of /tmp.
pub fn ray_tmpdir() -> Option<PathBuf> {
    non_empty("RAY_TMPDIR").map(PathBuf::from)
}

/// `$RAYWATCH_PROMETHEUS`: the Prometheus binary to prefer.
pub fn prometheus_bin() -> Option<PathBuf> {
    non_empty("RAYWATCH_PROMETHEUS").map(PathBuf::from)
}

/// `$RAYWATCH_GRAFANA`: the Grafana binary to prefer.
pub fn grafana_bin() -> Option<PathBuf> {
    non_empty("RAYWATCH_GRAFANA").map(PathBuf::from)
}

/// `$RAY_PROMETHEUS_NAME`: the datasource name Ray's Dashboard looks for.
pub fn ray_prometheus_name() -> Option<String> {
    non_empty("RAY_PROMETHEUS_NAME").and_then(|v| v.into_string().ok())
}

/// `$XDG_STATE_HOME`, then `$HOME`: for the default home.
pub fn xdg_state_home() -> Option<PathBuf> {
    absolute("XDG_STATE_HOME")
}

/// An XDG base directory: the XDG spec says a relative one is invalid and ignored.
fn absolute(name: &str) -> Option<PathBuf> {
    non_empty(name)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

/// `RAYWATCH_<PROGRAM>_URL` or `_SHA256`: a download's mirror and checksum
/// (`install::release` names the variables).
pub fn download_override(var: &str) -> Option<String> {
    debug_assert!(
        var.starts_with("RAYWATCH_") && (var.ends_with("_URL") || var.ends_with("_SHA256"))
    );
    non_empty(var).map(|v| v.to_string_lossy().into_owned())
}

/// `$RAYWATCH_DOWNLOAD_STALL`: how long a download may go without progress.
pub fn download_stall() -> Option<std::time::Duration> {
    non_empty("RAYWATCH_DOWNLOAD_STALL")
        .and_then(|v| humantime::parse_duration(&v.to_string_lossy()).ok())
}

/// `$XDG_CACHE_HOME`: for downloaded programs.
pub fn xdg_cache_home() -> Option<PathBuf> {
    absolute("XDG_CACHE_HOME")
}

/// `$HOME`.
pub fn home_dir() -> Option<PathBuf> {
    non_empty("HOME").map(PathBuf::from)
}

/// `$RAYWATCH_BIN`: the `raywatch` binary `raywatch-bench` runs.
#[cfg(feature = "bench")]
pub fn raywatch_bin() -> Option<PathBuf> {
    non_empty("RAYWATCH_BIN").map(PathBuf::from)
}

/// `$NO_COLOR`: set and not empty, `top` uses no colours.
pub fn no_color() -> Option<std::ffi::OsString> {
    non_empty("NO_COLOR")
}

/// `$RAYWATCH_TOP_DEAD_FOR`: how long `top` keeps a dead cluster on screen (a duration, e.g. `20s`).
pub fn top_dead_for() -> Option<String> {
    non_empty("RAYWATCH_TOP_DEAD_FOR").and_then(|v| v.into_string().ok())
}

/// The name of the log filter variable (read by tracing-subscriber).
pub const LOG_FILTER: &str = "RAYWATCH_LOG";
