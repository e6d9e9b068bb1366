//! `raywatch status`: the daemon's report, as JSON or for people.

use std::process::ExitCode;

use anyhow::Result;

use super::{fetch_status, not_running, runtime};
use crate::escape;
use crate::home::Home;

pub(super) fn status(home: &Home, json: bool) -> Result<ExitCode> {
    let rt = runtime()?;
    match rt.block_on(fetch_status(home)) {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", crate::status::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if not_running(&e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"schema": crate::status::SCHEMA, "running": false, "home": home.root()})
                );
            } else {
                println!(
                    "raywatch is not running for {}; start it with `raywatch up`",
                    escape::path(home.root())
                );
            }
            Ok(ExitCode::from(3))
        }
        Err(e) => Err(e),
    }
}
