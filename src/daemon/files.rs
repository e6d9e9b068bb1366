//! The files a stack's Prometheus and Grafana read, written from its settings.

use anyhow::Result;

use crate::config::StackConfig;
use crate::home::Home;

/// Writes Prometheus' files (with `top`'s recording rules and the alert rules
/// the settings ask for) and Grafana's, each checked before it replaces the old.
pub fn write(home: &Home, cfg: &StackConfig) -> Result<()> {
    let rules = rules(cfg)?;
    // Alertmanager's first: its check (amtool, the copies of secrets it reads)
    // is the likelier to refuse, and a refusal then leaves Prometheus' files as
    // they were (each file is checked before it replaces the old, not the set).
    crate::alertmanager::write_files(home, cfg)?;
    crate::prometheus::write_files(home, cfg, &rules)?;
    crate::grafana::write_files(home, cfg)
}

/// Every rules file the settings give the stack's Prometheus.
pub fn rules(cfg: &StackConfig) -> Result<crate::prometheus::Rules> {
    Ok(crate::prometheus::Rules {
        top: crate::top::rules::for_stack(cfg)?,
        alerts: crate::alerts::for_stack(cfg.no_default_alerts, cfg.agent, &cfg.alerts)?,
        // An agent evaluates no rules (`up` refuses --alert-rules with --agent).
        user: match cfg.agent {
            true => Vec::new(),
            false => cfg.user_rules.iter().map(|r| r.yaml.clone()).collect(),
        },
        alertmanager: crate::alertmanager::runs(cfg),
    })
}
