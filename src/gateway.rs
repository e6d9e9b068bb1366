//! Ray's way into the stack's Prometheus: a loopback port that serves only this user, with no credential to leak.
//!
//! Ray's Dashboard needs to query Prometheus, and it copies whatever it is
//! given (`RAY_PROMETHEUS_HEADERS`) into world-readable files of its session
//! folder. So Ray gets no credential at all: `RAY_PROMETHEUS_HOST` points here.
//! For every connection the daemon asks the kernel (sock_diag) about the
//! client's socket, that one socket by its address, and admits the connection
//! only when that socket is established and belongs to the stack's own uid;
//! then it forwards read-only Prometheus API calls, adding the credentials
//! itself (to a listener it verified, see [`crate::prometheus::Client`]). The
//! daemon holds this port for its whole life, so Prometheus restarts or moves
//! never leave Ray pointing at a port someone else can take.
//!
//! It also serves raywatch's own metrics ([`METRICS_PATH`]), which the stack's
//! Prometheus (the same uid) scrapes: no other user gets a connection, so no
//! credential is needed, nor can leak.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::{TcpListener, TcpStream};

/// Where raywatch's own metrics are served.
pub const METRICS_PATH: &str = crate::prometheus::schema::RAYWATCH_METRICS_PATH;
/// Their content type (OpenMetrics text).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Largest request body forwarded (a PromQL form post).
const MAX_BODY: usize = 1 << 20;

/// The Prometheus paths Ray's Dashboard (and any reader) may use: queries and
/// metadata, never the admin or lifecycle API.
pub fn allowed(method: &Method, path: &str) -> bool {
    const EXACT: &[&str] = &[
        "/api/v1/query",
        "/api/v1/query_range",
        "/api/v1/query_exemplars",
        "/api/v1/series",
        "/api/v1/labels",
        "/api/v1/metadata",
        "/api/v1/status/buildinfo",
        "/-/healthy",
        "/-/ready",
    ];
    let read = *method == Method::GET || *method == Method::HEAD;
    let query_post = *method == Method::POST && path.starts_with("/api/v1/");
    if !(read || query_post) {
        return false;
    }
    if EXACT.contains(&path) {
        return true;
    }
    // /api/v1/label/<name>/values
    path.strip_prefix("/api/v1/label/")
        .and_then(|rest| rest.strip_suffix("/values"))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'))
}

/// Counts what the gateway refused, for `status`.
#[derive(Default)]
pub struct Counters {
    pub refused_connections: AtomicU64,
    pub refused_requests: AtomicU64,
}

/// The gateway's bounds: Ray's Dashboards and this user's tools hold a few
/// connections each; idle keep-alive ones close after the deadline.
pub const LIMITS: crate::listen::Limits = crate::listen::Limits {
    max_connections: 512,
    header_timeout: Duration::from_secs(30),
};

/// Admits only connections whose client socket belongs to `uid` (see
/// [`crate::process::peer_uid`]): the kernel is asked about that one socket,
/// on a blocking thread, so the accept loop, the control API and discovery
/// never wait for it.
pub struct OwnerOnly {
    uid: u32,
    counters: Arc<Counters>,
    last_log: Mutex<Option<Instant>>,
}

impl OwnerOnly {
    pub fn new(uid: u32, counters: Arc<Counters>) -> Arc<OwnerOnly> {
        Arc::new(OwnerOnly {
            uid,
            counters,
            last_log: Mutex::new(None),
        })
    }

    /// The connection, when its client is the owner; else None (counted, and logged once a minute).
    pub async fn admit(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) -> Option<TcpStream> {
        let local = stream.local_addr().ok()?;
        let check = self.clone();
        let admitted = tokio::task::spawn_blocking(move || {
            let uid = crate::process::peer_uid(local, peer);
            if uid == Some(check.uid) {
                return true;
            }
            check.refused(peer, uid);
            false
        })
        .await
        .unwrap_or(false);
        admitted.then_some(stream)
    }

    fn refused(&self, peer: SocketAddr, uid: Option<u32>) {
        self.counters
            .refused_connections
            .fetch_add(1, Ordering::Relaxed);
        {
            let mut last = self.last_log.lock().unwrap();
            if last.is_some_and(|t| t.elapsed() <= Duration::from_secs(60)) {
                return;
            }
            *last = Some(Instant::now());
        }
        tracing::warn!(
            "gateway: refused a connection from {peer} ({}); only uid {} is served",
            match uid {
                Some(u) => format!("uid {u}, {}", crate::process::user_name(u)),
                None =>
                    "no established socket of any user: closed by its client, or not local".into(),
            },
            self.uid
        );
    }
}

/// Serves the gateway on `listener` until `shutdown` changes (see [`LIMITS`]).
pub async fn serve(
    listener: TcpListener,
    owner: Arc<OwnerOnly>,
    upstream: Arc<Upstream>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let admit = move |stream, peer| owner.clone().admit(stream, peer);
    crate::listen::serve(
        listener,
        "gateway",
        LIMITS,
        router(upstream),
        shutdown,
        admit,
    )
    .await
}

/// What the forwarding handler needs.
pub struct Upstream {
    /// The verified, authenticated client of the stack's Prometheus (follows port moves).
    pub client: Box<dyn Fn() -> crate::prometheus::Client + Send + Sync>,
    pub counters: Arc<Counters>,
    /// raywatch's own metrics, rendered now.
    pub metrics: Box<dyn Fn() -> String + Send + Sync>,
}

/// The router: raywatch's own metrics at [`METRICS_PATH`], every other
/// request through [`forward`].
pub fn router(upstream: Arc<Upstream>) -> axum::Router {
    axum::Router::new()
        .route(METRICS_PATH, axum::routing::get(own_metrics))
        .fallback(forward)
        .with_state(upstream)
}

async fn own_metrics(State(up): State<Arc<Upstream>>) -> Response {
    let text = (up.metrics)();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(METRICS_CONTENT_TYPE),
        )],
        text,
    )
        .into_response()
}

async fn forward(State(up): State<Arc<Upstream>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if !allowed(&method, &path) {
        up.counters.refused_requests.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::FORBIDDEN,
            "raywatch gateway: only Prometheus' query API is served here\n",
        )
            .into_response();
    }
    let query = req.uri().query().map(str::to_string);
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let body: Bytes = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "request too large\n").into_response(),
    };
    let client = (up.client)();
    match client
        .forward(method, &path, query.as_deref(), content_type, body)
        .await
    {
        Ok((status, headers, body)) => {
            let mut out = HeaderMap::new();
            if let Some(ct) = headers.get(header::CONTENT_TYPE) {
                out.insert(header::CONTENT_TYPE, ct.clone());
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, out, body).into_response()
        }
        Err(e) => {
            let mut out = HeaderMap::new();
            out.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            (
                StatusCode::BAD_GATEWAY,
                out,
                format!("raywatch gateway: {e:#}\n"),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_query_api_passes() {
        for (m, p) in [
            (Method::GET, "/api/v1/query"),
            (Method::POST, "/api/v1/query_range"),
            (Method::GET, "/api/v1/label/ray_io_cluster/values"),
            (Method::GET, "/-/healthy"),
        ] {
            assert!(allowed(&m, p), "{m} {p}");
        }
        for (m, p) in [
            (Method::POST, "/-/quit"),
            (Method::POST, "/-/reload"),
            (Method::PUT, "/api/v1/query"),
            (Method::POST, "/api/v1/admin/tsdb/delete_series"),
            (Method::GET, "/api/v1/admin/tsdb/snapshot"),
            (Method::GET, "/api/v1/status/config"),
            (Method::GET, "/api/v1/targets"),
            (Method::GET, "/metrics"),
            (Method::GET, "/graph"),
            (Method::GET, "/api/v1/label/a/b/values"),
        ] {
            assert!(!allowed(&m, p), "{m} {p}");
        }
    }
}
