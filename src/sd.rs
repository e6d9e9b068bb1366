//! Pull for a fleet: every live cluster's target groups in Prometheus' http_sd format, behind a bearer token.
//!
//! Opt-in (`up --sd-listen ADDR:PORT`); raywatch opens no TCP listener for
//! this otherwise. It serves exactly one thing, `GET /sd`: the same target
//! groups the local Prometheus gets (after attribution, liveness and the
//! listener checks), each with a `ray_host` label, so a central Prometheus or
//! vmagent can tell this host's clusters from another's. Every request must
//! carry `Authorization: Bearer <token>` (the token in `<home>/secrets/sd-token`,
//! 0600), compared in constant time; anything else gets 401 and learns nothing.
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
        .route("/sd", axum::routing::get(sd))
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

/// Serves the endpoint on `listener` until `shutdown` changes; over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    state: Arc<SdState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let app = router(state);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    match tls {
        None => {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await;
        }
        Some(config) => {
            let _ = axum::serve(TlsListener::new(listener, config), app)
                .with_graceful_shutdown(stop)
                .await;
        }
    }
}

/// Accepts TCP connections and completes their TLS handshakes in the
/// background (a slow client never holds up the others).
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
}

impl TlsListener {
    fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> TlsListener {
        let local = listener.local_addr().expect("bound");
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                    if let Ok(Ok(tls)) = handshake.await {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        TlsListener { rx, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
