//! `raywatch history`: every cluster this stack saw, past and present, from `<home>/history.jsonl`.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::Exit;
use crate::escape;
use crate::history::{self, Entry, History, when};
use crate::home::Home;

/// The `history --json` schema version.
pub const SCHEMA: u32 = 1;

/// One cluster as `history --json` prints it.
#[derive(Serialize)]
pub struct Listed<'a> {
    #[serde(flatten)]
    pub entry: &'a Entry,
    /// "live", "ended", or "unknown" (not ended when raywatch last looked, and
    /// raywatch is not running now).
    pub state: &'static str,
}

#[derive(Serialize)]
struct Listing<'a> {
    schema: u32,
    home: &'a std::path::Path,
    /// Whether the daemon runs (else "live" clusters are "unknown").
    running: bool,
    clusters: Vec<Listed<'a>>,
}

/// Whether the stack's daemon runs (its recorded PID is alive and is a raywatch daemon).
pub(super) fn daemon_running(home: &Home) -> bool {
    crate::process::read_pid(&home.daemon_pid()).is_some_and(|pid| {
        crate::process::alive(pid)
            && crate::process::cmdline(pid).is_some_and(|c| c.iter().any(|a| a == "daemon"))
    })
}

/// The state of an entry: ended, live (the daemon runs and records its end
/// within a second), or unknown.
pub(super) fn state(e: &Entry, running: bool) -> &'static str {
    match (e.ended(), running) {
        (true, _) => "ended",
        (false, true) => "live",
        (false, false) => "unknown",
    }
}

pub(super) fn history(home: &Home, since: Option<Duration>, json: bool) -> Result<Exit> {
    let h = History::load(&home.history())?;
    let running = daemon_running(home);
    let cutoff = since.map(history::since);
    let clusters: Vec<Listed> = h
        .sorted()
        .into_iter()
        .filter(|e| cutoff.is_none_or(|c| !e.ended() || e.last_seen_unix >= c))
        .map(|entry| Listed {
            entry,
            state: state(entry, running),
        })
        .collect();
    if json {
        let listing = Listing {
            schema: SCHEMA,
            home: home.root(),
            running,
            clusters,
        };
        println!("{}", serde_json::to_string_pretty(&listing)?);
    } else {
        print!("{}", render(&clusters, running, h.skipped_lines));
    }
    Ok(Exit::Success)
}

fn render(clusters: &[Listed], running: bool, skipped: usize) -> String {
    let mut out = String::new();
    if clusters.is_empty() {
        out.push_str("no clusters in the history yet\n");
    }
    let now = crate::clock::unix_now();
    for l in clusters {
        let e = l.entry;
        let c = &e.cluster;
        let end = if l.state == "live" {
            now
        } else {
            e.last_seen_unix
        };
        let lifetime = humantime::format_duration(Duration::from_secs(
            (end - e.first_seen_unix).max(0.0) as u64,
        ));
        let _ = writeln!(
            out,
            "{}  {}  {} → {} ({lifetime})  {}  {}",
            escape::text(&c.name),
            l.state,
            when(e.first_seen_unix),
            if l.state == "live" {
                "now".to_string()
            } else {
                when(e.last_seen_unix)
            },
            escape::text(&c.session),
            escape::path(&c.temp_dir),
        );
        let mut who = format!(
            "user {} on {}",
            escape::text(&c.user),
            escape::text(&c.host)
        );
        if let Some(job) = &c.slurm_job_id {
            let _ = write!(who, ", Slurm job {}", escape::text(job));
            if let Some(name) = &c.slurm_job_name {
                let _ = write!(who, " ({})", escape::text(name));
            }
        }
        let _ = writeln!(out, "    {who}");
        for l in &e.nodes_lost {
            let _ = writeln!(
                out,
                "    node lost: {} at {}",
                escape::text(&l.node),
                when(l.at_unix)
            );
        }
        if let Some(reason) = &e.end_reason {
            let _ = writeln!(out, "    ended: {}", escape::text(reason));
        }
    }
    if !running && clusters.iter().any(|l| l.state == "unknown") {
        out.push_str(
            "\n\"unknown\": live when raywatch last looked; raywatch is not running now (`raywatch up`).\n",
        );
    }
    if skipped > 0 {
        let _ = writeln!(
            out,
            "\n{skipped} damaged line(s) of the history file were skipped"
        );
    }
    out
}
