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

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

use crate::config::{SecretCopy, StackConfig};
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slack_configs: Vec<SlackConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub email_configs: Vec<EmailConfig>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct WebhookConfig {
    pub url: String,
    pub send_resolved: bool,
}

/// A Slack incoming webhook; its URL only in a file (`api_url_file`, read by
/// Alertmanager at each notification).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct SlackConfig {
    pub api_url_file: String,
    pub send_resolved: bool,
    pub title: String,
    pub text: String,
}

/// One e-mail address; the password only in a file (`auth_password_file`).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct EmailConfig {
    pub to: String,
    pub from: String,
    pub smarthost: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_password_file: Option<String>,
    pub require_tls: bool,
    pub send_resolved: bool,
    pub headers: std::collections::BTreeMap<String, String>,
    pub text: String,
}

/// The name of the test alert `raywatch notify test` sends.
pub const TEST_ALERT: &str = "RaywatchNotifyTest";

/// What a notification says, as Alertmanager's templates: the alert, its
/// cluster, user and host, the summary and what to do.
const TITLE: &str = "[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }} \
{{ with .CommonLabels.ray_io_cluster }}on {{ . }}{{ end }}";
const TEXT: &str = "{{ range .Alerts }}*{{ .Labels.alertname }}* \
({{ .Labels.severity }}): cluster {{ .Labels.ray_io_cluster }}, user {{ .Labels.ray_user }}, \
host {{ .Labels.ray_host }}\n{{ .Annotations.summary }}\n{{ .Annotations.description }}\n{{ end }}";

/// The stack's alertmanager.yml: one receiver with every webhook, alerts
/// grouped by cluster and alert, critical ones repeated every hour.
/// `webhook_urls` are the URLs of `--notify-webhook-file` (read from their
/// copies by [`write_files`]): Alertmanager 0.25 has no `url_file`.
pub fn config(cfg: &StackConfig, webhook_urls: &[String]) -> AlertmanagerYml {
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
            routes: vec![
                // `raywatch notify test`: at once, each test its own group.
                Route {
                    receiver: RECEIVER.into(),
                    group_by: vec!["...".into()],
                    group_wait: Some("0s".into()),
                    group_interval: None,
                    repeat_interval: None,
                    matchers: vec![format!("alertname=\"{TEST_ALERT}\"")],
                    routes: Vec::new(),
                },
                Route {
                    receiver: RECEIVER.into(),
                    group_by: Vec::new(),
                    group_wait: None,
                    group_interval: None,
                    repeat_interval: Some("1h".into()),
                    matchers: vec![r#"severity="critical""#.into()],
                    routes: Vec::new(),
                },
            ],
        },
        receivers: vec![Receiver {
            name: RECEIVER.into(),
            webhook_configs: cfg
                .notify_webhooks
                .iter()
                .cloned()
                .chain(webhook_urls.iter().cloned())
                .map(|url| WebhookConfig {
                    url,
                    send_resolved: true,
                })
                .collect(),
            slack_configs: cfg
                .notify_slack
                .iter()
                .map(|s| SlackConfig {
                    api_url_file: s.file.to_string_lossy().into_owned(),
                    send_resolved: true,
                    title: TITLE.into(),
                    text: TEXT.into(),
                })
                .collect(),
            email_configs: email_configs(cfg),
        }],
    }
}

/// One e-mail config per `--notify-email` address, through `cfg.smtp`.
fn email_configs(cfg: &StackConfig) -> Vec<EmailConfig> {
    let Some(smtp) = &cfg.smtp else {
        return Vec::new();
    };
    cfg.notify_email
        .iter()
        .map(|to| EmailConfig {
            to: to.clone(),
            from: smtp.from.clone(),
            smarthost: smtp.smarthost.clone(),
            auth_username: smtp.auth_username.clone(),
            auth_password_file: smtp
                .auth_password
                .as_ref()
                .map(|c| c.file.to_string_lossy().into_owned()),
            require_tls: smtp.require_tls,
            send_resolved: true,
            headers: [("Subject".to_string(), TITLE.to_string())].into(),
            text: TEXT.into(),
        })
        .collect()
}

/// The receivers as `notify test` names them, in Alertmanager's order
/// (`webhook[i]`, `slack[i]`, `email[i]`), each with what it is (never a secret).
pub fn integrations(cfg: &StackConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let webhooks = cfg
        .notify_webhooks
        .iter()
        .map(|u| format!("webhook {}", crate::remote_write::redact(u)))
        .chain(
            cfg.notify_webhook_files
                .iter()
                .map(|c| format!("webhook from {}", c.from.display())),
        );
    for (i, what) in webhooks.enumerate() {
        out.push((format!("webhook[{i}]"), what));
    }
    for (i, c) in cfg.notify_slack.iter().enumerate() {
        out.push((
            format!("slack[{i}]"),
            format!("Slack webhook from {}", c.from.display()),
        ));
    }
    if let Some(smtp) = &cfg.smtp {
        for (i, to) in cfg.notify_email.iter().enumerate() {
            out.push((
                format!("email[{i}]"),
                format!("e-mail to {to} via {}", smtp.smarthost),
            ));
        }
    }
    out
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

/// A secret URL read from `file` (`--notify-slack-webhook-file`,
/// `--notify-webhook-file`): http or https with a host. Errors name the file,
/// never the URL (it is the secret).
pub fn check_secret_url(flag: &str, file: &Path, url: &str) -> Result<()> {
    let shown = crate::escape::path(file);
    let u = reqwest::Url::parse(url.trim()).map_err(|e| {
        anyhow::anyhow!("{flag} {shown}: its content is not a URL ({e}); the file holds the webhook's URL alone, on one line")
    })?;
    ensure!(
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some() && !url.contains('\n'),
        "{flag} {shown}: its content is not an http:// or https:// URL with a host (the file holds the webhook's URL alone, on one line)"
    );
    Ok(())
}

/// The secret in the user's `file` for `flag`, read with the checks of
/// [`crate::prometheus::client::read_credential`] (no link, FIFO, device, other
/// user's or huge file), not empty.
pub fn read_secret(flag: &str, file: &Path) -> Result<String> {
    let text = crate::prometheus::client::read_credential(flag, file)?;
    ensure!(
        !text.trim().is_empty(),
        "{flag} {} is empty",
        crate::escape::path(file)
    );
    Ok(text.trim().to_string())
}

/// The prefixes of the copies [`store_secret`] names (`<kind>-<digest>`).
const COPY_KINDS: [&str; 3] = ["slack", "webhook", "smtp-password"];

/// Stores `secret` (read from the user's `from`) as
/// `<home>/secrets/<kind>-<digest>`, 0600. Named by its content, a copy never
/// changes under the settings of a running stack when `up` fails after it is
/// written; [`prune_copies`] removes those no setting names.
pub fn store_secret(home: &Home, from: &Path, kind: &str, secret: &str) -> Result<SecretCopy> {
    use sha2::{Digest, Sha256};
    debug_assert!(COPY_KINDS.contains(&kind));
    let digest: String = Sha256::digest(secret.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect();
    let file = home.secrets_dir().join(format!("{kind}-{digest}"));
    crate::atomic::write(&file, secret.as_bytes(), 0o600)?;
    Ok(SecretCopy {
        from: from.to_path_buf(),
        file,
        digest,
    })
}

/// Removes the copies of secrets `cfg` no longer names (a receiver replaced or
/// removed), once the settings that drop them are saved.
pub fn prune_copies(home: &Home, cfg: &StackConfig) {
    // By name (each names its content): the home may be spelled another way
    // (through a link) than when the copies were made.
    let kept: Vec<&std::ffi::OsStr> = cfg
        .notify_slack
        .iter()
        .chain(&cfg.notify_webhook_files)
        .chain(cfg.smtp.iter().filter_map(|s| s.auth_password.as_ref()))
        .filter_map(|c| c.file.file_name())
        .collect();
    let Ok(dir) = fs_err::read_dir(home.secrets_dir()) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = COPY_KINDS.iter().any(|k| {
            name.strip_prefix(k)
                .and_then(|r| r.strip_prefix('-'))
                .is_some_and(|d| d.len() == 16 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if ours && !kept.contains(&entry.file_name().as_os_str()) {
            let _ = fs_err::remove_file(entry.path());
        }
    }
}

/// A stored copy read back (the daemon writes the URLs of
/// `--notify-webhook-file` into alertmanager.yml).
fn read_copy(c: &SecretCopy) -> Result<String> {
    read_secret("the copy of --notify-webhook-file", &c.file).with_context(|| {
        format!(
            "give the webhook again: raywatch up --notify-webhook-file {}",
            crate::escape::path(&c.from)
        )
    })
}

/// Refuses a password sent in the clear to a loopback port any local user could
/// hold (1024 and up) while the relay there is down: without TLS (allowed only to
/// loopback) Alertmanager would hand them the password. A port below 1024 is
/// root's to bind.
pub fn check_auth_over(smarthost: &str, require_tls: bool) -> Result<()> {
    let port = smarthost
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(0);
    ensure!(
        require_tls || port < 1024,
        "--smtp-auth-file with --smtp {}: the password would go unencrypted to a loopback port that any local user can take while your relay there is down; use a relay on a port below 1024, or a mail server that speaks TLS",
        crate::escape::text(smarthost)
    );
    Ok(())
}

/// The smarthost of `--smtp HOST:PORT`, and whether STARTTLS is required:
/// always, except to a loopback host (a local relay or sink).
pub fn check_smarthost(value: &str) -> Result<(String, bool)> {
    let bad = || {
        anyhow::anyhow!(
            "--smtp {}: give HOST:PORT (e.g. smtp.example.org:587, or 127.0.0.1:25 for a local relay)",
            crate::escape::text(value)
        )
    };
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ensure!(
        !host.is_empty()
            && port.parse::<u16>().is_ok_and(|p| p != 0)
            && !host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@'),
        bad()
    );
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    Ok((value.to_string(), !loopback))
}

/// An e-mail address of `--notify-email` or `--smtp-from`: `local@domain`, nothing else.
pub fn check_address(flag: &str, addr: &str) -> Result<String> {
    let ok = addr.split_once('@').is_some_and(|(l, d)| {
        !l.is_empty()
            && !d.is_empty()
            && !d.contains('@')
            && addr
                .chars()
                .all(|c| c.is_ascii_graphic() && !"<>,;\"()[]\\".contains(c))
    });
    ensure!(
        ok,
        "{flag} {}: give one e-mail address such as alice@example.org",
        crate::escape::text(addr)
    );
    Ok(addr.to_string())
}

/// A fresh credential before every start of Alertmanager: a new password and
/// the web config holding its hash. Prometheus' notifier sends the password to
/// whoever holds Alertmanager's port (it checks no listener); one that another
/// user took while Alertmanager was down (a crash, a kill) learns a password
/// that no longer opens the Alertmanager started after them.
pub fn fresh_credential(home: &Home) -> Result<()> {
    fs_err::create_dir_all(home.alertmanager_dir())?;
    let password = crate::prometheus::random_secret()?;
    // Hashed first: the two files then change a moment apart, so a
    // notification caught between them (refused) is as unlikely as can be.
    let hash = bcrypt::hash(&password, 10)?;
    write_web_hash(home, hash)?;
    crate::atomic::write(
        &home.alertmanager_password(),
        format!("{password}\n").as_bytes(),
        0o600,
    )
}

/// Gives each restart of Alertmanager a fresh credential once it holds its port:
/// Prometheus' notifier sends the credential to whoever holds the port, so
/// someone who held it between a restart and Alertmanager's bind (the credential
/// was rotated at the start) may know it; after this rotation they know nothing
/// that opens it. The first start needs none (the credential is new and nothing
/// was sent yet; a start that could not bind makes the next one a restart), and
/// so a client that read the credential just after `up` is not refused. Runs
/// while the supervision's status lives.
pub async fn guard_credential(
    home: Home,
    port: u16,
    status: std::sync::Weak<std::sync::Mutex<crate::supervisor::ChildStatus>>,
) {
    let mut done_for = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    loop {
        tick.tick().await;
        let Some(status) = status.upgrade() else {
            return;
        };
        let (pid, restarts) = {
            let s = status.lock().unwrap();
            (s.pid, s.restarts)
        };
        drop(status);
        let Some(pid) = pid.filter(|p| Some(*p) != done_for) else {
            continue;
        };
        if restarts == 0 {
            done_for = Some(pid);
            continue;
        }
        let home = home.clone();
        let rotated = tokio::task::spawn_blocking(move || {
            crate::prometheus::listener::verify_listener(port, Some(pid), "Alertmanager").is_ok()
                && fresh_credential(&home).is_ok()
        })
        .await
        .unwrap_or(false);
        if rotated {
            done_for = Some(pid);
        }
    }
}

/// Writes Alertmanager's web config (basic auth with its own password) unless it
/// holds the password's hash already.
fn write_web(home: &Home) -> Result<()> {
    let password = crate::prometheus::ensure_secret(&home.alertmanager_password())?;
    let current = fs_err::read_to_string(home.alertmanager_web_yml())
        .ok()
        .and_then(|t| serde_yaml_ng::from_str::<crate::prometheus::schema::WebYml>(&t).ok())
        .and_then(|w| w.basic_auth_users.get(crate::prometheus::USER).cloned())
        .is_some_and(|hash| bcrypt::verify(&password, &hash).unwrap_or(false));
    if current {
        return Ok(());
    }
    write_web_hash(home, bcrypt::hash(&password, 10)?)
}

/// Writes Alertmanager's web config with the bcrypt `hash` of its password.
fn write_web_hash(home: &Home, hash: String) -> Result<()> {
    let web = crate::prometheus::schema::WebYml {
        basic_auth_users: [(crate::prometheus::USER.to_string(), hash)].into(),
    };
    crate::atomic::write(
        &home.alertmanager_web_yml(),
        serde_yaml_ng::to_string(&web)?.as_bytes(),
        0o600,
    )
}

/// Writes alertmanager.yml and its web config (basic auth with Alertmanager's
/// own password) when the stack runs Alertmanager; checked with `amtool
/// check-config` when there is one.
pub fn write_files(home: &Home, cfg: &StackConfig) -> Result<()> {
    if !runs(cfg) {
        return Ok(());
    }
    fs_err::create_dir_all(home.alertmanager_dir())?;
    write_web(home)?;
    let urls = cfg
        .notify_webhook_files
        .iter()
        .map(read_copy)
        .collect::<Result<Vec<_>>>()?;
    let yml = serde_yaml_ng::to_string(&config(cfg, &urls))?;
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
    use crate::config::Smtp;

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

    fn copy(from: &str, file: &str) -> SecretCopy {
        SecretCopy {
            from: from.into(),
            file: file.into(),
            digest: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn slack_email_and_token_webhooks_are_rendered_with_their_secrets_in_files() {
        let cfg = StackConfig {
            notify_webhooks: vec!["http://127.0.0.1:9/a".into()],
            notify_webhook_files: vec![copy("/u/hook", "/h/secrets/webhook-0")],
            notify_slack: vec![copy("/u/slack", "/h/secrets/slack-0")],
            notify_email: vec!["a@example.org".into(), "b@example.org".into()],
            smtp: Some(Smtp {
                smarthost: "smtp.example.org:587".into(),
                from: "raywatch@box".into(),
                auth_username: Some("alice".into()),
                auth_password: Some(copy("/u/auth", "/h/secrets/smtp-password")),
                require_tls: true,
            }),
            ..StackConfig::default()
        };
        let c = config(&cfg, &["https://hooks.example/T0KEN".into()]);
        let r = &c.receivers[0];
        let urls: Vec<&str> = r.webhook_configs.iter().map(|w| w.url.as_str()).collect();
        assert_eq!(
            urls,
            ["http://127.0.0.1:9/a", "https://hooks.example/T0KEN"]
        );
        assert_eq!(r.slack_configs.len(), 1);
        let slack = &r.slack_configs[0];
        assert_eq!(slack.api_url_file, "/h/secrets/slack-0");
        assert!(slack.send_resolved);
        for part in [
            ".Labels.ray_io_cluster",
            ".Labels.ray_user",
            ".Labels.ray_host",
            ".Annotations.description",
            ".Labels.alertname",
        ] {
            assert!(
                slack.text.contains(part),
                "{part} missing from {}",
                slack.text
            );
        }
        assert_eq!(r.email_configs.len(), 2);
        let mail = &r.email_configs[1];
        assert_eq!(mail.to, "b@example.org");
        assert_eq!(mail.smarthost, "smtp.example.org:587");
        assert_eq!(mail.auth_username.as_deref(), Some("alice"));
        assert_eq!(
            mail.auth_password_file.as_deref(),
            Some("/h/secrets/smtp-password")
        );
        assert!(mail.require_tls && mail.send_resolved);
        assert!(mail.headers["Subject"].contains(".CommonLabels.alertname"));
        // The test alert has a route of its own that sends at once.
        let test = &c.route.routes[0];
        assert_eq!(test.group_wait.as_deref(), Some("0s"));
        assert_eq!(test.matchers, [format!("alertname=\"{TEST_ALERT}\"")]);
        let yml = serde_yaml_ng::to_string(&c).unwrap();
        assert!(!yml.contains("auth_password:"), "{yml}");
        // notify test's names follow Alertmanager's order within each kind.
        let names: Vec<String> = integrations(&cfg).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "webhook[0]",
                "webhook[1]",
                "slack[0]",
                "email[0]",
                "email[1]"
            ]
        );
        assert!(integrations(&cfg).iter().all(|(_, w)| !w.contains("T0KEN")));
        // Without a mail server, no e-mail config (up refuses that anyway).
        let no_smtp = StackConfig { smtp: None, ..cfg };
        assert!(config(&no_smtp, &[]).receivers[0].email_configs.is_empty());
    }

    #[test]
    fn copies_are_named_by_content_0600_and_pruned_once_no_setting_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(dir.path().join("h"))).unwrap();
        fs_err::create_dir_all(home.secrets_dir()).unwrap();
        fs_err::write(home.secrets_dir().join("prometheus-password"), "p").unwrap();
        let a = store_secret(&home, Path::new("/u/a"), "slack", "https://h/a").unwrap();
        let b = store_secret(&home, Path::new("/u/b"), "slack", "https://h/b").unwrap();
        assert_ne!(a.file, b.file);
        assert_eq!(a.file.file_name().unwrap().len(), "slack-".len() + 16);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs_err::metadata(&a.file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let cfg = StackConfig {
            notify_slack: vec![b.clone()],
            ..StackConfig::default()
        };
        prune_copies(&home, &cfg);
        assert!(!a.file.exists() && b.file.exists());
        assert!(home.secrets_dir().join("prometheus-password").exists());
    }

    #[test]
    fn smarthosts_need_tls_unless_on_loopback() {
        assert_eq!(
            check_smarthost("smtp.example.org:587").unwrap(),
            ("smtp.example.org:587".into(), true)
        );
        assert!(!check_smarthost("127.0.0.1:2525").unwrap().1);
        assert!(!check_smarthost("localhost:25").unwrap().1);
        assert!(!check_smarthost("[::1]:25").unwrap().1);
        assert!(check_smarthost("10.0.0.1:25").unwrap().1);
        // A password goes in the clear only to a port root holds.
        assert!(check_auth_over("127.0.0.1:25", false).is_ok());
        assert!(check_auth_over("smtp.example.org:587", true).is_ok());
        let e = check_auth_over("127.0.0.1:2525", false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("127.0.0.1:2525") && e.contains("below 1024"),
            "{e}"
        );
        for bad in ["smtp.example.org", ":25", "h:0", "h:x", "u@h:25"] {
            let e = check_smarthost(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("--smtp {bad}: give HOST:PORT")),
                "{e}"
            );
        }
        assert!(check_address("--notify-email", "a@b.org").is_ok());
        for bad in ["a", "@b", "a@", "a@b@c", "a b@c", "<a@b>", "a@b,c@d"] {
            assert!(check_address("--notify-email", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_secret_url_is_checked_without_being_shown() {
        let f = Path::new("/u/slack");
        assert!(
            check_secret_url(
                "--notify-slack-webhook-file",
                f,
                "https://hooks.slack.com/services/T/B/x"
            )
            .is_ok()
        );
        for bad in [
            "s3cret-not-a-url",
            "ftp://s3cret/x",
            "https://h/a\nhttps://s3cret/b",
        ] {
            let e = check_secret_url("--notify-slack-webhook-file", f, bad)
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("--notify-slack-webhook-file /u/slack: its content is not"),
                "{e}"
            );
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn grouped_by_cluster_resolved_sent_critical_repeated_hourly() {
        let cfg = StackConfig {
            notify_webhooks: vec!["http://127.0.0.1:9/a".into(), "https://h/b".into()],
            ..StackConfig::default()
        };
        let c = config(&cfg, &[]);
        assert!(c.route.group_by.contains(&"ray_io_cluster".to_string()));
        assert_eq!(c.route.routes[1].repeat_interval.as_deref(), Some("1h"));
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
