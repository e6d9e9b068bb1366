//! Untrusted strings in human output: a Ray temp dir named to drive the terminal
//! and forge lines shows up escaped in `status`, `query` and errors, exact in JSON.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// A temp dir name that sets the terminal title, clears the screen, forges a
/// `status` line, and carries a C1 CSI and a right-to-left override (which
/// serde's JSON quoting leaves as they are).
const HOSTILE: &str = "ray_\x1b]0;pwned\x07\x1b[2J\ncluster forged live\u{9b}31m\u{202e}x";

/// Checks human output for raw control characters and forged lines.
fn assert_inert(what: &str, out: &[u8]) {
    let text = String::from_utf8_lossy(out);
    assert!(!out.contains(&0x1b), "{what} has a raw ESC:\n{text}");
    assert!(!out.contains(&0x07), "{what} has a raw BEL:\n{text}");
    assert!(
        !text.contains('\u{9b}') && !text.contains('\u{202e}'),
        "{what} has a raw C1 or bidi control:\n{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("cluster forged")),
        "{what} has a forged line:\n{text}"
    );
}

#[test]
fn escape_sequences_in_a_temp_dir_name_are_shown_escaped_in_status_and_query() {
    let (stack, root) = Stack::watching(HOSTILE, &[]);
    let root_str = root.to_str().unwrap().to_string();
    let head = FakeHead::start(&root, "session_esc_1", vec!["127.0.0.1:61".into()]);
    let cluster = wait_for("the cluster to be live", Duration::from_secs(20), || {
        stack.status()["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["temp_dir"] == root_str.as_str() && c["state"] == "live")
            .cloned()
    });
    let name = cluster["name"].as_str().unwrap().to_string();

    let fifo_dir = root.join("session_fifo_2");
    fs_err::create_dir(&fifo_dir).unwrap();
    let fifo = fifo_dir.join(DISCOVERY);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo_str = fifo.to_str().unwrap();
    let st = wait_for("the FIFO to be rejected", Duration::from_secs(20), || {
        let st = stack.status();
        st["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["path"] == fifo_str)
            .then_some(st)
    });

    // JSON keeps every string exact.
    let c = st["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name.as_str())
        .unwrap();
    assert_eq!(c["temp_dir"], root_str.as_str());
    assert_eq!(c["discovery_file"], head.file.to_str().unwrap());
    assert!(
        st["watch"]["roots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == root_str.as_str()),
        "{:?}",
        st["watch"]
    );

    // Human status: inert, with the escapes visible where the path is.
    let out = stack.run(&["status"]);
    assert!(out.status.success());
    assert_inert("status", &out.stdout);
    let text = String::from_utf8(out.stdout).unwrap();
    let shown = "ray_\\e]0;pwned\\a\\e[2J\\ncluster forged live\\u{9b}31m\\u{202e}x";
    assert!(text.contains("\\e]0;pwned\\a"), "{text}");
    let cluster_line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no line for {name}:\n{text}"));
    assert!(cluster_line.ends_with(shown), "{cluster_line}");
    let rejected_line = text
        .lines()
        .find(|l| l.contains("session_fifo_2"))
        .unwrap_or_else(|| panic!("the FIFO is not listed:\n{text}"));
    assert!(
        rejected_line.contains(&format!("{shown}/session_fifo_2/{DISCOVERY}: ")),
        "{rejected_line}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("  watching    ") && l.contains(shown)),
        "{text}"
    );

    // Human query: the `ray_temp_dir` label carries the path.
    let series = wait_for(
        "the cluster's up series with its ray_temp_dir",
        Duration::from_secs(30),
        || {
            let out = stack.run(&["query", "up{job=\"ray\"}", "--json"]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            v["data"]["result"]
                .as_array()?
                .iter()
                .find(|s| s["metric"]["ray_io_cluster"] == name.as_str())
                .cloned()
        },
    );
    assert_eq!(series["metric"]["ray_temp_dir"], root_str.as_str());
    let out = stack.run(&["query", "up"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_inert("query", &out.stdout);
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(&format!("ray_io_cluster=\"{name}\"")))
        .unwrap_or_else(|| panic!("no series of {name}:\n{text}"));
    // JSON-quoted (serde escapes C0), C1 and bidi escaped on top.
    assert!(
        line.contains(
            "ray_\\u001b]0;pwned\\u0007\\u001b[2J\\ncluster forged live\\u{9b}31m\\u{202e}x\""
        ),
        "{line}"
    );
    drop(head);
}

#[test]
fn escape_sequences_in_an_error_message_are_shown_escaped() {
    let dir = scratch();
    let home = dir.path().join(HOSTILE);
    let out = Command::new(raywatch_bin())
        .env("RAYWATCH_HOME", &home)
        .args(["grafana", "dir"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_inert("the error", &out.stderr);
    // The home's name shown escaped (\e]0;pwned\a\e[2J\ncluster forged).
    crate::snapshots::assert_transcript(
        "an-escaped-error-message",
        &out,
        crate::snapshots::scratch_filters(dir.path()),
    );
    assert!(!home.exists(), "nothing was created");
}
