//! Exporting one cluster's series from the stack's Prometheus as OpenMetrics
//! text, ready for `promtool tsdb create-blocks-from openmetrics`.
//!
//! Streaming, in bounded memory: the metric names of the cluster are listed,
//! then each metric is read in time chunks sized so that one answer holds
//! about [`CHUNK_SAMPLES`] samples, through instant queries of a range
//! selector (`metric{ray_io_cluster="…"}[Nms]`), which return the raw samples
//! with their own timestamps. Each chunk is written before the next is asked
//! for. Families are written one after the other (never interleaved), each
//! series' samples in time order, chunks disjoint (a sample on a boundary
//! belongs to the earlier chunk), so promtool finds no duplicate and no
//! out-of-order sample. Series the stack makes itself (alerts, recording rules'
//! `a:b` names, raywatch's own `raywatch_…` metrics about the cluster) are left
//! out: they are not the cluster's, they go on being written after it ends, and
//! the rules re-derive them on import.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::prometheus::Client;

/// About this many samples per answer from Prometheus (memory per chunk).
pub const CHUNK_SAMPLES: f64 = 200_000.0;
/// The longest chunk, whatever the series count.
const MAX_CHUNK: Duration = Duration::from_secs(6 * 3600);

/// What to export.
pub struct Request<'a> {
    pub client: &'a Client,
    /// Label matchers every exported series has (`ray_io_cluster`, `ray_session`).
    pub selector: Vec<(String, String)>,
    /// Unix seconds, inclusive.
    pub from: f64,
    /// Unix seconds, inclusive.
    pub to: f64,
    /// The scrape interval, to size the chunks.
    pub interval: Duration,
}

/// What an export wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub metrics: u64,
    pub series: u64,
    pub samples: u64,
    /// Bytes of the file (compressed when gzip).
    pub bytes: u64,
}

/// `--from`/`--to`: RFC 3339 (`2026-11-27T13:00:00Z`, or `2026-11-27 13:00:00`
/// as UTC), Unix seconds, or a duration ago (`2h`).
pub fn parse_time(s: &str) -> Result<f64, String> {
    if let Ok(t) = s.parse::<f64>()
        && t.is_finite()
        && t >= 0.0
    {
        return Ok(t);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(crate::clock::unix(t));
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(crate::clock::unix_now() - d.as_secs_f64());
    }
    Err(format!(
        "{s:?} is not a time: use RFC 3339 (2026-11-27T13:00:00Z), Unix seconds, or a duration ago (2h)"
    ))
}

fn matchers(selector: &[(String, String)]) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::quote::label_value(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Seconds as Prometheus' API takes them (millisecond precision).
fn secs(t: f64) -> String {
    format!("{:.3}", t)
}

/// Writes the export to `out` atomically (a temp file beside it, renamed
/// when complete); gzip when `out` ends in `.gz`.
pub async fn to_file(req: &Request<'_>, out: &Path) -> Result<Stats> {
    let mut staged = crate::atomic::stage_stream(out, 0o600)
        .with_context(|| format!("cannot write {}", out.display()))?;
    let gz = out.extension().is_some_and(|e| e == "gz");
    let mut stats = {
        let file = staged.file();
        if gz {
            let mut w = std::io::BufWriter::with_capacity(
                1 << 16,
                flate2::write::GzEncoder::new(file, flate2::Compression::default()),
            );
            let stats = write(req, &mut w).await?;
            w.into_inner()
                .map_err(|e| e.into_error())
                .and_then(|gz| gz.finish())
                .with_context(|| format!("cannot write {}", out.display()))?;
            stats
        } else {
            let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
            let stats = write(req, &mut w).await?;
            w.flush()
                .with_context(|| format!("cannot write {}", out.display()))?;
            stats
        }
    };
    stats.bytes = staged.file().metadata().map(|m| m.len()).unwrap_or(0);
    staged
        .commit(out)
        .with_context(|| format!("cannot put the export in place at {}", out.display()))?;
    Ok(stats)
}

/// Whether a metric is the stack's own: an alert's state, a recording rule's
/// output (by Prometheus' naming convention, the only names with ':'), or one of
/// raywatch's metrics (`raywatch_cluster_live`, …; Ray's are `ray_…`).
fn derived(name: &str) -> bool {
    matches!(name, "ALERTS" | "ALERTS_FOR_STATE")
        || name.contains(':')
        || name.starts_with("raywatch_")
}

/// Writes the OpenMetrics text of the request to `w`, ending with `# EOF`.
pub async fn write(req: &Request<'_>, w: &mut impl Write) -> Result<Stats> {
    let sel = matchers(&req.selector);
    let (from, to) = (secs(req.from), secs(req.to));
    let names: Vec<String> = req
        .client
        .api_get(
            "/api/v1/label/__name__/values",
            &[
                ("match[]", &format!("{{{sel}}}")),
                ("start", &from),
                ("end", &to),
            ],
        )
        .await?;
    let names: BTreeSet<String> = names.into_iter().filter(|n| !derived(n)).collect();
    if names.is_empty() {
        bail!(
            "Prometheus has no series with {{{sel}}} between {} and {}",
            crate::history::when(req.from),
            crate::history::when(req.to)
        );
    }
    let types = metric_types(req.client).await;
    let mut stats = Stats::default();
    for name in &names {
        let (family, kind) = family_of(name, &names, &types);
        writeln!(w, "# TYPE {family} {kind}")?;
        stats.metrics += 1;
        let metric_sel = format!("{{__name__={},{sel}}}", crate::quote::label_value(name));
        // Only counted: each label set is skipped, not kept.
        let series: Vec<serde::de::IgnoredAny> = req
            .client
            .api_get(
                "/api/v1/series",
                &[("match[]", &metric_sel), ("start", &from), ("end", &to)],
            )
            .await?;
        let count = series.len().max(1) as f64;
        drop(series);
        stats.series += count as u64;
        let per_series = CHUNK_SAMPLES / count;
        let chunk = (per_series * req.interval.as_secs_f64().max(0.001))
            .clamp(req.interval.as_secs_f64().max(1.0), MAX_CHUNK.as_secs_f64());
        // The first chunk starts just before `from`, so a sample at `from` is in.
        let mut start = req.from - 0.001;
        while start < req.to {
            let end = (start + chunk).min(req.to);
            stats.samples += write_chunk(req, w, name, &metric_sel, start, end).await?;
            start = end;
        }
    }
    writeln!(w, "# EOF")?;
    Ok(stats)
}

/// The samples of `name` in `(start, end]`, written as OpenMetrics lines.
async fn write_chunk(
    req: &Request<'_>,
    w: &mut impl Write,
    name: &str,
    metric_sel: &str,
    start: f64,
    end: f64,
) -> Result<u64> {
    let range_ms = ((end - start) * 1000.0).ceil().max(1.0) as u64;
    #[derive(serde::Deserialize)]
    struct Series {
        metric: BTreeMap<String, String>,
        values: Vec<(f64, String)>,
    }
    #[derive(serde::Deserialize)]
    struct Matrix {
        result: Vec<Series>,
    }
    let Matrix { mut result } = req
        .client
        .api_get(
            "/api/v1/query",
            &[
                ("query", &format!("{metric_sel}[{range_ms}ms]")),
                ("time", &secs(end)),
            ],
        )
        .await?;
    result.sort_by(|a, b| a.metric.cmp(&b.metric));
    let (start_ms, end_ms) = (ms(start), ms(end));
    let mut written = 0;
    let mut line = String::new();
    for s in &result {
        let labels = labels(&s.metric);
        for (t, v) in &s.values {
            let t = ms(*t);
            // Chunks are (start, end]: Prometheus 2 selects [start, end].
            if t <= start_ms || t > end_ms {
                continue;
            }
            line.clear();
            line.push_str(name);
            line.push_str(&labels);
            line.push(' ');
            line.push_str(v);
            line.push(' ');
            line.push_str(&format!(
                "{}.{:03}\n",
                t.div_euclid(1000),
                t.rem_euclid(1000)
            ));
            w.write_all(line.as_bytes())?;
            written += 1;
        }
    }
    Ok(written)
}

fn ms(t: f64) -> i64 {
    (t * 1000.0).round() as i64
}

/// `{a="1",b="2"}` (without `__name__`), values escaped as OpenMetrics wants.
fn labels(metric: &BTreeMap<String, String>) -> String {
    let mut out = String::from("{");
    for (k, v) in metric.iter().filter(|(k, _)| *k != "__name__") {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(&crate::quote::label_value(v));
    }
    if out.len() == 1 {
        return String::new();
    }
    out.push('}');
    out
}

/// The types Prometheus knows of the metrics it scrapes now (a dead
/// cluster's metrics are known while another cluster exports them).
async fn metric_types(client: &Client) -> BTreeMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Meta {
        #[serde(rename = "type")]
        kind: String,
    }
    let Ok(meta) = client
        .api_get::<BTreeMap<String, Vec<Meta>>>("/api/v1/metadata", &[])
        .await
    else {
        return BTreeMap::new();
    };
    meta.into_iter()
        .filter_map(|(name, list)| Some((name, list.into_iter().next()?.kind)))
        .collect()
}

/// The OpenMetrics family and type of metric `name`: a counter's samples
/// are `<family>_total`, a gauge's `<family>`; anything else (and a counter
/// whose family name another metric of the export has) is `unknown`, whose
/// family is the metric's own name.
fn family_of(
    name: &str,
    names: &BTreeSet<String>,
    types: &BTreeMap<String, String>,
) -> (String, &'static str) {
    let kind = types
        .get(name)
        .or_else(|| name.strip_suffix("_total").and_then(|base| types.get(base)));
    match kind.map(String::as_str) {
        Some("gauge") => (name.to_string(), "gauge"),
        Some("counter") => match name.strip_suffix("_total") {
            Some(base) if !names.contains(base) => (base.to_string(), "counter"),
            _ => (name.to_string(), "unknown"),
        },
        _ => (name.to_string(), "unknown"),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn alerts_and_recorded_series_are_derived_ray_series_are_not() {
        for name in [
            "ALERTS",
            "ALERTS_FOR_STATE",
            "raywatch_top:cpu",
            "job:up:sum",
            "raywatch_cluster_live",
        ] {
            assert!(derived(name), "{name}");
        }
        for name in [
            "ray_tasks",
            "ray_node_cpu_utilization",
            "up",
            "ALERTS_total",
        ] {
            assert!(!derived(name), "{name}");
        }
    }

    use super::*;

    #[test]
    fn label_values_are_escaped_for_openmetrics() {
        let m = BTreeMap::from([
            ("__name__".to_string(), "x".to_string()),
            ("a".to_string(), "q\"b\\n\nz\u{1b}".to_string()),
            ("b".to_string(), "".to_string()),
        ]);
        assert_eq!(labels(&m), "{a=\"q\\\"b\\\\n\\nz\u{1b}\",b=\"\"}");
        assert_eq!(labels(&BTreeMap::new()), "");
    }

    #[test]
    fn families_follow_openmetrics_naming() {
        let names: BTreeSet<String> = ["a_total", "b", "c_total", "c", "d_bucket"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let types = BTreeMap::from([
            ("a_total".to_string(), "counter".to_string()),
            ("b".to_string(), "gauge".to_string()),
            ("c".to_string(), "counter".to_string()),
            ("d".to_string(), "histogram".to_string()),
        ]);
        assert_eq!(
            family_of("a_total", &names, &types),
            ("a".into(), "counter")
        );
        assert_eq!(family_of("b", &names, &types), ("b".into(), "gauge"));
        // `c` exists as a metric of its own: no family `c` for c_total.
        assert_eq!(
            family_of("c_total", &names, &types),
            ("c_total".into(), "unknown")
        );
        assert_eq!(
            family_of("d_bucket", &names, &types),
            ("d_bucket".into(), "unknown")
        );
        assert_eq!(family_of("e", &names, &types), ("e".into(), "unknown"));
    }

    #[test]
    fn times_parse_in_every_form() {
        assert_eq!(parse_time("1764250000.5").unwrap(), 1764250000.5);
        assert_eq!(parse_time("2026-11-27T13:00:00Z").unwrap(), 1795784400.0);
        assert_eq!(parse_time("2026-11-27 13:00:00").unwrap(), 1795784400.0);
        let ago = parse_time("2h").unwrap();
        let now = crate::clock::unix_now();
        assert!((now - 7200.0 - ago).abs() < 5.0);
        let e = parse_time("yesterday").unwrap_err();
        assert!(e.contains("\"yesterday\"") && e.contains("RFC 3339"), "{e}");
    }
}
