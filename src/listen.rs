//! Serving HTTP on the daemon's TCP ports within bounds: a cap on open connections and a deadline for every request's headers.
//!
//! Every TCP port the daemon holds (the gateway, `--sd-listen`) is served
//! here, so that clients which connect and send nothing, or trickle, cannot
//! use up the daemon's file descriptors (which it needs to read Ray's files,
//! write its targets and answer `status`):
//! - at most [`Limits::max_connections`] connections are open at once; more
//!   wait in the kernel's backlog, where they cost the daemon nothing;
//! - a connection is admitted (TLS handshake, owner check) within
//!   [`Limits::header_timeout`], off the accept loop, so one slow admission
//!   holds up no other;
//! - each request's headers must arrive within the same time, and a
//!   keep-alive connection left idle that long is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once (being admitted, or served).
    pub max_connections: usize,
    /// For admission, for each request's headers, and for an idle keep-alive connection.
    pub header_timeout: Duration,
}

/// Serves `app` on `listener` within `limits` until `shutdown` changes.
/// `admit` turns an accepted connection into the stream to serve (a TLS
/// handshake, an owner check), or refuses it with `None`.
pub async fn serve<A, F, Io>(
    listener: TcpListener,
    what: &'static str,
    limits: Limits,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
    admit: A,
) where
    A: Fn(TcpStream, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Option<Io>> + Send + 'static,
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let admit = Arc::new(admit);
    let mut last_warning: Option<Instant> = None;
    let mut warn = |msg: String| {
        if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
            last_warning = Some(Instant::now());
            tracing::warn!("{what}: {msg}");
        }
    };
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.changed() => return,
        };
        if slots.available_permits() == 0 {
            warn(format!(
                "{} connections are open, the most served at once; more wait until one closes (idle ones close after {})",
                limits.max_connections,
                humantime::format_duration(limits.header_timeout)
            ));
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait, never spin.
                warn(format!("cannot accept a connection: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (admit, app, mut stop) = (admit.clone(), app.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = permit;
            let Ok(Some(io)) =
                tokio::time::timeout(limits.header_timeout, admit(stream, peer)).await
            else {
                return;
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(app));
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(limits.header_timeout, conn).await;
                }
            }
        });
    }
}

/// Admits every connection as it is (for [`serve`]).
pub async fn anyone(stream: TcpStream, _peer: SocketAddr) -> Option<TcpStream> {
    Some(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn app() -> axum::Router {
        axum::Router::new().route("/", axum::routing::get(|| async { "ok" }))
    }

    async fn get(addr: SocketAddr) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn idle_connections_are_capped_and_closed_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(false);
        let limits = Limits {
            max_connections: 2,
            header_timeout: Duration::from_millis(300),
        };
        tokio::spawn(serve(listener, "test", limits, app(), rx, anyone));
        assert!(get(addr).await.ends_with("ok"));
        // Two silent clients take both slots: a third waits in the backlog.
        let mut idle = Vec::new();
        for _ in 0..2 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let started = Instant::now();
        let answer = get(addr).await;
        assert!(answer.ends_with("ok"), "{answer}");
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "served before a slot was free"
        );
        // The silent ones were closed at the deadline.
        for mut c in idle {
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
                .await
                .expect("closed by the server")
                .ok();
        }
    }
}
