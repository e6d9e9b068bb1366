//! Alertmanager in the stack: found, configured from typed structs, and how it is run.
//!
//! It runs only when there is somewhere to deliver to (`up --notify-webhook`):
//! on loopback, on its own free port, with basic auth of its own (the user
//! `raywatch`, a password of its own, never Prometheus': Prometheus' notifier
//! sends it without checking who holds the port),
//! its gossip port for high availability off (it would listen on every
//! address), its data in `<home>/alertmanager/`. Prometheus sends it alerts
//! with that credential. Alerts are grouped per cluster and alert, resolved
//! notifications are sent, critical ones repeat every hour.

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use serde::{Deserialize, Serialize};

use crate::config::StackConfig;
use crate::home::Home;

/// The receiver every notification goes to (each webhook is one of its configs).
pub const RECEIVER: &str = "raywatch";

/// The Alertmanager to run: `--alertmanager-bin`, `RAYWATCH_ALERTMANAGER`, then
/// `alertmanager` or Debian's `prometheus-alertmanager` on PATH.
pub fn locate(flag: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(p) = flag {
        ensure!(
            p.is_file(),
            "--alertmanager-bin names {}, which is not a file",
            p.display()
        );
        return Ok(Some(p.to_path_buf()));
    }
    if let Some(p) = std::env::var_os("RAYWATCH_ALERTMANAGER").map(PathBuf::from) {
        ensure!(
            p.is_file(),
            "RAYWATCH_ALERTMANAGER names {}, which is not a file",
            p.display()
        );
        return Ok(Some(p));
    }
    Ok(which::which("alertmanager")
        .or_else(|_| which::which("prometheus-alertmanager"))
        .ok())
}

/// Whether the stack runs Alertmanager under `cfg` (see [`StackConfig::runs_alertmanager`]).
pub fn runs(cfg: &StackConfig) -> bool {
    cfg.runs_alertmanager()
}

/// Its command line (`down` and a restarted daemon know it by `--config.file`).
pub fn args(home: &Home, cfg: &StackConfig) -> Vec<String> {
    vec![
        format!("--config.file={}", home.alertmanager_yml().display()),
        format!(
            "--storage.path={}",
            home.alertmanager_dir().join("data").display()
        ),
        format!("--web.listen-address=127.0.0.1:{}", cfg.alertmanager_port),
        format!(
            "--web.config.file={}",
            home.alertmanager_web_yml().display()
        ),
        // No gossip: a cluster of one needs none, and its port listens everywhere.
        "--cluster.listen-address=".to_string(),
    ]
}

/// alertmanager.yml.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct AlertmanagerYml {
    pub route: Route,
    pub receivers: Vec<Receiver>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Route {
    pub receiver: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_wait: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_interval: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matchers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Receiver {
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook_configs: Vec<WebhookConfig>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct WebhookConfig {
    pub url: String,
    pub send_resolved: bool,
}

/// The stack's alertmanager.yml: one receiver with every webhook, alerts
/// grouped by cluster and alert, critical ones repeated every hour.
pub fn config(cfg: &StackConfig) -> AlertmanagerYml {
    AlertmanagerYml {
        route: Route {
            receiver: RECEIVER.into(),
            group_by: ["alertname", "ray_host", "ray_io_cluster"]
                .map(String::from)
                .to_vec(),
            group_wait: Some("10s".into()),
            group_interval: Some("1m".into()),
            repeat_interval: Some("4h".into()),
            matchers: Vec::new(),
            routes: vec![Route {
                receiver: RECEIVER.into(),
                group_by: Vec::new(),
                group_wait: None,
                group_interval: None,
                repeat_interval: Some("1h".into()),
                matchers: vec![r#"severity="critical""#.into()],
                routes: Vec::new(),
            }],
        },
        receivers: vec![Receiver {
            name: RECEIVER.into(),
            webhook_configs: cfg
                .notify_webhooks
                .iter()
                .map(|url| WebhookConfig {
                    url: url.clone(),
                    send_resolved: true,
                })
                .collect(),
        }],
    }
}

/// A `--notify-webhook` URL: http or https, with a host, no credentials in it
/// (they would land in a file and a command line).
pub fn check_webhook(url: &str) -> Result<String> {
    // Shown without a user or password it carries.
    let shown = crate::escape::text(&crate::remote_write::redact(url)).into_owned();
    let u = reqwest::Url::parse(url)
        .map_err(|e| anyhow::anyhow!("--notify-webhook {shown}: not a URL ({e})"))?;
    ensure!(
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some(),
        "--notify-webhook {shown}: give an http:// or https:// URL with a host"
    );
    ensure!(
        u.username().is_empty() && u.password().is_none(),
        "--notify-webhook {shown}: a URL with a user or password would be written to alertmanager.yml; use a receiver that takes no credential in its URL"
    );
    Ok(url.to_string())
}

/// A fresh password for Alertmanager (at every start of the daemon), so one
/// that leaked stops working.
pub fn rotate_password(home: &Home) -> Result<()> {
    let _ = fs_err::remove_file(home.alertmanager_password());
    crate::prometheus::ensure_secret(&home.alertmanager_password()).map(|_| ())
}

/// Writes alertmanager.yml and its web config (basic auth with Alertmanager's
/// own password) when the stack runs Alertmanager; checked with `amtool
/// check-config` when there is one.
pub fn write_files(home: &Home, cfg: &StackConfig) -> Result<()> {
    if !runs(cfg) {
        return Ok(());
    }
    fs_err::create_dir_all(home.alertmanager_dir())?;
    let password = crate::prometheus::ensure_secret(&home.alertmanager_password())?;
    let current = fs_err::read_to_string(home.alertmanager_web_yml())
        .ok()
        .and_then(|t| serde_yaml_ng::from_str::<crate::prometheus::schema::WebYml>(&t).ok())
        .and_then(|w| w.basic_auth_users.get(crate::prometheus::USER).cloned())
        .is_some_and(|hash| bcrypt::verify(&password, &hash).unwrap_or(false));
    if !current {
        let web = crate::prometheus::schema::WebYml {
            basic_auth_users: [(
                crate::prometheus::USER.to_string(),
                bcrypt::hash(&password, 10)?,
            )]
            .into(),
        };
        crate::atomic::write(
            &home.alertmanager_web_yml(),
            serde_yaml_ng::to_string(&web)?.as_bytes(),
            0o600,
        )?;
    }
    let yml = serde_yaml_ng::to_string(&config(cfg))?;
    let staged = crate::atomic::stage(
        &home.alertmanager_dir(),
        "alertmanager.yml",
        yml.as_bytes(),
        0o600,
    )?;
    let amtool = cfg
        .alertmanager_bin
        .as_deref()
        .map(|b| b.with_file_name("amtool"))
        .filter(|p| p.is_file())
        .or_else(|| which::which("amtool").ok());
    if let Some(amtool) = amtool
        && let Ok(out) = std::process::Command::new(&amtool)
            .arg("check-config")
            .arg(staged.path())
            .output()
    {
        ensure!(
            out.status.success(),
            "the new {} failed `amtool check-config`, so the previous file is kept: {}",
            home.alertmanager_yml().display(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    staged.commit(&home.alertmanager_yml())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_must_be_http_urls_without_credentials() {
        assert!(check_webhook("https://hooks.example/t/abc").is_ok());
        assert!(check_webhook("http://127.0.0.1:9000/x").is_ok());
        for bad in ["ftp://x/y", "not a url"] {
            let e = check_webhook(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--notify-webhook {bad}")), "{e}");
        }
        let e = check_webhook("https://user:s3cret@hooks.example/")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("with a user or password") && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn grouped_by_cluster_resolved_sent_critical_repeated_hourly() {
        let cfg = StackConfig {
            notify_webhooks: vec!["http://127.0.0.1:9/a".into(), "https://h/b".into()],
            ..StackConfig::default()
        };
        let c = config(&cfg);
        assert!(c.route.group_by.contains(&"ray_io_cluster".to_string()));
        assert_eq!(c.route.routes[0].repeat_interval.as_deref(), Some("1h"));
        assert_eq!(c.receivers[0].webhook_configs.len(), 2);
        assert!(
            c.receivers[0]
                .webhook_configs
                .iter()
                .all(|w| w.send_resolved)
        );
        let home = Home::resolve(Some("/h".into())).unwrap();
        let args = args(&home, &cfg);
        assert!(
            args.contains(&"--cluster.listen-address=".to_string()),
            "{args:?}"
        );
        assert!(
            args.iter()
                .any(|a| a.starts_with("--web.listen-address=127.0.0.1:")),
            "{args:?}"
        );
    }
}
