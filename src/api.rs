//! The control API: HTTP over a Unix socket in `<home>/run/` that only the owner can open.
//! Its routes ([`Route`]) and typed requests ([`Request`]) are declared here once,
//! for the CLI's client ([`request`]) and the daemon's router alike.

use std::path::Path;

use crate::error::HintExt;
use anyhow::{Context, Result};
use axum::body::Bytes;
pub use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::StackConfig;
use crate::status::StatusReport;

/// A route of the control API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The status report.
    Status,
    /// Follow a folder outside the watched roots.
    Attach,
    /// Let an attached folder go.
    Detach,
    /// Stop the stack.
    Shutdown,
    /// Apply changed settings.
    Config,
}

impl Route {
    pub const ALL: [Route; 5] = [
        Route::Status,
        Route::Attach,
        Route::Detach,
        Route::Shutdown,
        Route::Config,
    ];

    pub const fn path(self) -> &'static str {
        match self {
            Route::Status => "/v1/status",
            Route::Attach => "/v1/attach",
            Route::Detach => "/v1/detach",
            Route::Shutdown => "/v1/shutdown",
            Route::Config => "/v1/config",
        }
    }

    pub fn method(self) -> Method {
        match self {
            Route::Status => Method::GET,
            Route::Attach | Route::Detach | Route::Shutdown | Route::Config => Method::POST,
        }
    }
}

/// A request of the control API: its route, whether it has a body (itself, as
/// JSON), and the answer it gets.
pub trait Request: Serialize {
    const ROUTE: Route;
    const HAS_BODY: bool = true;
    type Response: DeserializeOwned;
}

/// Asks for the status report.
#[derive(Debug, Serialize)]
pub struct StatusRequest;

impl Request for StatusRequest {
    const ROUTE: Route = Route::Status;
    const HAS_BODY: bool = false;
    type Response = StatusReport;
}

/// Asks the daemon to stop the stack.
#[derive(Debug, Serialize)]
pub struct ShutdownRequest;

impl Request for ShutdownRequest {
    const ROUTE: Route = Route::Shutdown;
    const HAS_BODY: bool = false;
    type Response = Done;
}

/// The settings `up` wants on a running stack.
impl Request for StackConfig {
    const ROUTE: Route = Route::Config;
    type Response = ReconfigureResponse;
}

impl Request for AttachRequest {
    const ROUTE: Route = Route::Attach;
    type Response = AttachResponse;
}

impl Request for DetachRequest {
    const ROUTE: Route = Route::Detach;
    type Response = Done;
}

/// The answer of a request that has nothing to say but that it was done: `{}`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Done {}

#[derive(Debug, Serialize, Deserialize)]
pub struct AttachRequest {
    pub path: std::path::PathBuf,
    pub name: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AttachResponse {
    /// The names of the clusters found through this attachment right now.
    pub clusters: Vec<String>,
}

/// What a configuration change did.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReconfigureResponse {
    pub changes: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DetachRequest {
    pub name: String,
}

/// An error body: what went wrong, for the CLI to print.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// Why the daemon refused a request. The HTTP status comes from the kind, so
/// a failure to save is never reported as "not found".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request itself is wrong (a bad name, a path that is not Ray's).
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The daemon failed to do it (e.g. could not write its state).
    #[error("{0}")]
    Internal(String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Invalid(_) => 400,
            Refusal::NotFound(_) => 404,
            Refusal::Internal(_) => 500,
        }
    }
}

impl Refusal {
    /// The refusal an error answer stands for, on the CLI's side of the socket:
    /// 400 and 404 are the request's fault; any other status (500, or one the
    /// daemon's handlers never send) is the daemon's.
    pub fn from_status(status: u16, message: String) -> Refusal {
        match status {
            400 => Refusal::Invalid(message),
            404 => Refusal::NotFound(message),
            _ => Refusal::Internal(message),
        }
    }
}

impl From<String> for Refusal {
    fn from(s: String) -> Refusal {
        Refusal::Invalid(s)
    }
}

/// Whether the daemon could not be reached at all (as opposed to answering with an error).
#[derive(Debug, thiserror::Error)]
#[error("no answer on {socket}")]
pub struct NotRunning {
    pub socket: String,
    #[source]
    pub cause: std::io::Error,
}

/// An answer of the daemon that this raywatch cannot read: a bug, or a daemon
/// of another version.
#[derive(Debug, thiserror::Error)]
#[error("the daemon sent an answer this raywatch cannot read: {body}")]
pub struct Unreadable {
    pub body: String,
    #[source]
    pub cause: serde_json::Error,
}

/// How long the CLI waits for the daemon's answer: a daemon that does not
/// answer within this is reported, never waited on forever.
pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Sends one request to the daemon and returns the status and body.
pub async fn call(socket: &Path, route: Route, body: Option<Vec<u8>>) -> Result<(u16, Bytes)> {
    match tokio::time::timeout(TIMEOUT, call_untimed(socket, route, body)).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "the raywatch daemon did not answer within {} s on {}",
            TIMEOUT.as_secs(),
            socket.display()
        ))
        .hint("its log (<home>/logs/daemon.log) may say why; `raywatch down` stops it by PID"),
    }
}

async fn call_untimed(socket: &Path, route: Route, body: Option<Vec<u8>>) -> Result<(u16, Bytes)> {
    // reqwest over the Unix socket; the host name is only for the request line.
    let client = reqwest::Client::builder()
        .unix_socket(socket)
        .build()
        .context("cannot build the control client")?;
    let resp = client
        .request(route.method(), format!("http://raywatch{}", route.path()))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.unwrap_or_default())
        .send()
        .await
        .map_err(|e| -> anyhow::Error {
            if e.is_connect() {
                NotRunning {
                    socket: socket.display().to_string(),
                    cause: io_cause(&e),
                }
                .into()
            } else {
                anyhow::Error::new(e).context("the daemon did not answer")
            }
        })?;
    let status = resp.status().as_u16();
    // Bounded like every answer raywatch reads (a status at thousands of
    // clusters is a few MiB).
    let bytes = crate::prometheus::read_bounded(resp, "the daemon").await?;
    Ok((status, Bytes::from(bytes)))
}

/// The operating system's error behind a failed connect, for the message.
fn io_cause(e: &reqwest::Error) -> std::io::Error {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return std::io::Error::new(io.kind(), io.to_string());
        }
        source = s.source();
    }
    std::io::Error::other(e.to_string())
}

/// Sends a request and decodes its JSON answer, turning error answers into errors.
pub async fn request<R: Request>(socket: &Path, req: &R) -> Result<R::Response> {
    let body = R::HAS_BODY.then(|| serde_json::to_vec(req)).transpose()?;
    let (status, bytes) = call(socket, R::ROUTE, body).await?;
    if !(200..300).contains(&status) {
        let msg = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        return Err(Refusal::from_status(status, msg).into());
    }
    serde_json::from_slice(&bytes).map_err(|cause| {
        Unreadable {
            body: String::from_utf8_lossy(&bytes).into_owned(),
            cause,
        }
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_its_own_path_under_v1() {
        let mut paths: Vec<_> = Route::ALL.iter().map(|r| r.path()).collect();
        assert!(paths.iter().all(|p| p.starts_with("/v1/")), "{paths:?}");
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), Route::ALL.len());
        // Only the status report is read with GET; everything that changes the stack is POST.
        for r in Route::ALL {
            assert_eq!(r.method() == Method::GET, r == Route::Status, "{r:?}");
        }
    }

    #[test]
    fn a_done_answer_is_an_empty_object() {
        assert_eq!(serde_json::to_string(&Done {}).unwrap(), "{}");
        let _: Done = serde_json::from_str("{}").unwrap();
    }
}
