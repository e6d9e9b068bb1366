//! The cardinality guard: Prometheus' per-target sample limit, the labels dropped at
//! scrape time, and how to tell a target the limit refuses (`status` reads the sizes).
//!
//! One Ray cluster can emit hundreds of thousands of series (Ray Data and custom
//! metrics, one series per `WorkerId`). Prometheus' `sample_limit` fails the whole
//! scrape of a target that offers more samples than the limit, so that target
//! stores nothing while every other target keeps being scraped; a `labeldrop`
//! metric relabelling removes a label (and the cardinality it carries) before
//! anything is stored.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The samples a single scrape of one target may carry before Prometheus refuses it.
pub const DEFAULT_SAMPLE_LIMIT: u64 = 200_000;

/// Prometheus' per-target `sample_limit` (`up --sample-limit N`); 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SampleLimit(pub u64);

impl Default for SampleLimit {
    fn default() -> SampleLimit {
        SampleLimit(DEFAULT_SAMPLE_LIMIT)
    }
}

impl SampleLimit {
    /// The limit, or None when scrapes are not limited.
    pub fn get(self) -> Option<u64> {
        (self.0 > 0).then_some(self.0)
    }
}

impl fmt::Display for SampleLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.get() {
            Some(n) => write!(f, "{n}"),
            None => f.write_str("none"),
        }
    }
}

/// Labels `--drop-label` refuses, and what dropping each would break.
const PROTECTED: &[(&str, &str)] = &[
    (
        "job",
        "Prometheus' target label: raywatch finds its targets by it",
    ),
    (
        "instance",
        "Prometheus' target label: the series of a cluster's nodes would collide, and `status` could no longer tell targets apart",
    ),
    (
        "ray_io_cluster",
        "raywatch's cluster label: clusters would merge, and Ray's dashboards filter on it",
    ),
    (
        "ray_session",
        "raywatch's session label: sessions of one temp dir would merge",
    ),
    ("ray_temp_dir", "raywatch's temp-dir label"),
    ("ray_user", "raywatch's user label"),
    (
        "ray_host",
        "raywatch's host label: a central store could no longer tell hosts apart",
    ),
    ("slurm_job_id", "raywatch's Slurm job label"),
    ("slurm_job_name", "raywatch's Slurm job label"),
    (
        "SessionName",
        "Ray's session label: Ray's own dashboards filter on it",
    ),
];

/// Why a `--drop-label` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DropLabelError {
    #[error(
        "--drop-label {0:?} is not a Prometheus label name (a letter or '_', then letters, digits or '_')"
    )]
    Syntax(String),
    #[error(
        "--drop-label {0:?}: names starting with \"__\" are Prometheus' internal labels (dropping __name__ would strip every metric of its name)"
    )]
    Reserved(String),
    #[error("--drop-label {name:?} would break raywatch: it is {why}")]
    Protected { name: String, why: &'static str },
}

/// Checks one `--drop-label` value: Prometheus' label-name syntax
/// (`[a-zA-Z_][a-zA-Z0-9_]*`), not internal, not a label raywatch or Ray's
/// dashboards rely on. A valid name needs no regex escaping in `labeldrop`.
pub fn check_drop_label(name: &str) -> Result<(), DropLabelError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DropLabelError::Syntax(name.to_string()));
    }
    if name.starts_with("__") {
        return Err(DropLabelError::Reserved(name.to_string()));
    }
    if let Some((_, why)) = PROTECTED.iter().find(|(p, _)| *p == name) {
        return Err(DropLabelError::Protected {
            name: name.to_string(),
            why,
        });
    }
    Ok(())
}

/// The `--drop-label` values, checked, in order, each once.
pub fn drop_labels(names: &[String]) -> Result<Vec<String>, DropLabelError> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        check_drop_label(n)?;
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    Ok(out)
}

/// Whether a target's last scrape failed for exceeding the limit: Prometheus
/// marks it down yet reports how many samples it offered (it parses on past
/// the limit to count them), which is more than the limit.
pub fn over_limit(healthy: Option<f64>, samples: Option<f64>, limit: SampleLimit) -> bool {
    match (healthy, samples, limit.get()) {
        (Some(up), Some(n), Some(limit)) => up < 1.0 && n > limit as f64,
        _ => false,
    }
}

/// A limit that would let `samples` through, with some headroom: 1.25 times,
/// rounded up to 10 000.
pub fn suggested_limit(samples: f64) -> u64 {
    let want = (samples * 1.25).ceil() as u64;
    want.div_ceil(10_000) * 10_000
}

/// What `status` says of a target the limit refuses.
pub fn over_limit_note(samples: f64, limit: SampleLimit) -> String {
    format!(
        "refused: its scrapes carry {samples:.0} samples, over the sample limit of {limit}; nothing of it is stored. \
         Raise the limit with `raywatch up --sample-limit {}`, or drop a label that multiplies series with `raywatch up --drop-label NAME`",
        suggested_limit(samples)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_names_follow_prometheus_syntax() {
        for ok in ["WorkerId", "_x", "a1_b2", "dataset", "operator"] {
            assert_eq!(check_drop_label(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "Worker-Id",
            "a.b",
            "a b",
            "é",
            "Worker|Id",
            "a*",
        ] {
            let err = check_drop_label(bad).unwrap_err();
            assert!(matches!(err, DropLabelError::Syntax(_)), "{bad}: {err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn labels_raywatch_and_ray_dashboards_rely_on_are_refused() {
        for name in [
            "ray_io_cluster",
            "ray_session",
            "job",
            "instance",
            "SessionName",
            "ray_host",
        ] {
            let err = check_drop_label(name).unwrap_err();
            assert!(matches!(err, DropLabelError::Protected { .. }), "{name}");
            assert!(err.to_string().contains(name), "{err}");
        }
        assert!(matches!(
            check_drop_label("__name__"),
            Err(DropLabelError::Reserved(_))
        ));
    }

    #[test]
    fn drop_labels_keep_order_and_come_once() {
        let names = ["WorkerId", "dataset", "WorkerId"].map(String::from);
        assert_eq!(drop_labels(&names).unwrap(), vec!["WorkerId", "dataset"]);
        assert!(drop_labels(&["ok".into(), "ray_user".into()]).is_err());
    }

    #[test]
    fn a_down_target_over_the_limit_is_flagged_and_nothing_else() {
        let limit = SampleLimit(200_000);
        assert!(over_limit(Some(0.0), Some(300_000.0), limit));
        assert!(!over_limit(Some(1.0), Some(150_000.0), limit));
        // Down for another reason (connection refused: 0 samples).
        assert!(!over_limit(Some(0.0), Some(0.0), limit));
        // Exactly at the limit is allowed by Prometheus.
        assert!(!over_limit(Some(0.0), Some(200_000.0), limit));
        assert!(!over_limit(Some(0.0), Some(300_000.0), SampleLimit(0)));
        assert!(!over_limit(None, Some(300_000.0), limit));
    }

    #[test]
    fn the_note_names_the_limit_and_the_flag_that_raises_it() {
        let note = over_limit_note(300_000.0, SampleLimit(200_000));
        assert!(note.contains("300000 samples"), "{note}");
        assert!(note.contains("sample limit of 200000"), "{note}");
        assert!(note.contains("raywatch up --sample-limit 380000"), "{note}");
        assert_eq!(suggested_limit(1.0), 10_000);
        assert_eq!(suggested_limit(8000.0), 10_000);
        assert_eq!(SampleLimit(0).to_string(), "none");
        assert_eq!(SampleLimit::default().0, DEFAULT_SAMPLE_LIMIT);
    }
}
