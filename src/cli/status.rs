//! `raywatch status`: the daemon's report, as JSON or for people.

use anyhow::Result;

use super::{Exit, fetch_status, not_running, runtime};
use crate::home::Home;

/// The alerts of a server stack's Prometheus, counted (None when it cannot be asked).
async fn alert_counts(
    home: &Home,
    report: &crate::status::StatusReport,
) -> Option<crate::status::AlertCounts> {
    if report.prometheus.mode == crate::status::PrometheusMode::Agent || !report.prometheus.ready {
        return None;
    }
    let alerts = crate::prometheus::Client::for_home(home)
        .ok()?
        .alerts()
        .await
        .ok()?;
    let count = |state: &str| alerts.iter().filter(|a| a.state == state).count();
    Some(crate::status::AlertCounts {
        firing: count("firing"),
        pending: count("pending"),
    })
}

pub(super) fn status(home: &Home, json: bool) -> Result<Exit> {
    let rt = runtime()?;
    match rt.block_on(fetch_status(home)) {
        Ok(mut report) => {
            rt.block_on(crate::ray_dashboard::annotate(&mut report));
            report.alerts = rt.block_on(alert_counts(home, &report));
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", crate::status::render(&report));
            }
            Ok(Exit::Success)
        }
        Err(e) => {
            // Scripts read a stopped stack from stdout too; the error (exit 3) and
            // its hint go to stderr as for every command that needs the daemon.
            if json && not_running(&e) {
                println!(
                    "{}",
                    serde_json::json!({"schema": crate::status::SCHEMA, "running": false, "home": home.root()})
                );
            }
            Err(e)
        }
    }
}
