//! The files a stack's Prometheus and Grafana read, written from its settings.

use anyhow::Result;

use crate::config::StackConfig;
use crate::home::Home;

/// Writes Prometheus' files (with `top`'s recording rules and the alert rules
/// the settings ask for) and Grafana's, each checked before it replaces the old.
pub fn write(home: &Home, cfg: &StackConfig) -> Result<()> {
    let rules = crate::prometheus::Rules {
        top: crate::top::rules::for_stack(cfg)?,
        alerts: crate::alerts::for_stack(cfg.no_default_alerts, cfg.agent, &cfg.alerts)?,
        alertmanager: crate::alertmanager::runs(cfg),
    };
    crate::prometheus::write_files(home, cfg, &rules)?;
    crate::alertmanager::write_files(home, cfg)?;
    crate::grafana::write_files(home, cfg)
}
