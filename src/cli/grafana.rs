//! `raywatch grafana`: helpers for pointing an existing Grafana at this stack's provisioning.

use anyhow::{Result, anyhow};

use super::{Exit, Hint};

use crate::escape;
use crate::home::Home;

pub(super) fn dir(home: &Home) -> Result<Exit> {
    let dir = home.grafana_dir().join("provisioning");
    if !dir.is_dir() {
        return Err(Hint::attach(
            anyhow!("{} does not exist yet", escape::path(&dir)),
            "run `raywatch up` first",
        ));
    }
    println!("{}", dir.display());
    println!("# to use it from an existing Grafana, add to its grafana.ini:");
    println!("[paths]");
    println!("provisioning = {}", dir.display());
    Ok(Exit::Success)
}
