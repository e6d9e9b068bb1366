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
use axum::routing::{MethodFilter, MethodRouter, on};
use tokio::sync::watch;

use super::Shared;
use super::settings::Applied;
use crate::api::{ApiError, AttachRequest, AttachResponse, DetachRequest, Done, Refusal, Route};
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
    let mut app = axum::Router::new();
    for route in Route::ALL {
        app = app.route(route.path(), handler(route)?);
    }
    let app = app.with_state(shared);
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await;
    }))
}

/// Each route's handler, under the route's method.
fn handler(route: Route) -> Result<MethodRouter<Arc<Shared>>> {
    let method = MethodFilter::try_from(route.method())
        .with_context(|| format!("{route:?} has a method axum cannot route"))?;
    Ok(match route {
        Route::Status => on(method, status_handler),
        Route::Attach => on(method, attach_handler),
        Route::Detach => on(method, detach_handler),
        Route::Shutdown => on(method, shutdown_handler),
        Route::Config => on(method, config_handler),
    })
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
    let connections_held = if readiness == crate::prometheus::Readiness::NotReady {
        connections_held(client.port().unwrap_or_default()).await
    } else {
        None
    };
    let numbers = if ready {
        Numbers::ask(&client).await
    } else {
        Numbers::default()
    };
    let grafana_ready = grafana_ready(&shared).await;
    let (mut report, log) = {
        let core = shared.core.lock().unwrap();
        (
            core.report(&shared, ready, grafana_ready, &numbers.health),
            core.home.prometheus_log(),
        )
    };
    report.prometheus.sd_watcher_errors = numbers.sd_errors;
    if let Some(dir) = report.prometheus.data_dir.clone() {
        // A walk of the data folder (a few hundred files): off the event loop.
        let (bytes, free) = tokio::task::spawn_blocking(move || crate::prometheus::disk_use(&dir))
            .await
            .unwrap_or((0, None));
        report.prometheus.data_bytes = Some(bytes);
        report.prometheus.data_free_bytes = free;
    }
    let settings = shared.settings.borrow().clone();
    crate::status::annotate(
        &mut report,
        &numbers.health,
        &numbers.sizes,
        settings.sample_limit,
    );
    report.prometheus.scrapes_over_sample_limit = numbers.over_limit_scrapes;
    report.prometheus.listener_problem = listener_problem;
    report.prometheus.connections_held = connections_held;
    report.prometheus.read_error = numbers.read_error;
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

/// Prometheus not ready: whether other users hold its connections (a walk of the
/// kernel's established connections, off the event loop).
async fn connections_held(port: u16) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        let server = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let by_uid = crate::process::connections_to(server);
        crate::status::connections_held(&by_uid, nix::unistd::geteuid().as_raw(), port)
    })
    .await
    .unwrap_or(None)
}

/// What the status report asks a ready Prometheus.
#[derive(Default)]
struct Numbers {
    /// `up` of each (cluster, instance).
    health: HashMap<(String, String), f64>,
    sd_errors: f64,
    sizes: crate::status::ScrapeSizes,
    over_limit_scrapes: f64,
    /// The first answer raywatch could not read (too large, not JSON, another
    /// type): shown in the report, and the queries after it are not sent.
    read_error: Option<String>,
}

impl Numbers {
    async fn ask(client: &crate::prometheus::Client) -> Numbers {
        let mut n = Numbers::default();
        let first = |samples: &[crate::prometheus::Sample]| {
            samples
                .first()
                .and_then(|s| s.value.1.parse().ok())
                .unwrap_or(0.0)
        };
        let sizes = client.instant(&crate::status::ScrapeSizes::promql()).await;
        if let Some(samples) = kept(sizes, &mut n.read_error) {
            n.sizes = crate::status::ScrapeSizes::from_samples(&samples);
        }
        if n.read_error.is_none() {
            let over = client
                .instant("sum(prometheus_target_scrapes_exceeded_sample_limit_total)")
                .await;
            if let Some(samples) = kept(over, &mut n.read_error) {
                n.over_limit_scrapes = first(&samples);
            }
        }
        if n.read_error.is_none() {
            let up = format!("up{{job=\"{}\"}}", crate::prometheus::RAY_JOB);
            if let Some(samples) = kept(client.instant(&up).await, &mut n.read_error) {
                for s in samples {
                    let (Some(c), Some(i)) =
                        (s.metric.get("ray_io_cluster"), s.metric.get("instance"))
                    else {
                        continue;
                    };
                    n.health.insert(
                        (c.clone(), i.clone()),
                        s.value.1.parse::<f64>().unwrap_or(0.0),
                    );
                }
            }
        }
        if n.read_error.is_none() {
            let sd = client
                .instant("sum(prometheus_sd_file_watcher_errors_total)")
                .await;
            if let Some(samples) = kept(sd, &mut n.read_error) {
                n.sd_errors = first(&samples);
            }
        }
        n
    }
}

/// Whether Grafana runs and answers its health check.
async fn grafana_ready(shared: &Shared) -> bool {
    let running = shared
        .grafana
        .as_ref()
        .is_some_and(|g| g.status.lock().unwrap().pid.is_some());
    if !running {
        return false;
    }
    let port = shared.settings.borrow().grafana_port;
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client")
        .get(format!("http://127.0.0.1:{port}/api/health"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
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
) -> ApiResult<Done> {
    let result = shared.core.lock().unwrap().detach(&req.name);
    shared.wake.notify_one();
    result.map(|()| Json(Done {})).map_err(refused)
}

/// An error answer whose HTTP status comes from the refusal's kind.
fn refused(r: Refusal) -> (StatusCode, Json<ApiError>) {
    let code = StatusCode::from_u16(r.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    api_error(code, r.to_string())
}

async fn shutdown_handler(AxState(shared): AxState<Arc<Shared>>) -> Json<Done> {
    let _ = shared.shutdown.send(true);
    Json(Done {})
}

/// `up` on a running stack: the settings it wants, applied as [`super::settings`]
/// plans. The files are written (bcrypt, promtool) on a blocking thread, and the
/// core's lock is taken only after, for the daemon's own part.
async fn config_handler(
    AxState(shared): AxState<Arc<Shared>>,
    Json(wanted): Json<StackConfig>,
) -> ApiResult<crate::api::ReconfigureResponse> {
    let writer = shared.writer.clone();
    let Applied { new, plan } = tokio::task::spawn_blocking(move || writer.change(wanted))
        .await
        .map_err(|e| {
            api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the change was not made: {e}"),
            )
        })?
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, e))?;
    shared.core.lock().unwrap().follow_settings(&new);
    if plan.restart_prometheus {
        shared.prometheus.restart();
    } else if plan.reload_prometheus {
        shared.prometheus.signal(nix::sys::signal::Signal::SIGHUP);
    }
    if plan.restart_grafana
        && let Some(g) = &shared.grafana
    {
        g.restart();
    }
    if plan.reload_alertmanager
        && let Some(a) = &shared.alertmanager
    {
        a.signal(nix::sys::signal::Signal::SIGHUP);
    }
    let prometheus = plan.prometheus();
    let mut changes = plan.changes;
    changes.extend(prometheus.map(String::from));
    tracing::info!("configuration changed: {}", changes.join("; "));
    shared.wake.notify_one();
    Ok(Json(crate::api::ReconfigureResponse { changes }))
}
