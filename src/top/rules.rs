//! The recording rules behind `raywatch top`: what the stack's Prometheus records for it every
//! scrape interval, how `top` finds out they are there, and the queries that read them.
//!
//! Evaluating the per-cluster values live costs Prometheus a few hundred milliseconds per
//! refresh at 1000 clusters ([`super::queries::cluster_values`]). Recorded once per
//! scrape interval by the rule group [`GROUP`], a refresh only selects the recorded
//! series: `raywatch_top:<field>{rw_field="<field>"}` for every field, keyed like the
//! live values (`ray_host`, `ray_io_cluster`, `ray_user`), same expressions, so the same
//! semantics (Ray's name alternatives, absent values absent, never a 0 instead).
//! `last_seen` honours `top`'s window: [`SCRAPED`] holds each cluster's newest scrape
//! time at every evaluation, and `top` takes its newest sample within the window.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::queries::{FIELD, KEY, branch, cluster_values, duration, join_or};
use crate::prometheus::RuleGroup;

/// The rule group's name in the rules file and in `/api/v1/rules`.
pub const GROUP: &str = "raywatch_top";
/// The prefix of every recorded series' name.
pub const PREFIX: &str = "raywatch_top:";
/// Each cluster's newest scrape (unix seconds), as of each evaluation.
pub const SCRAPED: &str = "raywatch_top:scraped";

/// A Prometheus rules file (`rule_files` of prometheus.yml).
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct RuleFile {
    pub groups: Vec<Group>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Group {
    pub name: String,
    /// How often the group is evaluated: the stack's scrape interval.
    pub interval: String,
    pub rules: Vec<Rule>,
}

/// A recording rule.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Rule {
    pub record: String,
    pub expr: String,
    /// Set on every recorded series: its field in [`FIELD`], so that reading
    /// them is a plain selector (no `label_replace` over every series per refresh).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// The names of every series `top` reads from the rules.
pub fn records() -> Vec<String> {
    cluster_values()
        .into_iter()
        .map(|(field, _)| format!("{PREFIX}{field}"))
        .chain([SCRAPED.to_string()])
        .collect()
}

/// The rules file: one group evaluated every `interval` (the scrape interval, so a
/// recorded value is at most one scrape older than the live one).
pub fn rule_file(interval: &str) -> RuleFile {
    let mut rules: Vec<Rule> = cluster_values()
        .into_iter()
        .map(|(field, expr)| Rule {
            record: format!("{PREFIX}{field}"),
            expr,
            labels: BTreeMap::from([(FIELD.to_string(), field.to_string())]),
        })
        .collect();
    rules.push(Rule {
        record: SCRAPED.into(),
        // A target gone is marked stale at once: its `up` leaves the answer.
        expr: format!("max by ({KEY}) (timestamp(up))"),
        labels: BTreeMap::new(),
    });
    RuleFile {
        groups: vec![Group {
            name: GROUP.into(),
            interval: interval.into(),
            rules,
        }],
    }
}

/// The rules the stack's Prometheus records for `top` under `cfg`, for the config
/// writer: none when told not to (`up --no-top-rules`), nor as an agent (which
/// evaluates no rules and keeps nothing to read).
pub fn for_stack(
    cfg: &crate::config::StackConfig,
) -> anyhow::Result<Option<crate::prometheus::RecordingRules>> {
    if cfg.no_top_rules || cfg.agent {
        return Ok(None);
    }
    let file = rule_file(&crate::config::prometheus_duration(cfg.scrape_interval));
    Ok(Some(crate::prometheus::RecordingRules {
        yaml: serde_yaml_ng::to_string(&file)?,
        prefix: PREFIX.into(),
    }))
}

/// Whether these groups (an API's `/api/v1/rules`) record everything `top` reads:
/// the group [`GROUP`] with every one of [`records`], none failing. Another raywatch's
/// group with other fields does not count: its series would read as absent values.
pub fn recorded(groups: &[RuleGroup]) -> bool {
    let Some(g) = groups.iter().find(|g| g.name == GROUP) else {
        return false;
    };
    records().iter().all(|r| {
        g.rules
            .iter()
            .any(|rule| &rule.name == r && rule.health != "err")
    })
}

/// The clusters view from the recorded series in `parts + 1` instant queries, for
/// Prometheus to answer side by side: the fields split in `parts` selectors (the
/// answer is most of the time: about 20 series per cluster), and `last_seen` of each
/// cluster scraped within `remember`.
pub fn clusters(remember: Duration, parts: usize) -> Vec<String> {
    let mut fields = vec![Vec::new(); parts.max(1)];
    for (i, (field, _)) in cluster_values().into_iter().enumerate() {
        fields[i % parts.max(1)].push(field);
    }
    fields
        .into_iter()
        // The fields' names are literal in a regex (letters, digits, '_').
        .map(|f| format!(r#"{{__name__=~"{PREFIX}({})"}}"#, f.join("|")))
        .chain([branch(
            "last_seen",
            &format!("max_over_time({SCRAPED}[{}])", duration(remember)),
        )])
        .collect()
}

/// The sparkline column (each cluster's average CPU and GPU %) from the recorded series.
pub fn sparklines() -> String {
    join_or(&[
        branch("cpu", &format!("{PREFIX}cpu")),
        branch("gpu", &format!("{PREFIX}gpu_util")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prometheus::RuleState;

    fn group(name: &str, rules: &[String], health: &str) -> RuleGroup {
        RuleGroup {
            name: name.into(),
            rules: rules
                .iter()
                .map(|r| RuleState {
                    name: r.clone(),
                    health: health.into(),
                })
                .collect(),
        }
    }

    #[test]
    fn only_the_whole_healthy_group_counts_as_recorded() {
        let all = records();
        assert!(recorded(&[group(GROUP, &all, "ok")]));
        assert!(recorded(&[group(GROUP, &all, "unknown")]));
        assert!(!recorded(&[]));
        assert!(!recorded(&[group("other", &all, "ok")]));
        assert!(!recorded(&[group(GROUP, &all[1..], "ok")]));
        assert!(!recorded(&[group(GROUP, &all, "err")]));
    }

    #[test]
    fn every_value_top_reads_is_recorded_and_the_prefix_is_a_plain_regex() {
        let file = rule_file("10s");
        let recorded: Vec<_> = file.groups[0]
            .rules
            .iter()
            .map(|r| r.record.clone())
            .collect();
        assert_eq!(recorded, records());
        assert!(records().iter().all(|r| r.starts_with(PREFIX)));
        assert!(
            PREFIX
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        );
        let parts = clusters(Duration::from_secs(600), 2);
        assert_eq!(parts.len(), 3);
        assert!(parts[2].contains("[600000ms]"), "{parts:?}");
        // Every field asked once.
        for (field, _) in cluster_values() {
            let asked = parts
                .iter()
                .filter(|p| {
                    p.contains(&format!("|{field}|"))
                        || p.contains(&format!("({field}|"))
                        || p.contains(&format!("|{field})"))
                })
                .count();
            assert_eq!(asked, 1, "{field}: {parts:?}");
        }
        assert!(
            cluster_values()
                .iter()
                .all(|(f, _)| f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        );
    }
}

#[cfg(test)]
mod promtool {
    use super::*;

    /// The rules file as raywatch writes it passes `promtool check rules`, and so do
    /// the queries reading it (promtool parses PromQL as rules).
    #[test]
    fn the_rules_file_and_its_queries_pass_promtool() {
        let mut file = rule_file("2s");
        file.groups.push(Group {
            name: "reads".into(),
            interval: "1m".into(),
            rules: clusters(Duration::from_secs(600), 2)
                .into_iter()
                .chain(clusters(super::super::REMEMBER_ALL, 3))
                .chain([sparklines()])
                .enumerate()
                .map(|(i, expr)| Rule {
                    record: format!("top:read{i}"),
                    expr,
                    labels: BTreeMap::new(),
                })
                .collect(),
        });
        crate::top::assert_promtool_accepts_rules(&serde_yaml_ng::to_string(&file).unwrap());
    }
}
