//! `up --alert-rules FILE`: the user's own rules files are evaluated, a bad one is
//! refused with promtool's words and changes nothing, and a file another user could
//! have planted (a link, a FIFO, theirs, huge) is refused before it is read.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::security::other_user;
use crate::support::*;

/// A rules file with one alert that always fires.
const GOOD: &str = "groups:
- name: team
  rules:
  - alert: TeamAlwaysOn
    expr: vector(1)
    labels:
      severity: warning
    annotations:
      summary: always on
";

/// A rules file promtool refuses: its expression does not parse.
const BAD: &str = "groups:
- name: team
  rules:
  - alert: TeamBroken
    expr: sum(up
";

/// The names of the alerts the stack fires or holds pending.
fn alert_names(stack: &Stack) -> Vec<String> {
    stack
        .alerts()
        .iter()
        .filter_map(|a| a["labels"]["alertname"].as_str().map(String::from))
        .collect()
}

/// The names of the rule groups the stack's Prometheus evaluates.
fn groups(stack: &Stack) -> Vec<String> {
    let v: Value = stack.prom_get("/api/v1/rules").json().unwrap();
    v["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_users_rules_fire_a_bad_file_is_refused_with_promtools_words_and_the_old_rules_stay() {
    let dir = scratch();
    let good = dir.path().join("good.yml");
    let bad = dir.path().join("bad.yml");
    fs_err::write(&good, GOOD).unwrap();
    fs_err::write(&bad, BAD).unwrap();
    let stack = Stack::up(&["--alert-rules", good.to_str().unwrap()]);
    wait_for("TeamAlwaysOn firing", Duration::from_secs(60), || {
        alert_names(&stack)
            .contains(&"TeamAlwaysOn".to_string())
            .then_some(())
    });
    // A copy is evaluated: editing the file changes nothing until `up` reads it again.
    let copy = stack.home.join("prometheus/user-rules-0.yml");
    assert_eq!(fs_err::read_to_string(&copy).unwrap(), GOOD);
    let config = fs_err::read_to_string(stack.home.join("config.json")).unwrap();

    let out = stack.run(&["up", "--alert-rules", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("bad.yml"), "names the file: {err}");
    assert!(err.contains("promtool check rules"), "{err}");
    assert!(err.contains("parse"), "promtool's own words: {err}");
    assert!(!err.contains("raywatch-rules-"), "no staging path: {err}");
    // Nothing changed: the settings, the copy, the rules Prometheus evaluates.
    assert_eq!(
        fs_err::read_to_string(stack.home.join("config.json")).unwrap(),
        config
    );
    assert_eq!(fs_err::read_to_string(&copy).unwrap(), GOOD);
    assert!(groups(&stack).contains(&"team".to_string()));
    assert!(alert_names(&stack).contains(&"TeamAlwaysOn".to_string()));

    // A group under one of raywatch's own names is refused too.
    let squat = dir.path().join("squat.yml");
    fs_err::write(&squat, GOOD.replace("name: team", "name: raywatch_top")).unwrap();
    let out = stack.run(&["up", "--alert-rules", squat.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("raywatch_top"),
        "{err}"
    );

    // `--no-alert-rules` on the running stack: the group and its copy go.
    let out = stack.run(&["up", "--no-alert-rules"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the group gone", Duration::from_secs(30), || {
        (!groups(&stack).contains(&"team".to_string())).then_some(())
    });
    assert!(!copy.exists());
}

#[test]
fn a_bad_rules_file_at_the_first_up_starts_nothing_and_saves_nothing() {
    let dir = scratch();
    let bad = dir.path().join("bad.yml");
    fs_err::write(&bad, BAD).unwrap();
    let home = dir.path().join("home");
    let out = raywatch(&["--home", home.to_str().unwrap(), "up"])
        .args(["--alert-rules", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("promtool check rules") && err.contains("bad.yml"),
        "{err}"
    );
    assert!(!home.join("config.json").exists(), "nothing saved");
    assert!(
        !home.join("prometheus/prometheus.yml").exists(),
        "nothing started"
    );
}

/// `up --alert-rules FILE` on a fresh home: must fail, naming the file and `why`.
fn refused(home: &Path, file: &Path, why: &str) {
    let out = raywatch(&["--home", home.to_str().unwrap(), "up"])
        .args(["--alert-rules".as_ref(), file.as_os_str()])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}: {err}", file.display());
    assert!(
        err.contains("--alert-rules") && err.contains(why),
        "{why}: {err}"
    );
    assert!(!home.join("config.json").exists(), "nothing saved: {err}");
}

#[test]
fn a_rules_file_another_user_could_plant_is_refused_before_it_is_read() {
    let other = other_user();
    let dir = scratch();
    let home = dir.path().join("home");
    let good = dir.path().join("good.yml");
    fs_err::write(&good, GOOD).unwrap();
    let link = dir.path().join("link.yml");
    symlink(&good, &link).unwrap();
    refused(&home, &link, "symbolic link");
    let zero = dir.path().join("zero.yml");
    symlink("/dev/zero", &zero).unwrap();
    refused(&home, &zero, "symbolic link");
    let fifo = dir.path().join("fifo.yml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    refused(&home, &fifo, "FIFO");
    let theirs = dir.path().join("theirs.yml");
    fs_err::write(&theirs, GOOD).unwrap();
    nix::unistd::chown(
        &theirs,
        Some(nix::unistd::Uid::from_raw(other.0)),
        Some(nix::unistd::Gid::from_raw(other.1)),
    )
    .unwrap();
    refused(&home, &theirs, "rwtest-other");
    let huge = dir.path().join("huge.yml");
    fs_err::write(&huge, GOOD.repeat(40_000)).unwrap();
    refused(&home, &huge, "limit");
    // A name with a terminal escape in it is shown escaped, never raw.
    let hostile = dir.path().join("evil\x1b[2J.yml");
    refused(&home, &hostile, "does not exist");
    let out = raywatch(&["--home", home.to_str().unwrap(), "up"])
        .args(["--alert-rules".as_ref(), hostile.as_os_str()])
        .output()
        .unwrap();
    assert!(!out.stderr.contains(&0x1b), "{:?}", out.stderr);
}
