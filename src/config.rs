//! The stack's settings, chosen at `up` and persisted in `<home>/config.json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// How often a new home's Prometheus scrapes (`up --scrape-interval`).
pub const DEFAULT_SCRAPE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a new home's Prometheus keeps samples (`up --retention`).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// How long a new home waits for a discovery file's rewrite (`up --liveness`).
pub const DEFAULT_LIVENESS: Duration = Duration::from_secs(20);
/// The datasource name Ray's Dashboard expects unless `RAY_PROMETHEUS_NAME` says otherwise.
pub const DEFAULT_PROMETHEUS_NAME: &str = "Prometheus";

/// Everything the daemon needs to run a stack. Written by `up`, read by the
/// daemon, which also writes it when it changes a setting itself (a port it
/// had to move). Its [`Default`] is a new home's settings, the defaults `up --help`
/// names; how a change of each field reaches a running stack is the daemon's
/// settings table (`daemon::settings`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StackConfig {
    /// The Prometheus binary the daemon runs.
    pub prometheus_bin: PathBuf,
    /// Its version (major, minor) when `up` last started the stack: the data folder
    /// was written by it, and an older major may not read it back.
    #[serde(default)]
    pub prometheus_version: Option<(u32, u32)>,
    /// Loopback port Prometheus listens on.
    pub prometheus_port: u16,
    /// Whether the port was chosen by raywatch (and so may be changed on a clash).
    pub prometheus_port_auto: bool,
    /// Scrape (and rule evaluation) interval.
    #[serde(with = "humantime_serde")]
    pub scrape_interval: Duration,
    /// How long Prometheus keeps samples.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Watch `/tmp/ray*` and `$RAY_TMPDIR` in addition to `watch`.
    pub default_roots: bool,
    /// Extra folders to watch as Ray temp-dir roots.
    pub watch: Vec<PathBuf>,
    /// A cluster whose discovery file has not been rewritten for this long is dead.
    #[serde(with = "humantime_serde")]
    pub liveness: Duration,
    /// Owners (uids) of discovery files that are followed besides the stack's own user.
    pub trust_uids: Vec<u32>,
    /// The Grafana binary the daemon runs, when one was found.
    #[serde(default)]
    pub grafana_bin: Option<PathBuf>,
    /// Loopback port of Grafana (reserved even when Grafana is not installed).
    #[serde(default)]
    pub grafana_port: u16,
    /// Let anyone who reaches Grafana's port view dashboards without logging in.
    #[serde(default)]
    pub grafana_anonymous: bool,
    /// Loopback port of the gateway Ray's Dashboard queries (0: choose one).
    #[serde(default)]
    pub gateway_port: u16,
    /// The datasource name Ray's Dashboard expects (`RAY_PROMETHEUS_NAME`).
    #[serde(default = "default_prometheus_name")]
    pub prometheus_name: String,
    /// Central stores every sample is also sent to (`up --remote-write URL`).
    #[serde(default)]
    pub remote_write: Vec<RemoteWrite>,
    /// Prometheus runs as an agent: WAL only, no local queries (needs a remote write).
    #[serde(default)]
    pub agent: bool,
    /// The `ray_host` label every series leaving this host carries (default:
    /// the short host name).
    #[serde(default)]
    pub host_label: Option<String>,
    /// Where `raywatch query` asks when Prometheus is an agent: the central
    /// store's Prometheus-compatible API.
    #[serde(default)]
    pub query_url: Option<String>,
    /// A bearer token file for `query_url`.
    #[serde(default)]
    pub query_bearer_file: Option<PathBuf>,
    /// Serve the http_sd endpoint (`GET /sd`) on this `ADDR:PORT` (off when None).
    #[serde(default)]
    pub sd_listen: Option<String>,
    /// TLS certificate chain (PEM) for the http_sd endpoint.
    #[serde(default)]
    pub sd_tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the http_sd endpoint.
    #[serde(default)]
    pub sd_tls_key: Option<PathBuf>,
    /// Samples one scrape of one target may carry (`up --sample-limit N`);
    /// a target over it is refused whole, the others are unaffected.
    #[serde(default)]
    pub sample_limit: crate::guard::SampleLimit,
    /// Labels removed from every scraped series before it is stored
    /// (`up --drop-label NAME`), checked by [`crate::guard::check_drop_label`].
    #[serde(default)]
    pub drop_labels: Vec<String>,
    /// Do not record `raywatch top`'s per-cluster values (`up --no-top-rules`): saves
    /// Prometheus their evaluation each scrape interval; `top` then asks them live.
    #[serde(default)]
    pub no_top_rules: bool,
    /// Leave out raywatch's built-in alert rules (`up --no-default-alerts`).
    #[serde(default)]
    pub no_default_alerts: bool,
    /// The thresholds of the built-in alert rules (`up --gpu-idle-below` ...).
    #[serde(default)]
    pub alerts: crate::alerts::Thresholds,
    /// The user's own alert rule files (`up --alert-rules FILE`), as read and
    /// checked at `up`: a copy, so that the stack never reads another file later.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_rules: Vec<UserRules>,
    /// The Alertmanager binary, when one was found at `up`.
    #[serde(default)]
    pub alertmanager_bin: Option<PathBuf>,
    /// Loopback port of Alertmanager (reserved even when it does not run).
    #[serde(default)]
    pub alertmanager_port: u16,
    /// Where Alertmanager delivers notifications (`up --notify-webhook URL`);
    /// Alertmanager runs only when there is one.
    #[serde(default)]
    pub notify_webhooks: Vec<String>,
    /// Slack incoming webhooks (`up --notify-slack-webhook-file F`): the copies
    /// of their URLs in `<home>/secrets`, which Alertmanager reads (`api_url_file`).
    #[serde(default)]
    pub notify_slack: Vec<SecretCopy>,
    /// Webhooks whose URL carries a token (`up --notify-webhook-file F`): the
    /// copies in `<home>/secrets`, written into alertmanager.yml (0600).
    #[serde(default)]
    pub notify_webhook_files: Vec<SecretCopy>,
    /// Where e-mail notifications go (`up --notify-email ADDR`), through `smtp`.
    #[serde(default)]
    pub notify_email: Vec<String>,
    /// The mail server for `notify_email` (`up --smtp HOST:PORT`).
    #[serde(default)]
    pub smtp: Option<Smtp>,
}

/// A secret the user gave in a file, copied into `<home>/secrets` (0600) at
/// `up`: the stack never reads the user's file again, and a link or another
/// user's file is refused when copied (by `read_credential` of the Prometheus client).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SecretCopy {
    /// The file the user named (shown; its content never is).
    pub from: PathBuf,
    /// The copy Alertmanager reads.
    pub file: PathBuf,
    /// The first 16 hex digits of the content's SHA-256: a changed secret is a
    /// changed setting, which `up` applies.
    pub digest: String,
}

/// The mail server of `--notify-email` (`up --smtp HOST:PORT`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Smtp {
    /// `HOST:PORT`.
    pub smarthost: String,
    /// The sender (`--smtp-from`, default `raywatch@<hostname>`).
    pub from: String,
    /// The user of `--smtp-auth-file` (its first part, `user:password`).
    #[serde(default)]
    pub auth_username: Option<String>,
    /// The copy of the password.
    #[serde(default)]
    pub auth_password: Option<SecretCopy>,
    /// STARTTLS required: always, except to a loopback smarthost (a local relay).
    pub require_tls: bool,
}

/// One rules file of the user's (`up --alert-rules`): where it came from, and its
/// text as checked by promtool then; Prometheus reads the copy in the stack's home.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRules {
    pub source: PathBuf,
    pub yaml: String,
}

/// One remote-write destination. Credentials come from files only, never from
/// the command line, and are never logged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteWrite {
    pub url: String,
    /// A file holding a bearer token.
    #[serde(default)]
    pub bearer_file: Option<PathBuf>,
    /// A file holding `user:password`.
    #[serde(default)]
    pub basic_auth_file: Option<PathBuf>,
    /// A CA bundle for an https URL.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl Default for StackConfig {
    /// A new home's settings; `up` fills in the binaries and ports it finds.
    fn default() -> StackConfig {
        StackConfig {
            prometheus_bin: PathBuf::new(),
            prometheus_version: None,
            prometheus_port: 0,
            prometheus_port_auto: true,
            scrape_interval: DEFAULT_SCRAPE_INTERVAL,
            retention: DEFAULT_RETENTION,
            default_roots: true,
            watch: Vec::new(),
            liveness: DEFAULT_LIVENESS,
            trust_uids: Vec::new(),
            grafana_bin: None,
            grafana_port: 0,
            grafana_anonymous: false,
            gateway_port: 0,
            prometheus_name: DEFAULT_PROMETHEUS_NAME.into(),
            remote_write: Vec::new(),
            agent: false,
            host_label: None,
            query_url: None,
            query_bearer_file: None,
            sd_listen: None,
            sd_tls_cert: None,
            sd_tls_key: None,
            sample_limit: Default::default(),
            drop_labels: Vec::new(),
            no_top_rules: false,
            no_default_alerts: false,
            alerts: crate::alerts::Thresholds::default(),
            user_rules: Vec::new(),
            alertmanager_bin: None,
            alertmanager_port: 0,
            notify_webhooks: Vec::new(),
            notify_slack: Vec::new(),
            notify_webhook_files: Vec::new(),
            notify_email: Vec::new(),
            smtp: None,
        }
    }
}

impl StackConfig {
    /// Whether the stack runs Alertmanager: a binary, somewhere to deliver to
    /// (`--notify-webhook` and the other receivers), and a Prometheus that
    /// evaluates rules (no agent).
    pub fn runs_alertmanager(&self) -> bool {
        self.alertmanager_bin.is_some() && self.has_receivers() && !self.agent
    }

    /// Whether any notification receiver is configured.
    pub fn has_receivers(&self) -> bool {
        !self.notify_webhooks.is_empty()
            || !self.notify_slack.is_empty()
            || !self.notify_webhook_files.is_empty()
            || !self.notify_email.is_empty()
    }

    /// The `ray_host` label: `--host-label`, else this machine's short host name.
    pub fn ray_host(&self) -> String {
        self.host_label.clone().unwrap_or_else(short_hostname)
    }
}

/// This machine's host name up to the first dot.
pub fn short_hostname() -> String {
    let full = fs_err::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let full = full.trim();
    full.split('.').next().unwrap_or(full).to_string()
}

fn default_prometheus_name() -> String {
    DEFAULT_PROMETHEUS_NAME.into()
}

impl StackConfig {
    pub fn load(path: &Path) -> Result<Option<StackConfig>> {
        match fs_err::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
                format!(
                    "{} is not a valid raywatch config; fix or delete it, then run `raywatch up` again",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        crate::atomic::write(path, &bytes, 0o600)
    }
}

/// Formats a duration the way Prometheus' config wants it (`15s`, `1500ms`, `2h`).
pub fn prometheus_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s != 0 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s != 0 && s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s != 0 && s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// clap value parser for durations such as `10s`, `1m`, `500ms`, `15d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); use e.g. 10s, 1m, 500ms"))?;
    if d < Duration::from_millis(100) {
        return Err(format!("{s:?} is too short; use at least 100ms"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_home_scrapes_every_10s_keeps_30_days_and_watches_the_default_roots() {
        let c = StackConfig::default();
        assert_eq!(c.scrape_interval, Duration::from_secs(10));
        assert_eq!(c.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.liveness, Duration::from_secs(20));
        assert!(c.default_roots && c.prometheus_port_auto && !c.agent);
        assert_eq!(c.prometheus_name, "Prometheus");
        assert_eq!(
            humantime::format_duration(c.retention).to_string(),
            "30days",
            "`up --help` shows it so"
        );
    }

    #[test]
    fn prometheus_durations() {
        assert_eq!(prometheus_duration(Duration::from_secs(10)), "10s");
        assert_eq!(prometheus_duration(Duration::from_secs(120)), "2m");
        assert_eq!(prometheus_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(prometheus_duration(Duration::from_secs(15 * 86400)), "15d");
        assert_eq!(prometheus_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn duration_flag_rejects_nonsense() {
        assert!(parse_duration("10s").is_ok());
        let err = parse_duration("ten").unwrap_err();
        assert!(err.contains("\"ten\""), "{err}");
        assert!(parse_duration("1ms").is_err());
    }
}
