//! How the remote writes fare, from Prometheus' own metrics and log: samples sent, failed, the last error.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::StackConfig;
use serde::{Deserialize, Serialize};

/// Prometheus' `remote_name` of the `i`-th remote write (`raywatch-rw-N`): in
/// prometheus.yml, its metrics and log lines, and its secret files' names.
pub fn remote_name(i: usize) -> String {
    format!("raywatch-rw-{i}")
}

/// How one remote write fares (in `status`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RemoteWriteStatus {
    pub url: String,
    /// Prometheus' `remote_name` for it (`raywatch-rw-N`).
    pub name: String,
    pub samples_sent: f64,
    pub samples_failed: f64,
    pub samples_retried: f64,
    /// The last error Prometheus logged for it (e.g. "server returned HTTP
    /// status 401 Unauthorized"), when the last attempts failed.
    pub last_error: Option<String>,
}

/// The value of every `name{…remote_name="…"…}` sample in Prometheus' own
/// exposition text, by remote name.
fn by_remote(text: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some(labels) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = labels.rsplit_once("} ") else {
            continue;
        };
        let Some(remote) = label(labels, "remote_name") else {
            continue;
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            *out.entry(remote).or_default() += v;
        }
    }
    out
}

/// A label's value in `a="x",b="y"`.
fn label(labels: &str, key: &str) -> Option<String> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let len = labels[start..].find('"')?;
    Some(labels[start..start + len].to_string())
}

/// The last error Prometheus logged for remote `name`, if its last log line
/// about it is an error (a later success clears it).
pub fn last_error(log_tail: &str, name: &str) -> Option<String> {
    let needle = format!("remote_name={name}");
    let line = log_tail.lines().rev().find(|l| {
        // 2.x logs `level=info`, 3.x (slog) `level=INFO`.
        l.contains(&needle) && (l.contains("err=") || l.to_ascii_lowercase().contains("level=info"))
    })?;
    if !line.contains("err=") {
        return None;
    }
    let err = line.split("err=").nth(1)?;
    let err = err
        .strip_prefix('"')
        .map_or(err, |e| e.split('"').next().unwrap_or(e));
    Some(err.chars().take(300).collect())
}

/// The status of every configured remote write.
pub fn status(cfg: &StackConfig, own_metrics: &str, log: &Path) -> Vec<RemoteWriteStatus> {
    let tail = crate::logfile::tail_text(log, 64 << 10);
    let sent = by_remote(own_metrics, "prometheus_remote_storage_samples_total");
    let failed = by_remote(
        own_metrics,
        "prometheus_remote_storage_samples_failed_total",
    );
    let retried = by_remote(
        own_metrics,
        "prometheus_remote_storage_samples_retried_total",
    );
    cfg.remote_write
        .iter()
        .enumerate()
        .map(|(i, rw)| {
            let name = remote_name(i);
            RemoteWriteStatus {
                url: redact(&rw.url),
                samples_sent: sent.get(&name).copied().unwrap_or(0.0),
                samples_failed: failed.get(&name).copied().unwrap_or(0.0),
                samples_retried: retried.get(&name).copied().unwrap_or(0.0),
                last_error: last_error(&tail, &name),
                name,
            }
        })
        .collect()
}

/// A URL without any `user:password@` (which raywatch refuses at `up` anyway).
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) if !host.contains('/') || rest.find('@') < rest.find('/') => {
                format!("{scheme}://[redacted]@{host}")
            }
            _ => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prometheus_own_metrics_and_log() {
        let text = "# HELP x\nprometheus_remote_storage_samples_total{remote_name=\"raywatch-rw-0\",url=\"http://a\"} 120\n\
                    prometheus_remote_storage_samples_failed_total{remote_name=\"raywatch-rw-0\",url=\"http://a\"} 3\n";
        assert_eq!(
            by_remote(text, "prometheus_remote_storage_samples_total")["raywatch-rw-0"],
            120.0
        );
        assert_eq!(
            by_remote(text, "prometheus_remote_storage_samples_failed_total")["raywatch-rw-0"],
            3.0
        );
        let log = "ts=1 level=error component=remote remote_name=raywatch-rw-0 url=http://a msg=\"non-recoverable error\" count=10 exemplarCount=0 err=\"server returned HTTP status 401 Unauthorized: bad\"\n";
        assert_eq!(
            last_error(log, "raywatch-rw-0").as_deref(),
            Some("server returned HTTP status 401 Unauthorized: bad")
        );
        assert_eq!(last_error(log, "raywatch-rw-1"), None);
        // Prometheus 3.x: slog's upper-case levels; a later success clears the error.
        let v3 = "time=2026-12-07T07:00:00Z level=ERROR source=queue_manager.go:1 msg=\"non-recoverable error\" component=remote remote_name=raywatch-rw-0 url=http://a err=\"server returned HTTP status 401 Unauthorized\"\n";
        assert_eq!(
            last_error(v3, "raywatch-rw-0").as_deref(),
            Some("server returned HTTP status 401 Unauthorized")
        );
        let recovered = format!(
            "{v3}time=2026-12-07T07:01:00Z level=INFO source=queue_manager.go:2 msg=\"Done replaying WAL\" component=remote remote_name=raywatch-rw-0 url=http://a\n"
        );
        assert_eq!(last_error(&recovered, "raywatch-rw-0"), None);
        assert_eq!(redact("https://u:p@h:1/x"), "https://[redacted]@h:1/x");
        assert_eq!(redact("http://h:1/api/v1/write"), "http://h:1/api/v1/write");
    }
}
