//! The live settings: how a change of each setting reaches a running stack (one
//! table, [`SETTINGS`], read by [`plan`]), and their one writer ([`SettingsWriter`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::StackConfig;
use crate::home::Home;

/// What a changed setting takes to apply on a running stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Only a fresh start applies it (`raywatch down`, then `up`): a change is refused.
    FreshStart,
    /// The daemon applies it itself, at once (it follows the live settings).
    Daemon,
    /// Prometheus rereads its files (SIGHUP).
    ReloadPrometheus,
    /// Prometheus restarts: the setting is one of its command-line flags.
    RestartPrometheus,
    /// Grafana restarts to read its rewritten files.
    RestartGrafana,
    /// Alertmanager rereads alertmanager.yml (SIGHUP): its receivers. Starting
    /// or stopping Alertmanager itself (the first receiver, or none left) takes
    /// a fresh start ([`plan`]).
    ReloadAlertmanager,
    /// Nothing running uses it (the CLI reads it, or it is only recorded).
    Nothing,
}

use Effect::*;

/// One field of [`StackConfig`] and how a change of it applies.
pub struct Setting {
    /// The field's name.
    pub field: &'static str,
    pub effects: &'static [Effect],
    /// Whether the field differs between two configs.
    pub differs: fn(&StackConfig, &StackConfig) -> bool,
    /// How `up` names the change in its "applied:" line, and the value it shows
    /// (None: a change is not listed).
    pub shown: Option<(&'static str, Show)>,
}

/// A setting's value as `up` shows it.
type Show = fn(&StackConfig) -> String;

fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A field compared as it is.
macro_rules! field {
    ($f:ident) => {
        |a: &StackConfig, b: &StackConfig| a.$f != b.$f
    };
}

/// Every field of [`StackConfig`], in the order `up` lists the changes.
pub const SETTINGS: &[Setting] = &[
    Setting {
        field: "scrape_interval",
        effects: &[ReloadPrometheus, RestartGrafana],
        differs: field!(scrape_interval),
        shown: Some(("scrape interval", |c| duration(c.scrape_interval))),
    },
    Setting {
        field: "retention",
        effects: &[RestartPrometheus, Daemon],
        differs: field!(retention),
        shown: Some(("retention", |c| duration(c.retention))),
    },
    Setting {
        field: "liveness",
        effects: &[Daemon],
        differs: field!(liveness),
        shown: Some(("liveness", |c| duration(c.liveness))),
    },
    Setting {
        field: "default_roots",
        effects: &[Daemon],
        differs: field!(default_roots),
        shown: Some(("default roots", |c| c.default_roots.to_string())),
    },
    Setting {
        field: "watch",
        effects: &[Daemon],
        differs: field!(watch),
        shown: Some(("watch", |c| format!("{:?}", c.watch))),
    },
    Setting {
        field: "trust_uids",
        effects: &[Daemon],
        differs: field!(trust_uids),
        shown: Some(("trusted uids", |c| format!("{:?}", c.trust_uids))),
    },
    Setting {
        field: "grafana_anonymous",
        effects: &[RestartGrafana],
        differs: field!(grafana_anonymous),
        shown: Some(("grafana anonymous", |c| c.grafana_anonymous.to_string())),
    },
    Setting {
        field: "remote_write",
        effects: &[ReloadPrometheus],
        // Credentials files count as a change; only the (redacted) URLs are shown.
        differs: field!(remote_write),
        shown: Some(("remote write", |c| {
            let urls: Vec<String> = c
                .remote_write
                .iter()
                .map(|r| crate::remote_write::redact(&r.url))
                .collect();
            format!("{urls:?}")
        })),
    },
    Setting {
        field: "agent",
        effects: &[RestartPrometheus],
        differs: field!(agent),
        shown: Some(("agent", |c| c.agent.to_string())),
    },
    Setting {
        field: "host_label",
        // Compared as the label it gives: naming the host name itself changes nothing.
        effects: &[ReloadPrometheus, Daemon],
        differs: |a, b| a.ray_host() != b.ray_host(),
        shown: Some(("ray_host", |c| c.ray_host())),
    },
    Setting {
        field: "query_url",
        effects: &[Nothing],
        differs: field!(query_url),
        shown: Some(("query url", |c| format!("{:?}", c.query_url))),
    },
    Setting {
        field: "sample_limit",
        effects: &[ReloadPrometheus],
        differs: field!(sample_limit),
        shown: Some(("sample limit", |c| c.sample_limit.to_string())),
    },
    Setting {
        field: "drop_labels",
        effects: &[ReloadPrometheus],
        differs: field!(drop_labels),
        shown: Some(("dropped labels", |c| format!("{:?}", c.drop_labels))),
    },
    Setting {
        field: "no_top_rules",
        effects: &[ReloadPrometheus],
        differs: field!(no_top_rules),
        shown: Some(("top's recording rules", |c| (!c.no_top_rules).to_string())),
    },
    Setting {
        field: "no_default_alerts",
        effects: &[ReloadPrometheus],
        differs: field!(no_default_alerts),
        shown: Some(("built-in alert rules", |c| {
            (!c.no_default_alerts).to_string()
        })),
    },
    Setting {
        field: "alerts",
        effects: &[ReloadPrometheus],
        differs: field!(alerts),
        shown: Some(("alert thresholds", |c| {
            let t = &c.alerts;
            format!(
                "GPUs idle below {} % for {}",
                t.gpu_idle_percent,
                humantime::format_duration(t.gpu_idle_for)
            )
        })),
    },
    Setting {
        field: "user_rules",
        effects: &[ReloadPrometheus],
        differs: field!(user_rules),
        shown: Some(("your rules files", |c| {
            let files: Vec<_> = c.user_rules.iter().map(|r| r.source.display()).collect();
            format!("{files:?}")
        })),
    },
    Setting {
        field: "alertmanager_bin",
        effects: &[FreshStart],
        differs: field!(alertmanager_bin),
        shown: None,
    },
    Setting {
        field: "alertmanager_port",
        effects: &[FreshStart],
        differs: field!(alertmanager_port),
        shown: None,
    },
    Setting {
        field: "notify_webhooks",
        effects: &[ReloadAlertmanager],
        differs: field!(notify_webhooks),
        shown: None,
    },
    Setting {
        field: "notify_slack",
        effects: &[ReloadAlertmanager],
        differs: field!(notify_slack),
        shown: None,
    },
    Setting {
        field: "notify_webhook_files",
        effects: &[ReloadAlertmanager],
        differs: field!(notify_webhook_files),
        shown: None,
    },
    Setting {
        field: "notify_email",
        effects: &[ReloadAlertmanager],
        differs: field!(notify_email),
        shown: None,
    },
    Setting {
        field: "smtp",
        effects: &[ReloadAlertmanager],
        differs: field!(smtp),
        shown: None,
    },
    Setting {
        field: "query_bearer_file",
        effects: &[Nothing],
        differs: field!(query_bearer_file),
        shown: None,
    },
    Setting {
        field: "prometheus_version",
        effects: &[Nothing],
        differs: field!(prometheus_version),
        shown: None,
    },
    Setting {
        // Read by the supervisor at Prometheus' next start.
        field: "prometheus_port_auto",
        effects: &[Daemon],
        differs: field!(prometheus_port_auto),
        shown: None,
    },
    Setting {
        field: "prometheus_bin",
        effects: &[FreshStart],
        differs: field!(prometheus_bin),
        shown: None,
    },
    Setting {
        field: "prometheus_port",
        effects: &[FreshStart],
        differs: field!(prometheus_port),
        shown: None,
    },
    Setting {
        field: "grafana_bin",
        effects: &[FreshStart],
        differs: field!(grafana_bin),
        shown: None,
    },
    Setting {
        field: "grafana_port",
        effects: &[FreshStart],
        differs: field!(grafana_port),
        shown: None,
    },
    Setting {
        // The gateway's listener is held for the daemon's life.
        field: "gateway_port",
        effects: &[FreshStart],
        differs: field!(gateway_port),
        shown: None,
    },
    Setting {
        // `up` takes it from RAY_PROMETHEUS_NAME on a fresh start only.
        field: "prometheus_name",
        effects: &[FreshStart],
        differs: field!(prometheus_name),
        shown: None,
    },
    Setting {
        field: "sd_listen",
        effects: &[FreshStart],
        differs: field!(sd_listen),
        shown: None,
    },
    Setting {
        field: "sd_tls_cert",
        effects: &[FreshStart],
        differs: field!(sd_tls_cert),
        shown: None,
    },
    Setting {
        field: "sd_tls_key",
        effects: &[FreshStart],
        differs: field!(sd_tls_key),
        shown: None,
    },
];

/// What changing the live settings `old` into `new` takes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Fields that change only on a fresh start (the change is refused when any).
    pub fresh_start: Vec<&'static str>,
    /// "what from -> to", for `up` to print.
    pub changes: Vec<String>,
    pub reload_prometheus: bool,
    pub restart_prometheus: bool,
    pub restart_grafana: bool,
    pub reload_alertmanager: bool,
}

/// Reads [`SETTINGS`] for the fields that differ between `old` and `new`.
pub fn plan(old: &StackConfig, new: &StackConfig) -> Plan {
    let mut plan = Plan::default();
    for s in SETTINGS {
        if let Some((label, show)) = s.shown {
            let (from, to) = (show(old), show(new));
            if from != to {
                plan.changes.push(format!("{label} {from} -> {to}"));
            }
        }
        if !(s.differs)(old, new) {
            continue;
        }
        for effect in s.effects {
            match effect {
                FreshStart => plan.fresh_start.push(s.field),
                ReloadPrometheus => plan.reload_prometheus = true,
                RestartPrometheus => plan.restart_prometheus = true,
                RestartGrafana => plan.restart_grafana = true,
                ReloadAlertmanager => plan.reload_alertmanager = true,
                Daemon | Nothing => {}
            }
        }
    }
    // Alertmanager runs only with a receiver: the first one, or the last one
    // removed, starts or stops it, which only a fresh start does.
    if old.runs_alertmanager() != new.runs_alertmanager() {
        plan.fresh_start.push(ALERTMANAGER_STARTS);
    }
    if plan.reload_alertmanager {
        plan.changes.push(format!(
            "notification receivers {} -> {} (Alertmanager reloaded)",
            receivers(old),
            receivers(new)
        ));
    }
    plan
}

/// The pseudo-field of [`Plan::fresh_start`] when Alertmanager would start or stop.
pub const ALERTMANAGER_STARTS: &str = "alertmanager (receivers added to none, or all removed)";

/// The receivers as `up` lists them: how many of each kind (never a URL).
fn receivers(c: &StackConfig) -> String {
    let webhooks = c.notify_webhooks.len() + c.notify_webhook_files.len();
    let parts: Vec<String> = [
        (webhooks, "webhook"),
        (c.notify_slack.len(), "Slack"),
        (c.notify_email.len(), "e-mail"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

impl Plan {
    /// What Prometheus does about the change, if anything: a restart rereads the files too.
    pub fn prometheus(&self) -> Option<&'static str> {
        if self.restart_prometheus {
            Some("Prometheus restarted (retention and agent mode are flags)")
        } else if self.reload_prometheus {
            Some("Prometheus reloaded (SIGHUP)")
        } else {
            None
        }
    }
}

/// Why a change was refused because of [`Effect::FreshStart`] fields.
pub const FRESH_START_ONLY: &str =
    "ports, binaries and --sd-listen change only on a fresh start (raywatch down, then up)";

/// Why adding the first receiver, or removing the last, was refused.
pub const ALERTMANAGER_FRESH_START: &str = "Alertmanager starts with the first notification receiver and stops with the last only on a fresh start (raywatch down, then up with the receivers); receivers of a running Alertmanager change at once";

/// The one writer of the live settings and of the files made from them
/// (`config.json`, Prometheus' and Grafana's files), so that a change from `up` and
/// a port the supervisor moves never interleave. Its methods block (bcrypt,
/// promtool): the event loop calls them through `spawn_blocking`.
pub struct SettingsWriter {
    home: Home,
    live: Arc<watch::Sender<StackConfig>>,
    writing: Mutex<()>,
}

/// A change made: the new settings and the plan that applies them.
pub struct Applied {
    pub new: StackConfig,
    pub plan: Plan,
}

impl SettingsWriter {
    pub fn new(home: Home, live: Arc<watch::Sender<StackConfig>>) -> SettingsWriter {
        SettingsWriter {
            home,
            live,
            writing: Mutex::new(()),
        }
    }

    /// Replaces the live settings by `wanted`: refused when a fresh-start setting
    /// differs; the files are written (and checked) first, so a bad config keeps the
    /// last good one. Blocks.
    pub fn change(&self, wanted: StackConfig) -> Result<Applied, String> {
        let _one = self.writing.lock().unwrap();
        // The live settings, which include a port the supervisor moved Prometheus to.
        let old = self.live.borrow().clone();
        let plan = plan(&old, &wanted);
        if plan.fresh_start == [ALERTMANAGER_STARTS] {
            return Err(ALERTMANAGER_FRESH_START.into());
        }
        if !plan.fresh_start.is_empty() {
            return Err(FRESH_START_ONLY.into());
        }
        let write = || -> anyhow::Result<()> {
            super::files::write(&self.home, &wanted)?;
            wanted.save(&self.home.config())
        };
        write().map_err(|e| format!("{e:#}"))?;
        self.live.send_replace(wanted.clone());
        Ok(Applied { new: wanted, plan })
    }

    /// The settings for Prometheus' next start: a port chosen by raywatch that
    /// someone took meanwhile is replaced by a fresh one, in the files and the live
    /// settings, and `note` says why. Blocks.
    pub fn for_prometheus_start(
        &self,
        note: &Mutex<Option<String>>,
    ) -> anyhow::Result<StackConfig> {
        let _one = self.writing.lock().unwrap();
        let mut config = self.live.borrow().clone();
        if config.prometheus_port_auto && !crate::ports::is_free(config.prometheus_port) {
            let fresh = crate::ports::free_port()?;
            let msg = format!(
                "Prometheus moved from port {} to {fresh}: the old port was {}",
                config.prometheus_port,
                crate::process::describe_holder(config.prometheus_port)
            );
            tracing::warn!("{msg}");
            *note.lock().unwrap() = Some(msg);
            config.prometheus_port = fresh;
            config.save(&self.home.config())?;
            super::files::write(&self.home, &config)?;
            self.live.send_replace(config.clone());
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RemoteWrite;

    /// The names of every field of StackConfig: the pattern has no `..`, so a new
    /// field does not compile until it is named here (and so in the table).
    macro_rules! all_fields {
        ($($f:ident),* $(,)?) => {{
            let StackConfig { $($f: _),* } = StackConfig::default();
            vec![$(stringify!($f)),*]
        }};
    }

    fn every_field() -> Vec<&'static str> {
        all_fields!(
            prometheus_bin,
            prometheus_version,
            prometheus_port,
            prometheus_port_auto,
            scrape_interval,
            retention,
            default_roots,
            watch,
            liveness,
            trust_uids,
            grafana_bin,
            grafana_port,
            grafana_anonymous,
            gateway_port,
            prometheus_name,
            remote_write,
            agent,
            host_label,
            query_url,
            query_bearer_file,
            sd_listen,
            sd_tls_cert,
            sd_tls_key,
            sample_limit,
            drop_labels,
            no_top_rules,
            no_default_alerts,
            alerts,
            user_rules,
            alertmanager_bin,
            alertmanager_port,
            notify_webhooks,
            notify_slack,
            notify_webhook_files,
            notify_email,
            smtp,
        )
    }

    #[test]
    fn the_table_names_every_field_once() {
        let mut table: Vec<_> = SETTINGS.iter().map(|s| s.field).collect();
        let mut fields = every_field();
        table.sort();
        fields.sort();
        assert_eq!(table, fields);
        for s in SETTINGS {
            assert!(!s.effects.is_empty(), "{} has no effect listed", s.field);
            let fresh = s.effects.contains(&FreshStart);
            assert!(
                !fresh || s.effects.len() == 1,
                "{}: a fresh-start setting applies no other way",
                s.field
            );
            assert!(
                !fresh || s.shown.is_none(),
                "{}: a refused change is never listed as applied",
                s.field
            );
        }
    }

    #[test]
    fn the_same_settings_plan_nothing() {
        let c = StackConfig::default();
        assert_eq!(plan(&c, &c.clone()), Plan::default());
    }

    #[test]
    fn a_new_scrape_interval_reloads_prometheus_and_restarts_grafana() {
        let old = StackConfig::default();
        let new = StackConfig {
            scrape_interval: Duration::from_secs(5),
            ..old.clone()
        };
        let p = plan(&old, &new);
        assert_eq!(p.changes, ["scrape interval 10s -> 5s"]);
        assert!(p.reload_prometheus && p.restart_grafana && !p.restart_prometheus);
        assert_eq!(p.prometheus(), Some("Prometheus reloaded (SIGHUP)"));
    }

    #[test]
    fn retention_or_agent_mode_restart_prometheus_which_also_covers_a_reload() {
        let old = StackConfig::default();
        let new = StackConfig {
            retention: Duration::from_secs(86_400),
            sample_limit: crate::guard::SampleLimit(5),
            ..old.clone()
        };
        let p = plan(&old, &new);
        assert!(p.restart_prometheus && p.reload_prometheus && !p.restart_grafana);
        assert_eq!(
            p.changes,
            ["retention 30days -> 1day", "sample limit 200000 -> 5"]
        );
        assert_eq!(
            p.prometheus(),
            Some("Prometheus restarted (retention and agent mode are flags)")
        );
        let agent = StackConfig {
            agent: true,
            ..old.clone()
        };
        assert!(plan(&old, &agent).restart_prometheus);
    }

    #[test]
    fn the_daemons_own_settings_touch_no_child() {
        let old = StackConfig::default();
        let new = StackConfig {
            liveness: Duration::from_secs(30),
            default_roots: false,
            watch: vec!["/data/ray".into()],
            trust_uids: vec![1001],
            ..old.clone()
        };
        let p = plan(&old, &new);
        assert_eq!(
            p.changes,
            [
                "liveness 20s -> 30s",
                "default roots true -> false",
                "watch [] -> [\"/data/ray\"]",
                "trusted uids [] -> [1001]",
            ]
        );
        assert_eq!(p.prometheus(), None);
        assert!(!p.restart_grafana && p.fresh_start.is_empty());
    }

    #[test]
    fn ports_binaries_and_listeners_are_refused() {
        let old = StackConfig::default();
        let new = StackConfig {
            prometheus_port: 9999,
            grafana_bin: Some("/usr/sbin/grafana".into()),
            sd_listen: Some("127.0.0.1:9464".into()),
            ..old.clone()
        };
        let p = plan(&old, &new);
        assert_eq!(
            p.fresh_start,
            ["prometheus_port", "grafana_bin", "sd_listen"]
        );
        assert!(p.changes.is_empty());
    }

    #[test]
    fn a_credentials_file_reloads_unlisted_and_a_url_shows_redacted() {
        let rw = |url: &str, bearer: Option<&str>| RemoteWrite {
            url: url.into(),
            bearer_file: bearer.map(Into::into),
            basic_auth_file: None,
            ca_file: None,
        };
        let old = StackConfig {
            remote_write: vec![rw("https://store.example/push", Some("/a"))],
            ..StackConfig::default()
        };
        let new = StackConfig {
            remote_write: vec![rw("https://store.example/push", Some("/b"))],
            ..old.clone()
        };
        let p = plan(&old, &new);
        assert!(p.reload_prometheus);
        assert!(p.changes.is_empty(), "{:?}", p.changes);
        let other = StackConfig {
            remote_write: vec![rw("https://u:secret@store.example/push", None)],
            ..old.clone()
        };
        let p = plan(&old, &other);
        assert_eq!(p.changes.len(), 1);
        assert!(!p.changes[0].contains("secret"), "{:?}", p.changes);
    }

    #[test]
    fn a_host_label_naming_the_host_itself_changes_nothing() {
        let old = StackConfig::default();
        let new = StackConfig {
            host_label: Some(old.ray_host()),
            ..old.clone()
        };
        assert_eq!(plan(&old, &new), Plan::default());
        let renamed = StackConfig {
            host_label: Some("node-b".into()),
            ..old.clone()
        };
        let p = plan(&old, &renamed);
        assert!(p.reload_prometheus);
        assert_eq!(
            p.changes,
            [format!("ray_host {} -> node-b", old.ray_host())]
        );
    }

    #[test]
    fn receivers_of_a_running_alertmanager_reload_it_and_the_first_or_last_take_a_fresh_start() {
        let old = StackConfig {
            alertmanager_bin: Some("/usr/bin/prometheus-alertmanager".into()),
            notify_webhooks: vec!["http://127.0.0.1:9/a".into()],
            ..StackConfig::default()
        };
        let new = StackConfig {
            notify_email: vec!["a@example.org".into()],
            ..old.clone()
        };
        let p = plan(&old, &new);
        assert!(p.reload_alertmanager && p.fresh_start.is_empty(), "{p:?}");
        assert_eq!(
            p.changes,
            ["notification receivers 1 webhook -> 1 webhook, 1 e-mail (Alertmanager reloaded)"]
        );
        assert!(!p.reload_prometheus && !p.restart_prometheus);
        let none = StackConfig {
            notify_webhooks: Vec::new(),
            ..old.clone()
        };
        assert_eq!(plan(&old, &none).fresh_start, [ALERTMANAGER_STARTS]);
        assert_eq!(plan(&none, &old).fresh_start, [ALERTMANAGER_STARTS]);
    }

    #[test]
    fn top_rules_show_as_recorded_or_not() {
        let old = StackConfig::default();
        let new = StackConfig {
            no_top_rules: true,
            ..old.clone()
        };
        let p = plan(&old, &new);
        assert_eq!(p.changes, ["top's recording rules true -> false"]);
        assert!(p.reload_prometheus);
    }
}
