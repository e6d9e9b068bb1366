//! The status report: what the daemon knows of the stack and every cluster, for `raywatch status`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::clock::unix;

use super::Shared;
use super::clusters::Core;
use crate::config::StackConfig;
use crate::registry::{Cluster, Origin, Owners, State, TargetGroup};
use crate::status::{self, ClusterSource, ClusterState, Health};

/// Prometheus' `up` of each (cluster, target) it scrapes.
type Up = HashMap<(String, String), f64>;

/// What each cluster's entry is told from: the settings, what is published, who
/// claims what, and Prometheus' `up`.
struct Judged<'a> {
    settings: &'a StackConfig,
    health: &'a Up,
    desired: &'a BTreeMap<String, TargetGroup>,
    owners: Owners,
    contested: BTreeMap<String, Vec<String>>,
    locals: BTreeSet<IpAddr>,
}

impl Core {
    /// The status report, with what the caller learnt from Prometheus.
    pub fn report(
        &self,
        shared: &Shared,
        ready: bool,
        grafana_ready: bool,
        health: &Up,
    ) -> status::StatusReport {
        let settings = self.settings.borrow().clone();
        let desired = self.desired();
        let judged = Judged {
            settings: &settings,
            health,
            desired: &desired,
            owners: self.attribution.owners(),
            contested: self.registry.contested(),
            locals: crate::ports::local_addresses(),
        };
        let unscraped = if ready {
            self.unscraped_targets(&judged)
        } else {
            Vec::new()
        };
        let clusters = self
            .registry
            .clusters()
            .map(|c| self.cluster_status(c, &judged))
            .collect();
        status::StatusReport {
            schema: status::SCHEMA,
            home: self.home.root().to_path_buf(),
            daemon: status::DaemonStatus {
                pid: std::process::id(),
                started_unix: unix(shared.started),
                socket: self.home.socket(),
            },
            prometheus: self.prometheus_status(shared, &settings, ready, unscraped),
            grafana: self.grafana_status(shared, &settings, grafana_ready),
            gateway: gateway_status(shared),
            watch: self.watch_status(),
            clusters,
            rejected: self.rejected(shared),
            targets_error: self.targets.last_error.clone(),
            remote_write: Vec::new(),
            alertmanager: alertmanager_status(shared, &settings),
            alerts: None,
        }
    }

    /// Published targets with no `up` series yet, past discovery (two 5 s ticks),
    /// the first scrape and a margin.
    fn unscraped_targets(&self, judged: &Judged) -> Vec<String> {
        let grace = Duration::from_secs(30)
            .max(judged.settings.scrape_interval * 3 + Duration::from_secs(10));
        judged
            .desired
            .iter()
            .filter(|(name, _)| self.targets.age(name).is_some_and(|a| a > grace))
            .flat_map(|(name, g)| {
                g.targets
                    .iter()
                    .filter(|t| !judged.health.contains_key(&(name.clone(), (*t).clone())))
                    .map(move |t| format!("{name}/{t}"))
            })
            .collect()
    }

    fn cluster_status(&self, c: &Cluster, judged: &Judged) -> status::ClusterStatus {
        let published: Vec<String> = judged
            .desired
            .get(&c.name)
            .map(|g| g.targets.clone())
            .unwrap_or_default();
        // Roles from the cluster's whole list (its head's endpoints come last).
        let roles: std::collections::HashMap<&String, crate::ray::Role> = c
            .targets
            .iter()
            .zip(crate::ray::roles(&c.targets))
            .collect();
        let targets = published
            .iter()
            .map(|t| target_status(&c.name, t, roles.get(t).copied(), judged.health))
            .collect();
        let withheld = self.withheld(c, &published, judged);
        let settings = judged.settings;
        let grafana_url = (settings.grafana_bin.is_some() && c.is_live())
            .then(|| crate::grafana::cluster_url(settings.grafana_port, &c.name, &c.found.session));
        let (state, dead_reason) = match &c.state {
            State::Live => (ClusterState::Live, None),
            State::Dead { reason, .. } => (ClusterState::Dead, Some(reason.clone())),
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
                Origin::Watched => ClusterSource::Watch,
                Origin::Attached { .. } => ClusterSource::Attach,
            },
            last_rewrite_unix: unix(c.last_change_wall),
            discovery_file_gone: c
                .file_gone
                .filter(|_| c.is_live())
                .map(|since| file_gone(c, since)),
            grafana_url,
            targets,
            withheld,
            remote_targets: remote_targets(c, &judged.locals),
            samples_per_scrape: None,
            nodes_lost: nodes_lost(c),
            dashboard: None,
        }
    }

    /// A live cluster's targets that are not published under it, and why.
    fn withheld(
        &self,
        c: &Cluster,
        published: &[String],
        judged: &Judged,
    ) -> Vec<status::WithheldTarget> {
        if !c.is_live() {
            return Vec::new();
        }
        c.targets
            .iter()
            .filter(|t| !published.contains(t))
            .map(|t| status::WithheldTarget {
                address: t.clone(),
                reason: self.withheld_because(t, judged),
            })
            .collect()
    }

    /// Why a live cluster's target `t` is not published under it.
    fn withheld_because(&self, t: &str, judged: &Judged) -> String {
        match (self.endpoints.foreign(t), judged.owners.get(t)) {
            (Some((uid, user)), _) => format!("its port is held by uid {uid} ({user}), not by a trusted user: never scraped"),
            (None, _) if self.endpoints.waiting(t) => "waiting for a listener: nothing listens on it yet; scraped once a process of a trusted user does (checked every second)".into(),
            (None, Some(Some(s))) => format!("also listed by another cluster; its series carry session {s}"),
            (None, Some(None)) => "also listed by another cluster, and no claimant's session could be read from it".into(),
            (None, None) if judged.contested.contains_key(t) => "also listed by another cluster; checking which one serves it".into(),
            (None, None) => "not published".into(),
        }
    }

    /// Rejected discovery files, and watched roots refused.
    fn rejected(&self, shared: &Shared) -> Vec<status::RejectedInput> {
        self.registry
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
            .collect()
    }

    /// Prometheus as the daemon runs it; what only Prometheus or the system
    /// knows is filled in by the caller.
    fn prometheus_status(
        &self,
        shared: &Shared,
        settings: &StackConfig,
        ready: bool,
        unscraped_targets: Vec<String>,
    ) -> status::PrometheusStatus {
        let port = settings.prometheus_port;
        status::PrometheusStatus {
            mode: if settings.agent {
                status::PrometheusMode::Agent
            } else {
                status::PrometheusMode::Server
            },
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
        }
    }

    fn grafana_status(
        &self,
        shared: &Shared,
        settings: &StackConfig,
        ready: bool,
    ) -> status::GrafanaStatus {
        status::GrafanaStatus {
            installed: settings.grafana_bin.is_some(),
            binary: settings.grafana_bin.clone(),
            url: settings
                .grafana_bin
                .as_ref()
                .map(|_| format!("http://127.0.0.1:{}", settings.grafana_port)),
            port: settings.grafana_port,
            ready,
            admin_password_file: self.home.grafana_password(),
            provisioning_dir: self.home.grafana_dir().join("provisioning"),
            anonymous: settings.grafana_anonymous,
            child: shared
                .grafana
                .as_ref()
                .map(|g| g.status.lock().unwrap().clone())
                .unwrap_or_default(),
        }
    }

    fn watch_status(&self) -> status::WatchStatus {
        status::WatchStatus {
            mode: if self.follow.watcher.needs_rescan() {
                status::WatchMode::Rescan
            } else {
                status::WatchMode::Inotify
            },
            roots: self.follow.roots.iter().cloned().collect(),
            degraded: self
                .follow
                .watcher
                .degraded
                .clone()
                .or_else(|| self.follow.incomplete.clone()),
            foreign_session_dirs: self.follow.foreign_sessions,
        }
    }
}

/// A published target and its health in Prometheus' `up`.
/// The stack's Alertmanager, when it runs one.
fn alertmanager_status(
    shared: &Shared,
    settings: &StackConfig,
) -> Option<status::AlertmanagerStatus> {
    let child = shared.alertmanager.as_ref()?;
    Some(status::AlertmanagerStatus {
        url: format!("http://127.0.0.1:{}", settings.alertmanager_port),
        port: settings.alertmanager_port,
        binary: settings.alertmanager_bin.clone().unwrap_or_default(),
        webhooks: settings.notify_webhooks.len() + settings.notify_webhook_files.len(),
        slack: settings.notify_slack.len(),
        email: settings.notify_email.len(),
        child: child.status.lock().unwrap().clone(),
    })
}

fn target_status(
    cluster: &str,
    t: &str,
    role: Option<crate::ray::Role>,
    health: &Up,
) -> status::TargetStatus {
    status::TargetStatus {
        address: t.to_string(),
        role,
        health: match health.get(&(cluster.to_string(), t.to_string())) {
            Some(v) if *v >= 1.0 => Health::Up,
            Some(_) => Health::Down,
            None => Health::Unknown,
        },
        // Filled in by crate::guard::annotate.
        samples_per_scrape: None,
        sample_limit_exceeded: None,
    }
}

/// The nodes a live cluster stopped listing that have not come back.
fn nodes_lost(c: &Cluster) -> Vec<status::LostNode> {
    if !c.is_live() {
        return Vec::new();
    }
    c.still_lost()
        .into_iter()
        .map(|l| status::LostNode {
            address: l.endpoint.clone(),
            since_unix: unix(l.at),
        })
        .collect()
}

/// The targets a cluster lists that are not addresses of this machine.
fn remote_targets(c: &Cluster, locals: &BTreeSet<IpAddr>) -> Vec<String> {
    c.targets
        .iter()
        .filter(|t| {
            t.rsplit_once(':')
                .is_some_and(|(h, _)| !crate::ports::is_local_host(h, locals))
        })
        .cloned()
        .collect()
}

/// The gateway's port and what it refused.
fn gateway_status(shared: &Shared) -> status::GatewayStatus {
    let counters = &shared.gateway.counters;
    status::GatewayStatus {
        url: format!("http://127.0.0.1:{}", shared.gateway.port),
        port: shared.gateway.port,
        refused_connections: counters.refused_connections.load(Ordering::Relaxed),
        refused_requests: counters.refused_requests.load(Ordering::Relaxed),
    }
}

/// The note on a live cluster whose discovery file is gone since `since`.
fn file_gone(c: &Cluster, since: SystemTime) -> String {
    let gcs = match c.gcs_port {
        Some(port) => format!("it stays live while its GCS (port {port}) listens"),
        None => "it stays live while its session folder is there".to_string(),
    };
    format!(
        "its discovery file stopped being rewritten: it is gone from {} (noticed {} ago); {gcs} or Ray writes the file again, within the liveness bound",
        c.found.file.display(),
        humantime::format_duration(Duration::from_secs(
            SystemTime::now()
                .duration_since(since)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        ))
    )
}
