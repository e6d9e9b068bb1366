//! prometheus.yml and web.yml as typed structs, and the prometheus.yml of a stack.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{RAY_JOB, RAYWATCH_JOB, USER};
use crate::config::{StackConfig, prometheus_duration};
use crate::home::Home;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct PrometheusYml {
    pub global: Global,
    /// The rules files (`raywatch top`'s recording rules, the alert rules; none on an agent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_files: Vec<String>,
    pub scrape_configs: Vec<ScrapeConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_write: Vec<RemoteWriteConfig>,
    /// The stack's Alertmanager, when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerting: Option<Alerting>,
}

/// `alerting:` of prometheus.yml.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Alerting {
    pub alertmanagers: Vec<AlertmanagerConfig>,
}

/// One Alertmanager Prometheus sends alerts to, with its credential.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct AlertmanagerConfig {
    pub static_configs: Vec<StaticConfig>,
    pub basic_auth: BasicAuth,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Global {
    pub scrape_interval: String,
    pub evaluation_interval: String,
    /// Added to every series that leaves this Prometheus (remote write).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_labels: BTreeMap<String, String>,
}

/// One `remote_write` entry of prometheus.yml.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct RemoteWriteConfig {
    pub url: String,
    /// Shown as `remote_name` on Prometheus' own remote-storage metrics.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsConfig>,
    /// What is not sent: `top`'s recorded series stay home (see [`prometheus_yml`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_relabel_configs: Vec<RelabelConfig>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Authorization {
    #[serde(rename = "type")]
    pub kind: String,
    pub credentials_file: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct TlsConfig {
    pub ca_file: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct ScrapeConfig {
    pub job_name: String,
    /// The path scraped (Prometheus' default: /metrics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_path: Option<String>,
    /// Whether the scraped series' labels win over the target's (`job`, `instance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honor_labels: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_sd_configs: Vec<FileSdConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub static_configs: Vec<StaticConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// Samples one scrape may carry; over it the whole scrape fails (0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metric_relabel_configs: Vec<RelabelConfig>,
}

/// One `metric_relabel_configs` or `write_relabel_configs` entry (raywatch writes
/// `labeldrop`, and `drop` by metric name).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct RelabelConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_labels: Vec<String>,
    pub action: String,
    /// Matched against whole label names (Prometheus anchors it).
    pub regex: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct FileSdConfig {
    pub files: Vec<String>,
    pub refresh_interval: String,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct StaticConfig {
    pub targets: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct BasicAuth {
    pub username: String,
    pub password_file: String,
}

/// `--web.config.file`: basic auth for every HTTP endpoint of Prometheus.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct WebYml {
    pub basic_auth_users: BTreeMap<String, String>,
}

/// Recording rules for the stack's Prometheus, handed in by their owner (`raywatch
/// top`'s, see `top::rules::for_stack`): the config writer stores the file, names it
/// in prometheus.yml and keeps the recorded series out of remote writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingRules {
    /// The rules file, as YAML.
    pub yaml: String,
    /// The name prefix of every series the rules record.
    pub prefix: String,
}

/// Every rules file a stack's Prometheus evaluates, handed in by their owners:
/// `top`'s recording rules and raywatch's alert rules (`alerts::for_stack`),
/// each None when the stack has none.
#[derive(Default)]
pub struct Rules {
    pub top: Option<RecordingRules>,
    /// The alert rules file, as YAML.
    pub alerts: Option<String>,
    /// The user's own rules files (`up --alert-rules`), as YAML, in order.
    pub user: Vec<String>,
    /// Whether the stack's Alertmanager runs to take the alerts (its port is
    /// the settings'; see `alertmanager::runs`).
    pub alertmanager: bool,
}

/// prometheus.yml for a stack: one `ray` job reading the targets glob (so
/// clusters come and go without a reload), and Prometheus scraping itself.
/// Remote writes leave out `top`'s recorded series: they are derived from the
/// samples sent, keyed without `ray_host` until the external label is added, and a
/// central store holding them for some hosts only would mislead a `top` there
/// (which asks live).
pub fn prometheus_yml(home: &Home, cfg: &StackConfig, all: &Rules) -> PrometheusYml {
    let rules = all.top.as_ref();
    let interval = prometheus_duration(cfg.scrape_interval);
    PrometheusYml {
        global: Global {
            scrape_interval: interval.clone(),
            evaluation_interval: interval,
            external_labels: BTreeMap::from([("ray_host".to_string(), cfg.ray_host())]),
        },
        rule_files: [
            rules.map(|_| home.top_rules()),
            all.alerts.as_ref().map(|_| home.alert_rules()),
        ]
        .into_iter()
        .flatten()
        .chain((0..all.user.len()).map(|i| home.user_rules(i)))
        .map(|p| p.to_string_lossy().into_owned())
        .collect(),
        remote_write: cfg
            .remote_write
            .iter()
            .enumerate()
            .map(|(i, rw)| remote_write_config(home, i, rw, rules))
            .collect(),
        scrape_configs: [
            Some(ray_job(home, cfg)),
            Some(self_scrape(home, cfg)),
            raywatch_job(cfg),
        ]
        .into_iter()
        .flatten()
        .collect(),
        alerting: all.alertmanager.then(|| Alerting {
            alertmanagers: vec![AlertmanagerConfig {
                static_configs: vec![StaticConfig {
                    targets: vec![format!("127.0.0.1:{}", cfg.alertmanager_port)],
                }],
                basic_auth: BasicAuth {
                    username: USER.into(),
                    password_file: home.alertmanager_password().to_string_lossy().into_owned(),
                },
            }],
        }),
    }
}

/// One remote write: its credentials by file, and `top`'s recorded series left out.
fn remote_write_config(
    home: &Home,
    i: usize,
    rw: &crate::config::RemoteWrite,
    rules: Option<&RecordingRules>,
) -> RemoteWriteConfig {
    RemoteWriteConfig {
        url: rw.url.clone(),
        name: crate::remote_write::remote_name(i),
        authorization: rw.bearer_file.as_ref().map(|f| Authorization {
            kind: "Bearer".into(),
            credentials_file: f.to_string_lossy().into_owned(),
        }),
        basic_auth: rw.basic_auth_file.as_ref().map(|_| BasicAuth {
            username: super::secrets::basic_auth_user(home, i).unwrap_or_default(),
            password_file: home.remote_write_password(i).to_string_lossy().into_owned(),
        }),
        tls_config: rw.ca_file.as_ref().map(|f| TlsConfig {
            ca_file: f.to_string_lossy().into_owned(),
        }),
        write_relabel_configs: rules
            .map(|r| RelabelConfig {
                source_labels: vec!["__name__".into()],
                action: "drop".into(),
                regex: format!("{}.*", r.prefix),
            })
            .into_iter()
            .collect(),
    }
}

/// The `ray` job: every target file in `targets/`, under the sample limit, with
/// the dropped labels.
fn ray_job(home: &Home, cfg: &StackConfig) -> ScrapeConfig {
    ScrapeConfig {
        job_name: RAY_JOB.into(),
        metrics_path: None,
        honor_labels: None,
        file_sd_configs: vec![FileSdConfig {
            files: vec![
                home.targets_dir()
                    .join("*.json")
                    .to_string_lossy()
                    .into_owned(),
            ],
            // A safety net only: the folder is watched. Should Prometheus
            // fail to watch it (inotify exhausted), this bounds the delay.
            refresh_interval: "30s".into(),
        }],
        static_configs: vec![],
        basic_auth: None,
        sample_limit: Some(cfg.sample_limit.0),
        // Checked names (crate::guard): letters, digits and '_' need no escaping.
        metric_relabel_configs: cfg
            .drop_labels
            .iter()
            .map(|l| RelabelConfig {
                source_labels: vec![],
                action: "labeldrop".into(),
                regex: l.clone(),
            })
            .collect(),
    }
}

/// Prometheus scraping itself, with its own credentials.
fn self_scrape(home: &Home, cfg: &StackConfig) -> ScrapeConfig {
    ScrapeConfig {
        job_name: "prometheus".into(),
        metrics_path: None,
        honor_labels: None,
        file_sd_configs: vec![],
        static_configs: vec![StaticConfig {
            targets: vec![format!("127.0.0.1:{}", cfg.prometheus_port)],
        }],
        basic_auth: Some(BasicAuth {
            username: USER.into(),
            password_file: home.prometheus_password().to_string_lossy().into_owned(),
        }),
        sample_limit: None,
        metric_relabel_configs: vec![],
    }
}

/// Where the gateway serves raywatch's own metrics, for the stack's Prometheus.
pub const RAYWATCH_METRICS_PATH: &str = "/raywatch/metrics";

/// raywatch's own metrics, from the gateway (which serves only this uid, so
/// no credential is needed: see the gateway module); none before its port is
/// known. Their cluster labels (`ray_io_cluster`, `ray_user`, `ray_session`,
/// `ray_temp_dir`) are none of the target's (`job`, `instance`), so they pass
/// as the daemon wrote them, equal to those the `ray` job's targets give Ray's
/// series; `honor_labels` stays false, so the target's `job` and `instance`
/// always name the daemon.
fn raywatch_job(cfg: &StackConfig) -> Option<ScrapeConfig> {
    (cfg.gateway_port != 0).then(|| ScrapeConfig {
        job_name: RAYWATCH_JOB.into(),
        metrics_path: Some(RAYWATCH_METRICS_PATH.into()),
        honor_labels: Some(false),
        file_sd_configs: vec![],
        static_configs: vec![StaticConfig {
            targets: vec![format!("127.0.0.1:{}", cfg.gateway_port)],
        }],
        basic_auth: None,
        // A few series per cluster (at most 1000 ended ones kept): the bound only
        // stops someone else on the gateway's port (were the daemon gone) flooding it.
        sample_limit: Some(RAYWATCH_SAMPLE_LIMIT),
        metric_relabel_configs: vec![],
    })
}

/// The most samples one scrape of raywatch's own metrics may bring.
pub const RAYWATCH_SAMPLE_LIMIT: u64 = 100_000;

#[cfg(test)]
mod tests {
    use super::super::args;
    use super::*;
    use std::time::Duration;

    #[test]
    fn config_has_one_ray_job_reading_the_glob() {
        let home = Home::resolve(Some("/h".into())).unwrap();
        let cfg = StackConfig {
            prometheus_bin: "/usr/bin/prometheus".into(),
            prometheus_port: 9999,
            prometheus_port_auto: true,
            scrape_interval: Duration::from_secs(10),
            retention: Duration::from_secs(15 * 86400),
            default_roots: true,
            watch: vec![],
            liveness: Duration::from_secs(20),
            trust_uids: vec![],
            grafana_bin: None,
            grafana_port: 3999,
            grafana_anonymous: false,
            prometheus_name: "Prometheus".into(),
            gateway_port: 0,
            ..Default::default()
        };
        let text =
            serde_yaml_ng::to_string(&prometheus_yml(&home, &cfg, &Rules::default())).unwrap();
        let back: PrometheusYml = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back.scrape_configs[0].job_name, "ray");
        assert_eq!(
            back.scrape_configs[0].file_sd_configs[0].files,
            vec!["/h/targets/*.json"]
        );
        assert_eq!(back.global.scrape_interval, "10s");
        assert!(
            !args(&home, &cfg)
                .iter()
                .any(|a| a.contains("enable-lifecycle"))
        );
        assert!(args(&home, &cfg).contains(&"--web.listen-address=127.0.0.1:9999".to_string()));
        assert!(args(&home, &cfg).contains(&"--web.read-timeout=30s".to_string()));
    }
}
