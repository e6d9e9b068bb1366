//! The status report: what the daemon knows of the stack and every cluster, for `raywatch status`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Shared;
use super::clusters::Core;
use crate::registry::{Origin, State};
use crate::status;

impl Core {
    /// The status report, with what the caller learnt from Prometheus.
    pub fn report(
        &self,
        shared: &Shared,
        ready: bool,
        grafana_ready: bool,
        health: &HashMap<(String, String), f64>,
    ) -> status::StatusReport {
        let settings = self.settings.borrow().clone();
        let owners = self.attribution.owners();
        let contested = self.registry.contested();
        let locals = crate::ports::local_addresses();
        let desired = self.desired();
        // Past discovery (two 5 s ticks), the first scrape and a margin, every
        // published target should have an `up` series; say so when not.
        let grace =
            Duration::from_secs(30).max(settings.scrape_interval * 3 + Duration::from_secs(10));
        let unscraped_targets: Vec<String> = if ready {
            desired
                .iter()
                .filter(|(name, _)| self.targets.age(name).is_some_and(|a| a > grace))
                .flat_map(|(name, g)| {
                    g.targets
                        .iter()
                        .filter(|t| !health.contains_key(&(name.clone(), (*t).clone())))
                        .map(move |t| format!("{name}/{t}"))
                })
                .collect()
        } else {
            Vec::new()
        };
        let clusters = self
            .registry
            .clusters()
            .map(|c| {
                let published: Vec<String> = desired.get(&c.name).map(|g| g.targets.clone()).unwrap_or_default();
                let targets = published
                    .iter()
                    .map(|t| status::TargetStatus {
                        address: t.clone(),
                        health: match health.get(&(c.name.clone(), t.clone())) {
                            Some(v) if *v >= 1.0 => "up",
                            Some(_) => "down",
                            None => "unknown",
                        }
                        .into(),
                        // Filled in by crate::status::annotate.
                        samples_per_scrape: None,
                        sample_limit_exceeded: None,
                    })
                    .collect();
                let withheld = if c.is_live() {
                    c.targets
                        .iter()
                        .filter(|t| !published.contains(t))
                        .map(|t| status::WithheldTarget {
                            address: t.clone(),
                            reason: match (self.endpoints.foreign(t), owners.get(t)) {
                                (Some((uid, user)), _) => format!("its port is held by uid {uid} ({user}), not by a trusted user: never scraped"),
                                (None, _) if self.endpoints.waiting(t) => "waiting for a listener: nothing listens on it yet; scraped once a process of a trusted user does (checked every second)".into(),
                                (None, Some(Some(s))) => format!("also listed by another cluster; its series carry session {s}"),
                                (None, Some(None)) => "also listed by another cluster, and no claimant's session could be read from it".into(),
                                (None, None) if contested.contains_key(t) => "also listed by another cluster; checking which one serves it".into(),
                                (None, None) => "not published".into(),
                            },
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let grafana_url = (settings.grafana_bin.is_some() && c.is_live())
                    .then(|| crate::grafana::cluster_url(settings.grafana_port, &c.name, &c.found.session));
                let (state, dead_reason) = match &c.state {
                    State::Live => ("live".to_string(), None),
                    State::Dead { reason, .. } => ("dead".to_string(), Some(reason.clone())),
                };
                status::ClusterStatus {
                    name: c.name.clone(),
                    state,
                    dead_reason,
                    session: c.found.session.clone(),
                    session_dir: c.found.session_dir.clone(),
                    temp_dir: c.found.temp_dir.clone(),
                    discovery_file: c.found.file.clone(),
                    user: c.user.clone(),
                    source: match c.origin {
                        Origin::Watched => "watch".into(),
                        Origin::Attached { .. } => "attach".into(),
                    },
                    last_rewrite_unix: unix(c.last_change_wall),
                    discovery_file_gone: c.file_gone.filter(|_| c.is_live()).map(|since| {
                        let gcs = match c.gcs_port {
                            Some(port) => format!("it stays live while its GCS (port {port}) listens"),
                            None => "it stays live while its session folder is there".to_string(),
                        };
                        format!(
                            "its discovery file stopped being rewritten: it is gone from {} (noticed {} ago); {gcs} or Ray writes the file again, within the liveness bound",
                            c.found.file.display(),
                            humantime::format_duration(Duration::from_secs(
                                SystemTime::now().duration_since(since).map(|d| d.as_secs()).unwrap_or(0)
                            ))
                        )
                    }),
                    grafana_url,
                    targets,
                    withheld,
                    remote_targets: c
                        .targets
                        .iter()
                        .filter(|t| {
                            t.rsplit_once(':')
                                .is_some_and(|(h, _)| !crate::ports::is_local_host(h, &locals))
                        })
                        .cloned()
                        .collect(),
                    samples_per_scrape: None,
                    dashboard: None,
                }
            })
            .collect();
        let rejected = self
            .registry
            .rejections()
            .iter()
            .map(|(p, r)| status::RejectedInput {
                path: p.clone(),
                reason: r.reason.clone(),
                since_unix: unix(r.since),
            })
            .chain(
                self.follow
                    .refused_roots
                    .iter()
                    .map(|(p, r)| status::RejectedInput {
                        path: p.clone(),
                        reason: format!("(a watched root) {r}"),
                        since_unix: unix(shared.started),
                    }),
            )
            .collect();
        let port = settings.prometheus_port;
        status::StatusReport {
            schema: status::SCHEMA,
            home: self.home.root().to_path_buf(),
            daemon: status::DaemonStatus {
                pid: std::process::id(),
                started_unix: unix(shared.started),
                socket: self.home.socket(),
            },
            prometheus: status::PrometheusStatus {
                mode: if settings.agent { "agent" } else { "server" }.into(),
                url: format!("http://127.0.0.1:{port}"),
                port,
                binary: settings.prometheus_bin.clone(),
                ready,
                user: crate::prometheus::USER.into(),
                password_file: self.home.prometheus_password(),
                datasource_name: settings.prometheus_name.clone(),
                sd_watcher_errors: 0.0,
                unscraped_targets,
                listener_problem: None,
                connections_held: None,
                read_error: None,
                port_note: shared.port_note.lock().unwrap().clone(),
                data_dir: (!settings.agent).then(|| self.home.prometheus_data()),
                data_bytes: None,
                data_free_bytes: None,
                retention: (!settings.agent)
                    .then(|| crate::config::prometheus_duration(settings.retention)),
                sample_limit: settings.sample_limit.get(),
                drop_labels: settings.drop_labels.clone(),
                scrapes_over_sample_limit: 0.0,
                child: shared.prometheus.status.lock().unwrap().clone(),
            },
            grafana: status::GrafanaStatus {
                installed: settings.grafana_bin.is_some(),
                binary: settings.grafana_bin.clone(),
                url: settings
                    .grafana_bin
                    .as_ref()
                    .map(|_| format!("http://127.0.0.1:{}", settings.grafana_port)),
                port: settings.grafana_port,
                ready: grafana_ready,
                admin_password_file: self.home.grafana_password(),
                provisioning_dir: self.home.grafana_dir().join("provisioning"),
                anonymous: settings.grafana_anonymous,
                child: shared
                    .grafana
                    .as_ref()
                    .map(|g| g.status.lock().unwrap().clone())
                    .unwrap_or_default(),
            },
            watch: status::WatchStatus {
                mode: if self.follow.watcher.needs_rescan() {
                    "rescan".into()
                } else {
                    "inotify".into()
                },
                roots: self.follow.roots.iter().cloned().collect(),
                degraded: self
                    .follow
                    .watcher
                    .degraded
                    .clone()
                    .or_else(|| self.follow.incomplete.clone()),
                foreign_session_dirs: self.follow.foreign_sessions,
            },
            gateway: status::GatewayStatus {
                url: format!("http://127.0.0.1:{}", shared.gateway.port),
                port: shared.gateway.port,
                refused_connections: shared
                    .gateway
                    .counters
                    .refused_connections
                    .load(std::sync::atomic::Ordering::Relaxed),
                refused_requests: shared
                    .gateway
                    .counters
                    .refused_requests
                    .load(std::sync::atomic::Ordering::Relaxed),
            },
            clusters,
            rejected,
            targets_error: self.targets.last_error.clone(),
            remote_write: Vec::new(),
        }
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
