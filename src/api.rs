//! The control API: HTTP over a Unix socket in `<home>/run/` that only the owner can open.

use std::path::Path;

use crate::error::HintExt;
use anyhow::{Context, Result};
use axum::body::Bytes;
pub use reqwest::Method;
use serde::{Deserialize, Serialize};

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
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, Bytes)> {
    match tokio::time::timeout(TIMEOUT, call_untimed(socket, method, path, body)).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "the raywatch daemon did not answer within {} s on {}",
            TIMEOUT.as_secs(),
            socket.display()
        ))
        .hint("its log (<home>/logs/daemon.log) may say why; `raywatch down` stops it by PID"),
    }
}

async fn call_untimed(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, Bytes)> {
    // reqwest over the Unix socket; the host name is only for the request line.
    let client = reqwest::Client::builder()
        .unix_socket(socket)
        .build()
        .context("cannot build the control client")?;
    let resp = client
        .request(method, format!("http://raywatch{path}"))
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
    let bytes = resp
        .bytes()
        .await
        .context("the daemon's answer broke off")?;
    Ok((status, bytes))
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

/// Sends a request and decodes a JSON answer, turning error answers into errors.
pub async fn call_json<T: for<'de> Deserialize<'de>>(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&impl Serialize>,
) -> Result<T> {
    let body = body.map(serde_json::to_vec).transpose()?;
    let (status, bytes) = call(socket, method, path, body).await?;
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
