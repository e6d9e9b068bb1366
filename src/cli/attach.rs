//! `raywatch attach` and `raywatch detach`: following a Ray temp dir, session or
//! discovery file outside the watched roots, and letting it go.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{Exit, call_daemon, runtime};
use crate::api::{AttachRequest, AttachResponse, DetachRequest};
use crate::escape;
use crate::home::Home;

pub(super) fn attach(home: &Home, path: PathBuf, name: Option<String>) -> Result<Exit> {
    let rt = runtime()?;
    let abs =
        std::path::absolute(&path).with_context(|| format!("bad path {}", escape::path(&path)))?;
    let req = AttachRequest { path: abs, name };
    let resp: AttachResponse = rt.block_on(call_daemon(home, &req))?;
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
    Ok(Exit::Success)
}

pub(super) fn detach(home: &Home, name: String) -> Result<Exit> {
    let rt = runtime()?;
    rt.block_on(call_daemon(home, &DetachRequest { name: name.clone() }))?;
    println!("detached {}", escape::text(&name));
    Ok(Exit::Success)
}
