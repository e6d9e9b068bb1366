//! `raywatch grafana`: helpers for pointing an existing Grafana at this stack's provisioning.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::escape;
use crate::home::Home;

pub(super) fn dir(home: &Home) -> Result<ExitCode> {
    let dir = home.grafana_dir().join("provisioning");
    if !dir.is_dir() {
        bail!(
            "{} does not exist yet; run `raywatch up` first",
            escape::path(&dir)
        );
    }
    println!("{}", dir.display());
    println!("# to use it from an existing Grafana, add to its grafana.ini:");
    println!("[paths]");
    println!("provisioning = {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
