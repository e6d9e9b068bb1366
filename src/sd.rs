//! Pull for a fleet: every live cluster's target groups in Prometheus' http_sd format, behind a bearer token.
//!
//! Opt-in (`up --sd-listen ADDR:PORT`); raywatch opens no TCP listener for
//! this otherwise. It serves exactly one thing, `GET /sd`: the same target
//! groups the local Prometheus gets (after attribution, liveness and the
//! listener checks), each with a `ray_host` label, so a central Prometheus or
//! vmagent can tell this host's clusters from another's. Every request must
//! carry `Authorization: Bearer <token>` (the token in `<home>/secrets/sd-token`,
//! 0600), compared in constant time; a `GET /sd` without it gets 401, any
//! other request (another path, another method) 404, and neither learns anything.
//! The port is served within bounds (see [`crate::listen`]).
//! TLS is optional (`--sd-tls-cert` / `--sd-tls-key`, rustls).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

/// One http_sd target group.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SdGroup {
    pub targets: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// What the endpoint needs: the token and a way to get the current groups.
pub struct SdState {
    pub token: String,
    pub groups: Box<dyn Fn() -> Vec<SdGroup> + Send + Sync>,
}

/// Whether `headers` carry exactly `Bearer <token>` (constant-time compare).
pub fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = value.strip_prefix("Bearer ") else {
        return false;
    };
    given.as_bytes().ct_eq(token.as_bytes()).into()
}

async fn sd(State(state): State<Arc<SdState>>, headers: HeaderMap) -> Response {
    if !authorized(&headers, &state.token) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "",
        )
            .into_response();
    }
    axum::Json((state.groups)()).into_response()
}

/// Everything but `GET /sd` is refused the same way, before any authorization.
async fn nothing_else() -> StatusCode {
    StatusCode::NOT_FOUND
}

pub fn router(state: Arc<SdState>) -> axum::Router {
    axum::Router::new()
        // Another method on /sd is refused like any other path (not 405).
        .route("/sd", axum::routing::get(sd).fallback(nothing_else))
        .fallback(nothing_else)
        .with_state(state)
}

/// Loads a certificate chain and key (PEM) for the endpoint's TLS.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("--sd-tls-cert {}: cannot read", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "--sd-tls-cert {}: not a PEM certificate chain",
                cert.display()
            )
        })?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--sd-tls-key {}: not a PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS setup")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the --sd-tls-cert and --sd-tls-key do not match")?;
    Ok(Arc::new(config))
}

/// The endpoint's bounds: a central Prometheus or vmagent needs one
/// connection per refresh; whoever holds the rest waits, and a silent
/// client is dropped after the deadline.
pub const LIMITS: crate::listen::Limits = crate::listen::Limits {
    max_connections: 64,
    header_timeout: Duration::from_secs(10),
};

/// Serves the endpoint on `listener` until `shutdown` changes; over TLS when
/// `tls` is given (each handshake within [`LIMITS`], off the accept loop).
pub async fn serve(
    listener: TcpListener,
    state: Arc<SdState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let app = router(state);
    match tls {
        None => {
            crate::listen::serve(
                listener,
                "--sd-listen",
                LIMITS,
                app,
                shutdown,
                crate::listen::anyone,
            )
            .await
        }
        Some(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let handshake = move |stream: tokio::net::TcpStream, _peer: SocketAddr| {
                let accept = acceptor.accept(stream);
                async move { accept.await.ok() }
            };
            crate::listen::serve(listener, "--sd-listen", LIMITS, app, shutdown, handshake).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The status line the endpoint answers a raw request with.
    async fn status_of(addr: SocketAddr, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out.lines().next().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn anything_but_get_sd_is_not_found_and_get_without_the_token_unauthorized() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(SdState {
            token: "t0ken".into(),
            groups: Box::new(Vec::new),
        });
        let (_stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(serve(listener, state, None, rx));
        let ask = |line: &str, auth: &str| {
            format!(
                "{line} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
        };
        let bearer = "Authorization: Bearer t0ken\r\n";
        for (line, auth) in [
            ("POST /sd", ""),
            ("POST /sd", bearer),
            ("PUT /sd", bearer),
            ("DELETE /sd", ""),
            ("GET /", bearer),
            ("GET /sd/x", bearer),
        ] {
            let got = status_of(addr, &ask(line, auth)).await;
            assert!(got.contains(" 404 "), "{line} ({auth:?}): {got}");
        }
        let got = status_of(addr, &ask("GET /sd", "")).await;
        assert!(got.contains(" 401 "), "{got}");
        let got = status_of(addr, &ask("GET /sd", bearer)).await;
        assert!(got.contains(" 200 "), "{got}");
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "t0ken"));
        h.insert(header::AUTHORIZATION, "Bearer t0ken".parse().unwrap());
        assert!(authorized(&h, "t0ken"));
        for bad in [
            "Bearer t0ke",
            "Bearer t0kenX",
            "bearer t0ken",
            "Basic t0ken",
            "t0ken",
        ] {
            h.insert(header::AUTHORIZATION, bad.parse().unwrap());
            assert!(!authorized(&h, "t0ken"), "{bad}");
        }
    }
}
