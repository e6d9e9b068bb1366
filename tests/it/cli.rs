//! The stack's lifecycle as a user drives it: up, a second up, down, errors.

use std::process::Command;

use predicates::prelude::*;
use predicates::str::contains;

use crate::snapshots::{assert_transcript, assert_transcripts, scratch_filters, stack_filters};
use crate::support::*;

#[test]
fn up_with_a_taken_port_fails_and_names_it() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let dir = scratch();
    let out = Command::new(raywatch_bin())
        .args([
            "--home",
            dir.path().join("h").to_str().unwrap(),
            "up",
            "--prometheus-port",
            &port.to_string(),
        ])
        .output()
        .unwrap();
    // One error naming the port and its holder (this test's process), then
    // the port check's hint, last; exit code 1 (a user error).
    error_lines(&String::from_utf8_lossy(&out.stderr));
    let me = std::env::current_exe().unwrap();
    let uid = nix::unistd::getuid();
    let mut filters = vec![
        (format!(r"\bport {port}\b"), "port [the held port]".into()),
        (
            format!(r"\bpid {}\b", std::process::id()),
            "pid [this test]".into(),
        ),
        (
            format!(r"uid {uid} \({}\)", crate::snapshots::regex_escape(&user())),
            "uid [uid] ([user])".into(),
        ),
        (
            format!(
                r"{} [^)]*",
                crate::snapshots::regex_escape(&me.display().to_string())
            ),
            "[this test's command line]".into(),
        ),
    ];
    filters.extend(scratch_filters(dir.path()));
    assert_transcript("up-with-a-taken-port", &out, filters);
}

#[test]
fn up_without_prometheus_says_what_to_install() {
    let dir = scratch();
    let empty_path = dir.path().join("bin");
    fs_err::create_dir(&empty_path).unwrap();
    let out = Command::new(raywatch_bin())
        .args(["--home", dir.path().join("h").to_str().unwrap(), "up"])
        .env("PATH", &empty_path)
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .env_remove("RAYWATCH_PROMETHEUS")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    // One error, then one hint: what `--yes` would download (version, size,
    // checksum, where), then the other ways; exit code 1 (a user error).
    error_lines(&String::from_utf8_lossy(&out.stderr));
    assert_transcript("up-without-prometheus", &out, scratch_filters(dir.path()));
}

#[test]
fn a_second_up_reports_the_running_stack_and_starts_nothing_new() {
    let stack = Stack::up(&["--no-default-watch"]);
    let pids = stack.pids();
    assert_eq!(pids.len(), 2, "daemon and prometheus pids recorded");

    let again = stack.run(&["up", "--no-default-watch"]);
    assert_transcript("second-up", &again, stack_filters(&stack));
    assert_eq!(stack.pids(), pids, "a second up started nothing new");
}

#[test]
fn prometheus_refuses_queries_without_credentials_and_raywatch_query_has_them() {
    let stack = Stack::up(&["--no-default-watch"]);
    let anon = reqwest::blocking::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/api/v1/query?query=up",
            stack.port()
        ))
        .send()
        .unwrap();
    assert_eq!(anon.status().as_u16(), 401);
    let q = stack.run(&["query", "up{job=\"prometheus\"}", "--json"]);
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let body: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap();
    assert_eq!(body["status"], "success");
}

/// The human status names every part of the stack, Grafana included, and how
/// to reach it from a laptop.
#[test]
fn the_human_status_of_a_stack_without_clusters() {
    let (stack, _root) = Stack::watching("ray_none", &[]);
    let status = stack.run(&["status"]);
    assert_transcript("status-without-clusters", &status, stack_filters(&stack));
}

#[test]
fn down_leaves_no_process_then_status_exits_3_and_purge_removes_the_home() {
    let stack = Stack::up(&["--no-default-watch"]);
    let pids = stack.pids();
    assert_eq!(pids.len(), 2, "daemon and prometheus pids recorded");
    let down = stack.run(&["down"]);
    assert!(down.status.success());
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid),
            "pid {pid} survived down"
        );
    }
    assert!(processes_mentioning(stack.home.to_str().unwrap()).is_empty());
    let st = stack.run(&["status"]);
    assert_eq!(
        st.status.code(),
        Some(3),
        "status of a stopped stack exits 3"
    );

    let purge = stack.run(&["down", "--purge"]);
    assert!(purge.status.success());
    assert!(!stack.home.exists());
}

fn is_zombie(pid: u32) -> bool {
    state(pid).is_none_or(|s| s == 'Z')
}

#[test]
fn two_stacks_side_by_side_see_nothing_of_each_other() {
    let roots = scratch();
    let (ta, tb) = (roots.path().join("ray_one"), roots.path().join("ray_two"));
    let a = Stack::up(&["--no-default-watch", "--watch", ta.to_str().unwrap()]);
    let b = Stack::up(&["--no-default-watch", "--watch", tb.to_str().unwrap()]);
    assert_ne!(a.port(), b.port());
    assert_ne!(a.password(), b.password());

    let _ha = FakeHead::start(
        &ta,
        "session_2026-01-01_00-00-00_000001_11",
        vec!["127.0.0.1:1".into()],
    );
    let _hb = FakeHead::start(
        &tb,
        "session_2026-01-01_00-00-00_000002_22",
        vec!["127.0.0.1:2".into()],
    );
    let name_a = format!("{}-ray_one", user());
    let name_b = format!("{}-ray_two", user());
    wait_for(
        "stack a's target",
        std::time::Duration::from_secs(20),
        || (a.instances_of(&name_a) == ["127.0.0.1:1"]).then_some(()),
    );
    wait_for(
        "stack b's target",
        std::time::Duration::from_secs(20),
        || (b.instances_of(&name_b) == ["127.0.0.1:2"]).then_some(()),
    );
    let names = |s: &Stack| -> Vec<String> {
        s.status()["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&a), vec![name_a.clone()]);
    assert_eq!(names(&b), vec![name_b.clone()]);
    assert!(a.active_targets().iter().all(|(c, _)| *c == name_a));
    assert!(b.active_targets().iter().all(|(c, _)| *c == name_b));
}

/// Checks the shape of an error on stderr: `error:` first, then its `Caused by:`
/// lines, then the hints, last. Returns the hints.
fn error_lines(stderr: &str) -> Vec<String> {
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("error: ")),
        "the error is not the first line: {stderr}"
    );
    let first_hint = lines
        .iter()
        .position(|l| l.starts_with("hint: "))
        .unwrap_or(lines.len());
    let last_cause = lines.iter().rposition(|l| l.starts_with("  Caused by: "));
    assert!(
        last_cause.is_none_or(|c| c < first_hint),
        "a cause after a hint: {stderr}"
    );
    // A hint may run over several lines; nothing but hints follows the first one.
    assert!(
        lines[first_hint..]
            .iter()
            .all(|l| l.starts_with("hint: ") || l.starts_with("  ")),
        "{stderr}"
    );
    assert!(
        lines[first_hint..]
            .iter()
            .all(|l| !l.starts_with("  Caused by: ") && !l.starts_with("error: ")),
        "{stderr}"
    );
    lines[first_hint..]
        .iter()
        .filter_map(|l| l.strip_prefix("hint: "))
        .map(str::to_string)
        .collect()
}

/// Each command that needs the stack, where none runs: exit code 3, the
/// error, its causes (the socket, then the OS' reason), then the hint; nothing
/// on stdout but `status --json`'s report.
#[test]
fn a_command_that_needs_the_stack_exits_3_with_the_cause_then_the_hint() {
    let dir = scratch();
    let home = dir.path().join("home");
    let commands = [
        &["attach", "/tmp"][..],
        &["detach", "x"],
        &["env"],
        &["status"],
        &["status", "--json"],
        &["open", "x"],
        &["query", "up"],
    ];
    let outs: Vec<_> = commands
        .iter()
        .map(|args| {
            raywatch(args)
                .env("RAYWATCH_HOME", &home)
                .assert()
                .code(3)
                .get_output()
                .clone()
        })
        .collect();
    for (args, out) in commands.iter().zip(&outs) {
        error_lines(&String::from_utf8_lossy(&out.stderr));
        if *args == ["status", "--json"] {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["running"], false);
        }
    }
    let runs: Vec<_> = commands
        .iter()
        .map(|args| format!("raywatch {}", args.join(" ")))
        .zip(&outs)
        .collect();
    assert_transcripts("needs-the-stack", &runs, scratch_filters(dir.path()));
    assert!(!home.exists(), "nothing was created");
}

#[test]
fn a_command_line_clap_rejects_is_a_user_error() {
    let out = raywatch(&["status", "--no-such-flag"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert_transcript("clap-rejects", &out, vec![]);
    let help = raywatch(&["--help"])
        .env("COLUMNS", "100")
        .assert()
        .success()
        .get_output()
        .clone();
    // The same text snapshots::help_texts checks.
    crate::snapshots::assert_text("help-help", &String::from_utf8_lossy(&help.stdout), vec![]);
}

#[test]
fn a_failed_save_is_reported_as_such_and_the_daemon_writes_panics_where_rotation_cannot_lose_them()
{
    let (stack, root) = Stack::watching("ray_save", &[]);
    let extra = root.join("extra");
    fs_err::create_dir(&extra).unwrap();
    let out = stack.run(&["attach", extra.to_str().unwrap(), "--name", "kept"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // attachments.json cannot be replaced while a folder stands in its place.
    let file = stack.home.join("attachments.json");
    fs_err::remove_file(&file).unwrap();
    fs_err::create_dir(&file).unwrap();
    // The daemon's internal error is raywatch's (2), not the user's (not
    // "no attached cluster").
    let out = stack
        .raywatch(&["detach", "kept"])
        .assert()
        .code(2)
        .get_output()
        .clone();
    assert_transcript("failed-save", &out, stack_filters(&stack));
    fs_err::remove_dir(&file).unwrap();

    let pid = fs_err::read_to_string(stack.home.join("run/daemon.pid")).unwrap();
    let stderr = fs_err::read_link(format!("/proc/{}/fd/2", pid.trim())).unwrap();
    assert_eq!(stderr, stack.home.join("logs/daemon.stderr"));
}

#[test]
fn completions_print_a_script_for_each_shell_that_knows_the_commands() {
    for shell in ["bash", "zsh", "fish"] {
        // A script for the shell, not text people read: its exact form is
        // clap_complete's, so only what it must name is checked.
        raywatch(&["completions", shell])
            .env_remove("HOME")
            .env_remove("XDG_STATE_HOME")
            .env_remove("RAYWATCH_HOME")
            .assert()
            .success()
            .stdout(
                contains("raywatch")
                    .and(contains("attach"))
                    .and(contains("prometheus-port")),
            );
    }
    let out = raywatch(&["completions", "tcsh"])
        .assert()
        .code(1)
        .get_output()
        .clone();
    assert_transcript("completions-tcsh", &out, vec![]);
}
