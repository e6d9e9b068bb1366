//! How `raywatch top` writes values for people (a dash where a series is absent, never 0),
//! the text of each cell, and the plain-text and JSON forms of `top --once`.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Cluster, Column, State};
use crate::escape;

/// A missing value.
pub const DASH: &str = "–";

pub fn bytes(v: Option<f64>) -> String {
    let Some(v) = v else { return DASH.into() };
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = v.max(0.0);
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 100.0 {
        format!("{v:.0}{}", UNITS[unit])
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

pub fn used_of(used: Option<f64>, total: Option<f64>) -> String {
    if used.is_none() && total.is_none() {
        return DASH.into();
    }
    format!("{}/{}", bytes(used), bytes(total))
}

pub fn percent(v: Option<f64>) -> String {
    v.map_or(DASH.into(), |v| format!("{v:.0}"))
}

pub fn num(v: Option<u64>) -> String {
    v.map_or(DASH.into(), |v| v.to_string())
}

pub fn age(secs: Option<f64>) -> String {
    let Some(s) = secs else { return DASH.into() };
    let s = s.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// A sparkline of percentages in block characters (` ` where no sample).
pub fn spark(points: &[Option<f64>]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    points
        .iter()
        .map(|p| match p {
            None => ' ',
            Some(v) => BARS[((v.clamp(0.0, 100.0) / 100.0) * 7.0).round() as usize],
        })
        .collect()
}

/// The text of each column of a cluster row (untrusted text escaped).
pub fn cells(c: &Cluster) -> Vec<String> {
    Column::ALL
        .iter()
        .map(|col| match col {
            Column::Name => escape::text(&c.name).into_owned(),
            Column::User => escape::text(&c.user).into_owned(),
            Column::Host => c
                .host
                .as_deref()
                .map_or(DASH.into(), |h| escape::text(h).into_owned()),
            Column::State => match c.state {
                Some(State::Live) if c.alerts_firing.unwrap_or(0) > 0 => {
                    format!("live !{}", c.alerts_firing.unwrap_or(0))
                }
                Some(State::Live) => "live".into(),
                Some(State::Dead) => "dead".into(),
                None => DASH.into(),
            },
            Column::Age => age(c.age_seconds),
            Column::Nodes => match (c.nodes_up, c.nodes_total, c.nodes_lost) {
                (None, None, _) => DASH.into(),
                (u, t, Some(lost)) if lost > 0 => format!("{}/{} -{lost}", num(u), num(t)),
                (u, t, _) => format!("{}/{}", num(u), num(t)),
            },
            Column::Cpu => percent(c.cpu_percent),
            Column::Mem => used_of(c.mem_used_bytes, c.mem_total_bytes),
            Column::Gpus => match (c.gpus_used, c.gpus) {
                (None, None) => DASH.into(),
                (u, t) => format!(
                    "{}/{}",
                    u.map_or(DASH.into(), |u| format!("{u:.0}")),
                    t.map_or(DASH.into(), |t| format!("{t:.0}"))
                ),
            },
            Column::GpuUtil => percent(c.gpu_util_percent),
            Column::GpuMem => used_of(c.gpu_mem_used_bytes, c.gpu_mem_total_bytes),
            Column::Store => used_of(c.object_store_used_bytes, c.object_store_total_bytes),
            Column::Tasks => match (c.tasks_running, c.tasks_pending) {
                (None, None) => DASH.into(),
                (r, p) => format!("{}/{}", num(r), num(p)),
            },
            Column::Failed => num(c.tasks_failed_5m),
            Column::Down => num(c.targets_down),
            Column::Samples => c
                .samples_per_scrape
                .map_or(DASH.into(), |v| format!("{v:.0}")),
        })
        .collect()
}

/// `top --once`: the clusters view as a plain table.
pub fn text_table(clusters: &[Cluster]) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        Column::ALL
            .iter()
            .map(|c| c.title().to_string())
            .chain(["CPU/GPU 15m".to_string()])
            .collect(),
    ];
    for c in clusters {
        let mut r = cells(c);
        r.push(spark(&c.spark));
        rows.push(r);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell}{}", " ".repeat(w - cell.chars().count())))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    if clusters.is_empty() {
        out.push_str("(no cluster)\n");
    }
    out
}

/// `top --once --json`.
#[derive(Serialize, Debug)]
pub struct Snapshot<'a> {
    pub schema: u32,
    /// Where the values come from ("this stack's Prometheus at …" or the `--prometheus` URL).
    pub source: String,
    /// Whether the per-cluster values were read from the recording rules' series
    /// (`recorded`) or asked live (`live`).
    pub values: crate::top::Source,
    pub time_unix: f64,
    /// PromQL requests this snapshot cost.
    pub queries: u64,
    pub clusters: &'a [Cluster],
}
