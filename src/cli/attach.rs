//! `raywatch attach` and `raywatch detach`: following a Ray temp dir, session or
//! discovery file outside the watched roots, and letting it go.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use hyper::Method;

use super::{hint_up, runtime};
use crate::api::{self, AttachRequest, AttachResponse, DetachRequest};
use crate::escape;
use crate::home::Home;

pub(super) fn attach(home: &Home, path: PathBuf, name: Option<String>) -> Result<ExitCode> {
    let rt = runtime()?;
    let abs =
        std::path::absolute(&path).with_context(|| format!("bad path {}", escape::path(&path)))?;
    let req = AttachRequest { path: abs, name };
    let resp: AttachResponse = rt
        .block_on(api::call_json(
            &home.socket(),
            Method::POST,
            "/v1/attach",
            Some(&req),
        ))
        .map_err(hint_up)?;
    if resp.clusters.is_empty() {
        println!(
            "attached {}; no Ray cluster there yet, it will appear when one starts",
            escape::path(&path)
        );
    } else {
        println!(
            "attached {}: cluster {}",
            escape::path(&path),
            resp.clusters
                .iter()
                .map(|c| escape::text(c))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn detach(home: &Home, name: String) -> Result<ExitCode> {
    let rt = runtime()?;
    let _: serde_json::Value = rt
        .block_on(api::call_json(
            &home.socket(),
            Method::POST,
            "/v1/detach",
            Some(&DetachRequest { name: name.clone() }),
        ))
        .map_err(hint_up)?;
    println!("detached {}", escape::text(&name));
    Ok(ExitCode::SUCCESS)
}
