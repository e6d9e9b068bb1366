//! The control API: HTTP over `<home>/run/raywatch.sock` (0600), its routes and handlers.
//! The request and response types are in [`crate::api`], shared with the CLI's client.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Json;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tokio::sync::watch;

use super::Shared;
use crate::api::{ApiError, AttachRequest, AttachResponse, DetachRequest, Refusal};
use crate::config::StackConfig;
use crate::home::Home;
use crate::status::StatusReport;

/// Listens on the control socket (created under umask 077, then checked to be
/// 0600) until `shutdown` changes.
pub fn serve(
    home: &Home,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>> {
    let _ = fs_err::remove_file(home.socket());
    let listener = tokio::net::UnixListener::bind(home.socket())
        .with_context(|| format!("cannot listen on {}", home.socket().display()))?;
    fs_err::set_permissions(home.socket(), std::fs::Permissions::from_mode(0o600))?;
    let app = axum::Router::new()
        .route("/v1/status", get(status_handler))
        .route("/v1/attach", post(attach_handler))
        .route("/v1/detach", post(detach_handler))
        .route("/v1/shutdown", post(shutdown_handler))
        .route("/v1/config", post(config_handler))
        .with_state(shared);
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await;
    }))
}

type ApiResult<T> = Result<Json<T>, (StatusCode, Json<ApiError>)>;

fn api_error(code: StatusCode, error: String) -> (StatusCode, Json<ApiError>) {
    (code, Json(ApiError { error }))
}

/// A query's samples; None, its error kept in `error` (the first only), when its
/// answer could not be had or read.
fn kept(
    answer: anyhow::Result<Vec<crate::prometheus::Sample>>,
    error: &mut Option<String>,
) -> Option<Vec<crate::prometheus::Sample>> {
    answer
        .map_err(|e| {
            error.get_or_insert(format!("{e:#}"));
        })
        .ok()
}

async fn status_handler(AxState(shared): AxState<Arc<Shared>>) -> ApiResult<StatusReport> {
    let client = shared.client.lock().unwrap().clone();
    let readiness = client.readiness().await;
    let ready = readiness == crate::prometheus::Readiness::Ready;
    let listener_problem = match &readiness {
        crate::prometheus::Readiness::Refused(e) => Some(e.to_string()),
        _ => None,
    };
    // Not ready: whether other users hold its connections (a walk of the kernel's
    // established connections, off the event loop).
    let connections_held = if readiness == crate::prometheus::Readiness::NotReady {
        let port = client.port().unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let by_uid = crate::process::connections_to(server);
            crate::status::connections_held(&by_uid, nix::unistd::geteuid().as_raw(), port)
        })
        .await
        .unwrap_or(None)
    } else {
        None
    };
    let mut health = HashMap::new();
    let mut sd_errors = 0.0;
    let mut sizes = crate::status::ScrapeSizes::default();
    let mut over_limit_scrapes = 0.0;
    // The first answer raywatch could not read (too large, not JSON, another type):
    // shown in the report, and the queries after it are not sent.
    let mut read_error = None;
    if ready {
        if let Some(samples) = kept(
            client.instant(&crate::status::ScrapeSizes::promql()).await,
            &mut read_error,
        ) {
            sizes = crate::status::ScrapeSizes::from_samples(&samples);
        }
        if read_error.is_none()
            && let Some(samples) = kept(
                client
                    .instant("sum(prometheus_target_scrapes_exceeded_sample_limit_total)")
                    .await,
                &mut read_error,
            )
        {
            over_limit_scrapes = samples
                .first()
                .and_then(|s| s.value.1.parse().ok())
                .unwrap_or(0.0);
        }
        let up = format!("up{{job=\"{}\"}}", crate::prometheus::RAY_JOB);
        if read_error.is_none()
            && let Some(samples) = kept(client.instant(&up).await, &mut read_error)
        {
            for s in samples {
                let (Some(c), Some(i)) = (s.metric.get("ray_io_cluster"), s.metric.get("instance"))
                else {
                    continue;
                };
                health.insert(
                    (c.clone(), i.clone()),
                    s.value.1.parse::<f64>().unwrap_or(0.0),
                );
            }
        }
        if read_error.is_none()
            && let Some(samples) = kept(
                client
                    .instant("sum(prometheus_sd_file_watcher_errors_total)")
                    .await,
                &mut read_error,
            )
        {
            sd_errors = samples
                .first()
                .and_then(|s| s.value.1.parse().ok())
                .unwrap_or(0.0);
        }
    }
    let grafana_port = shared.settings.borrow().grafana_port;
    let grafana_ready = shared
        .grafana
        .as_ref()
        .is_some_and(|g| g.status.lock().unwrap().pid.is_some())
        && reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client")
            .get(format!("http://127.0.0.1:{}/api/health", grafana_port))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
    let (mut report, log) = {
        let core = shared.core.lock().unwrap();
        (
            core.report(&shared, ready, grafana_ready, &health),
            core.home.prometheus_log(),
        )
    };
    report.prometheus.sd_watcher_errors = sd_errors;
    if let Some(dir) = report.prometheus.data_dir.clone() {
        // A walk of the data folder (a few hundred files): off the event loop.
        let (bytes, free) = tokio::task::spawn_blocking(move || crate::prometheus::disk_use(&dir))
            .await
            .unwrap_or((0, None));
        report.prometheus.data_bytes = Some(bytes);
        report.prometheus.data_free_bytes = free;
    }
    let limit = shared.settings.borrow().sample_limit;
    crate::status::annotate(&mut report, &health, &sizes, limit);
    report.prometheus.scrapes_over_sample_limit = over_limit_scrapes;
    report.prometheus.listener_problem = listener_problem;
    report.prometheus.connections_held = connections_held;
    report.prometheus.read_error = read_error;
    let settings = shared.settings.borrow().clone();
    if !settings.remote_write.is_empty() {
        let own = if ready && report.prometheus.read_error.is_none() {
            client.get_text("/metrics").await.unwrap_or_default()
        } else {
            String::new()
        };
        report.remote_write = crate::remote_write::status(&settings, &own, &log);
    }
    Ok(Json(report))
}

async fn attach_handler(
    AxState(shared): AxState<Arc<Shared>>,
    Json(req): Json<AttachRequest>,
) -> ApiResult<AttachResponse> {
    let result = shared.core.lock().unwrap().attach(req);
    shared.wake.notify_one();
    result.map(Json).map_err(refused)
}

async fn detach_handler(
    AxState(shared): AxState<Arc<Shared>>,
    Json(req): Json<DetachRequest>,
) -> ApiResult<serde_json::Value> {
    let result = shared.core.lock().unwrap().detach(&req.name);
    shared.wake.notify_one();
    result
        .map(|()| Json(serde_json::json!({})))
        .map_err(refused)
}

/// An error answer whose HTTP status comes from the refusal's kind.
fn refused(r: Refusal) -> (StatusCode, Json<ApiError>) {
    let code = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    api_error(code, r.to_string())
}

async fn shutdown_handler(AxState(shared): AxState<Arc<Shared>>) -> Json<serde_json::Value> {
    let _ = shared.shutdown.send(true);
    Json(serde_json::json!({}))
}

async fn config_handler(
    AxState(shared): AxState<Arc<Shared>>,
    Json(wanted): Json<StackConfig>,
) -> ApiResult<crate::api::ReconfigureResponse> {
    let bad = |e: String| api_error(StatusCode::BAD_REQUEST, e);
    let mut core = shared.core.lock().unwrap();
    // The live settings, which include a port the supervisor moved Prometheus to.
    let old = shared.settings.borrow().clone();
    if wanted.prometheus_port != old.prometheus_port
        || wanted.prometheus_bin != old.prometheus_bin
        || wanted.grafana_port != old.grafana_port
        || wanted.grafana_bin != old.grafana_bin
        || wanted.sd_listen != old.sd_listen
        || wanted.sd_tls_cert != old.sd_tls_cert
        || wanted.sd_tls_key != old.sd_tls_key
    {
        return Err(bad(
            "ports, binaries and --sd-listen change only on a fresh start (raywatch down, then up)"
                .into(),
        ));
    }
    // Validated before anything is replaced: a bad config keeps the last good one.
    crate::top::rules::for_stack(&wanted)
        .and_then(|rules| crate::prometheus::write_files(&core.home, &wanted, rules.as_ref()))
        .map_err(|e| bad(format!("{e:#}")))?;
    crate::grafana::write_files(&core.home, &wanted).map_err(|e| bad(format!("{e:#}")))?;
    wanted
        .save(&core.home.config())
        .map_err(|e| bad(format!("{e:#}")))?;
    let mut changes = Vec::new();
    let mut note = |what: &str, from: String, to: String| {
        if from != to {
            changes.push(format!("{what} {from} -> {to}"));
        }
    };
    let d = |d: Duration| humantime::format_duration(d).to_string();
    note(
        "scrape interval",
        d(old.scrape_interval),
        d(wanted.scrape_interval),
    );
    note("retention", d(old.retention), d(wanted.retention));
    note("liveness", d(old.liveness), d(wanted.liveness));
    note(
        "default roots",
        old.default_roots.to_string(),
        wanted.default_roots.to_string(),
    );
    note(
        "watch",
        format!("{:?}", old.watch),
        format!("{:?}", wanted.watch),
    );
    note(
        "trusted uids",
        format!("{:?}", old.trust_uids),
        format!("{:?}", wanted.trust_uids),
    );
    note(
        "grafana anonymous",
        old.grafana_anonymous.to_string(),
        wanted.grafana_anonymous.to_string(),
    );
    let urls = |c: &StackConfig| {
        c.remote_write
            .iter()
            .map(|r| crate::remote_write::redact(&r.url))
            .collect::<Vec<_>>()
    };
    note(
        "remote write",
        format!("{:?}", urls(&old)),
        format!("{:?}", urls(&wanted)),
    );
    note("agent", old.agent.to_string(), wanted.agent.to_string());
    note("ray_host", old.ray_host(), wanted.ray_host());
    note(
        "query url",
        format!("{:?}", old.query_url),
        format!("{:?}", wanted.query_url),
    );
    note(
        "sample limit",
        old.sample_limit.to_string(),
        wanted.sample_limit.to_string(),
    );
    note(
        "dropped labels",
        format!("{:?}", old.drop_labels),
        format!("{:?}", wanted.drop_labels),
    );
    note(
        "top's recording rules",
        (!old.no_top_rules).to_string(),
        (!wanted.no_top_rules).to_string(),
    );
    let reload = wanted.scrape_interval != old.scrape_interval
        || wanted.no_top_rules != old.no_top_rules
        || wanted.remote_write != old.remote_write
        || wanted.ray_host() != old.ray_host()
        || wanted.sample_limit != old.sample_limit
        || wanted.drop_labels != old.drop_labels;

    shared.settings.send_replace(wanted.clone());
    core.registry.set_liveness(wanted.liveness);
    core.trusted = wanted
        .trust_uids
        .iter()
        .copied()
        .chain([nix::unistd::geteuid().as_raw()])
        .collect();
    core.full_scan();
    drop(core);
    if wanted.retention != old.retention || wanted.agent != old.agent {
        shared.prometheus.restart();
        changes.push("Prometheus restarted (retention and agent mode are flags)".into());
    } else if reload {
        shared.prometheus.signal(nix::sys::signal::Signal::SIGHUP);
        changes.push("Prometheus reloaded (SIGHUP)".into());
    }
    if (wanted.grafana_anonymous != old.grafana_anonymous
        || wanted.scrape_interval != old.scrape_interval)
        && let Some(g) = &shared.grafana
    {
        g.restart();
    }
    tracing::info!("configuration changed: {}", changes.join("; "));
    shared.wake.notify_one();
    Ok(Json(crate::api::ReconfigureResponse { changes }))
}
