//! Snapshots (insta) of what people read: `--help`, human `status`, `env`; homes, ports and pids filtered.

use std::time::Duration;

use crate::support::*;

/// Filters for what changes from run to run in a [`Stack`]'s output (its home
/// in a scratch folder): the folder, ports, pids, sizes, the user and host.
pub fn stack_filters(stack: &Stack) -> Vec<(String, String)> {
    let scratch = stack.home.parent().unwrap().display().to_string();
    vec![
        (regex_escape(&scratch), "[scratch]".into()),
        (format!(r"\b{}\b", regex_escape(&user())), "[user]".into()),
        (r"\bport \d+".into(), "port [port]".into()),
        (r"127\.0\.0\.1:\d+".into(), "127.0.0.1:[port]".into()),
        (r"pid \d+".into(), "pid [pid]".into()),
        (r"'\d{4,5}'".into(), "'[port]'".into()),
        (r"-L \d+:".into(), "-L [port]:".into()),
        (r"(?m)@\S+$".into(), "@[host]".into()),
        // A temp file's random part (tempfile's 6 letters).
        (r"\.([A-Za-z0-9]{6})\.tmp\b".into(), ".[random].tmp".into()),
        (
            r"\b\d+(\.\d)? (B|KiB|MiB|GiB|TiB)\b".into(),
            "[size]".into(),
        ),
        // What the alert rules hold at that moment (a target down is pending
        // for 5 minutes once Prometheus has evaluated the rule once).
        (
            r"alerts      \d+ firing, \d+ pending.*".into(),
            "alerts      [n] firing, [n] pending".into(),
        ),
    ]
}

/// `s` as a regex that matches it literally.
pub fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if "\\.+*?()|[]{}^$#&-~".contains(c) {
                format!("\\{c}")
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A command's whole outcome as one text: exit code, stdout and stderr (as
/// uv's `uv_snapshot!` does), so a snapshot catches a change in any of them.
pub fn transcript(out: &std::process::Output) -> String {
    format!(
        "success: {}\nexit_code: {}\n----- stdout -----\n{}\n----- stderr -----\n{}",
        out.status.success(),
        out.status
            .code()
            .map_or_else(|| "none (a signal)".to_string(), |c| c.to_string()),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Filters for a command run with a home in `scratch`: the folder, then [`filters`].
pub fn scratch_filters(scratch: &std::path::Path) -> Vec<(String, String)> {
    let mut f = vec![(
        regex_escape(&scratch.display().to_string()),
        "[scratch]".into(),
    )];
    f.extend(filters());
    f
}

/// Filters for what changes from run to run in any output: ports, pids, sizes, the architecture.
pub fn filters() -> Vec<(String, String)> {
    vec![
        (r"127\.0\.0\.1:\d+".into(), "127.0.0.1:[port]".into()),
        (r"\bport \d+".into(), "port [port]".into()),
        (r"pid \d+".into(), "pid [pid]".into()),
        (
            r"\b\d+(\.\d)? (B|KiB|MiB|GiB|TiB)\b".into(),
            "[size]".into(),
        ),
        (r"linux-(amd64|arm64)".into(), "linux-[arch]".into()),
    ]
}

/// `filters`, except that they leave each of `kept` (literal phrases, such as a
/// size that is a fixed bound and not the measure of something) as it is.
pub fn keeping(kept: &[&str], filters: Vec<(String, String)>) -> Vec<(String, String)> {
    // Each kept phrase's spaces become U+0001 until every filter has run.
    let mut all: Vec<(String, String)> = kept
        .iter()
        .map(|k| (regex_escape(k), k.replace(' ', "\u{1}")))
        .collect();
    all.extend(filters);
    all.push(("\u{1}".into(), " ".into()));
    all
}

/// Snapshots `out`'s [`transcript`] as `name`, with `filters`.
pub fn assert_transcript(name: &str, out: &std::process::Output, filters: Vec<(String, String)>) {
    with_filters(filters, || insta::assert_snapshot!(name, transcript(out)));
}

/// Snapshots the [`transcript`]s of several commands as `name`, each under a
/// `=== <label>` line (the command, or the case it shows), with `filters`.
pub fn assert_transcripts<L: std::fmt::Display, O: std::borrow::Borrow<std::process::Output>>(
    name: &str,
    runs: &[(L, O)],
    filters: Vec<(String, String)>,
) {
    let text: Vec<String> = runs
        .iter()
        .map(|(label, out)| format!("=== {label}\n{}", transcript(out.borrow())))
        .collect();
    with_filters(filters, || insta::assert_snapshot!(name, text.join("\n")));
}

/// Snapshots `text` as `name`, with `filters`.
pub fn assert_text(name: &str, text: &str, filters: Vec<(String, String)>) {
    with_filters(filters, || insta::assert_snapshot!(name, text));
}

fn with_filters(f: Vec<(String, String)>, check: impl FnOnce()) {
    let mut settings = insta::Settings::clone_current();
    for (re, to) in f {
        settings.add_filter(&re, to);
    }
    settings.bind(check);
}

#[test]
fn help_texts() {
    for args in [&["--help"][..], &["up", "--help"], &["env", "--help"]] {
        let out = std::process::Command::new(raywatch_bin())
            .args(args)
            .env("COLUMNS", "100")
            .output()
            .unwrap();
        assert!(out.status.success());
        let name = format!(
            "help-{}",
            args.join("-").trim_start_matches('-').replace("--", "")
        );
        insta::assert_snapshot!(name, String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn human_status_and_env() {
    let (stack, root) = Stack::watching("ray_snap", &[]);
    let _head = FakeHead::start(
        &root,
        "session_2026-01-01_00-00-00_000001_7",
        vec!["127.0.0.1:7".into()],
    );
    let name = format!("{}-ray_snap", user());
    wait_for("the cluster, scraped", Duration::from_secs(30), || {
        let st = stack.status();
        let c = st["clusters"].as_array()?.first()?.clone();
        (c["name"] == name.as_str() && c["targets"][0]["health"] != "unknown").then_some(())
    });
    let status = stack.run(&["status"]);
    assert!(status.status.success());
    let env = stack.run(&["env", "--temp-dir", root.join("next").to_str().unwrap()]);
    assert!(env.status.success());
    with_filters(stack_filters(&stack), || {
        insta::assert_snapshot!("status", String::from_utf8_lossy(&status.stdout));
        insta::assert_snapshot!("env", String::from_utf8_lossy(&env.stdout));
    });
}

/// Every command that needs the stack, on a home where none runs: one error,
/// naming the home and the socket, and how to start it; `down` is quiet about it.
#[test]
fn commands_on_a_home_without_a_stack() {
    let dir = scratch();
    let home = dir.path().join("home");
    let run = |args: &[&str]| {
        std::process::Command::new(raywatch_bin())
            .arg("--home")
            .arg(&home)
            .args(args)
            .output()
            .unwrap()
    };
    let filters = || scratch_filters(dir.path());
    assert_transcript("no-stack-status", &run(&["status"]), filters());
    assert_transcript("no-stack-down", &run(&["down"]), filters());
    assert_transcript("no-stack-query", &run(&["query", "up"]), filters());
}
