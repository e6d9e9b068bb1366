//! `raywatch doctor`: runs every check of [`crate::doctor`] and prints one line per check.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use super::Exit;
use crate::doctor::{self, Finding, Scope, Status};
use crate::escape;
use crate::home::Home;

#[derive(Serialize)]
struct Report<'a> {
    findings: &'a [Finding],
    problems: usize,
}

pub(super) fn doctor(home: &Home, json: bool, roots: Vec<PathBuf>) -> Result<Exit> {
    let findings = doctor::run(&Scope {
        home: home.clone(),
        roots,
    });
    let problems = findings
        .iter()
        .filter(|f| f.status == Status::Problem)
        .count();
    // A closed pipe (`doctor | head`) is no error.
    let mut out = std::io::stdout().lock();
    if json {
        let report = Report {
            findings: &findings,
            problems,
        };
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&report)?);
    } else {
        let _ = write!(out, "{}", render(&findings));
    }
    Ok(if problems == 0 {
        Exit::Success
    } else {
        Exit::Failure
    })
}

/// The human report: `status  check: summary`, then evidence and fix indented.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let _ = writeln!(
            out,
            "{:<8} {}: {}",
            f.status.as_str(),
            f.check,
            escape::text(&f.summary)
        );
        for e in &f.evidence {
            let _ = writeln!(out, "           {}", escape::text(e));
        }
        if let Some(fix) = &f.fix {
            let _ = writeln!(out, "           fix: {}", escape::text(fix));
        }
    }
    out
}
