//! Ray's token auth (issue 16, item 1): another local user must not run code as you through a
//! Ray Dashboard's job API, and every part of raywatch keeps working for a cluster with token
//! auth on, whether `raywatch env` or Ray's own `~/.ray/auth_token` turned it on.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::security::{open_scratch, other_user, system_python};
use crate::snapshots::{assert_transcript, assert_transcripts, regex_escape, stack_filters};
use crate::support::*;

/// Run by the other user: POSTs a job to a Dashboard and prints the HTTP status.
const SUBMIT: &str = r#"
import json, sys, urllib.request, urllib.error
port, marker = sys.argv[1], sys.argv[2]
body = json.dumps({"entrypoint": "touch " + marker}).encode()
req = urllib.request.Request("http://127.0.0.1:%s/api/jobs/" % port, data=body,
                             headers={"Content-Type": "application/json"}, method="POST")
try:
    print(urllib.request.urlopen(req, timeout=20).status)
except urllib.error.HTTPError as e:
    print(e.code)
"#;

/// Snapshot filters for `env` on `stack`: those of [`stack_filters`], and
/// the note about the `ray` on PATH left out (it depends on the machine's PATH).
fn env_filters(stack: &Stack) -> Vec<(String, String)> {
    let mut f = vec![(
        r"(?m)^note: no `ray` on PATH: .*\n".to_string(),
        String::new(),
    )];
    f.extend(stack_filters(stack));
    f
}

/// Removes a folder when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs_err::remove_dir_all(&self.0);
    }
}

fn cluster<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

fn finding<'a>(doctor: &'a Value, check: &str) -> &'a Value {
    doctor["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} in {doctor:#}"))
}

/// `raywatch doctor --json --root TEMP_DIR` with `HOME` set (Ray's default
/// token file is `$HOME/.ray/auth_token`): only this test's cluster is looked at.
fn doctor(stack: &Stack, home: &Path, temp_dir: &Path) -> Value {
    let out = stack
        .cmd()
        .args(["doctor", "--json", "--root"])
        .arg(temp_dir)
        .env("HOME", home)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `raywatch env` for `temp_dir`, parsed; asserts it succeeded.
fn env_for(stack: &Stack, temp_dir: &Path, extra: &[&str]) -> (Vec<(String, String)>, String) {
    let mut args = vec!["env", "--temp-dir", temp_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = stack.run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (parse_exports(&text), text)
}

fn var(env: &[(String, String)], k: &str) -> Option<String> {
    env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
}

/// Waits until the cluster's own metrics endpoint is scraped under `name`.
fn wait_scraped(stack: &Stack, name: &str, ray: &RayCluster) {
    let want = format!("127.0.0.1:{}", ray.metrics_port);
    wait_for(
        &format!("{name}'s metrics endpoint among the targets"),
        Duration::from_secs(120),
        || stack.instances_of(name).contains(&want).then_some(()),
    );
}

/// Waits until `raywatch status` shows the cluster's Dashboard answering.
fn wait_dashboard(stack: &Stack, name: &str) -> Value {
    wait_for(
        &format!("{name}'s Dashboard in status"),
        Duration::from_secs(90),
        || {
            let st = stack.status();
            let d = cluster(&st, name)?["dashboard"].clone();
            (d.is_object() && d["job_api"] != "unknown").then_some(d)
        },
    )
}

/// Ray's Dashboard reaches this stack's Prometheus through the gateway (its Metrics tab).
fn assert_metrics_tab_works(ray: &RayCluster) {
    let health: Value = wait_for(
        "Ray Dashboard's /api/prometheus_health with the token",
        Duration::from_secs(90),
        || {
            let r = ray.dashboard_get("/api/prometheus_health")?;
            r.status().is_success().then(|| r.json().ok()).flatten()
        },
    );
    assert_eq!(health["result"], true, "{health}");
}

/// `top --once --json` lists the cluster live.
fn assert_top_lists(stack: &Stack, name: &str) {
    wait_for(&format!("{name} in top"), Duration::from_secs(60), || {
        let out = stack.run(&["top", "--once", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["clusters"]
            .as_array()?
            .iter()
            .any(|c| c["name"] == name && c["nodes_up"] == 1)
            .then_some(())
    });
}

/// The cluster is reported dead within the liveness bound once its processes are killed.
fn assert_death_noticed(stack: &Stack, name: &str, ray: &mut RayCluster) {
    ray.kill9();
    let killed = Instant::now();
    wait_for(&format!("{name} to end"), Duration::from_secs(60), || {
        let st = stack.status();
        (cluster(&st, name)?["state"] == "dead").then_some(())
    });
    assert!(killed.elapsed() < Duration::from_secs(60));
}

#[test]
fn the_readme_flow_turns_rays_token_auth_on_and_another_user_cannot_submit_jobs() {
    let other = other_user();
    let python = system_python();
    let dir = open_scratch();
    let stack = Stack::up_at(&dir.path().join("home"), &["--no-default-watch"]);
    // The README's flow: `eval "$(raywatch env)"`, the private default temp dir
    // (under $RAY_TMPDIR, here the test's scratch folder).
    let env_default = || {
        let out = stack
            .cmd()
            .arg("env")
            .env("RAY_TMPDIR", dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (parse_exports(&text), text)
    };
    let (env, text) = env_default();
    let name = var(&env, "RAYWATCH_CLUSTER").unwrap();
    let temp_dir = PathBuf::from(var(&env, "RAYWATCH_TEMP_DIR").unwrap());
    let private = dir
        .path()
        .join(format!("raywatch-{}", nix::unistd::geteuid()));
    assert_eq!(temp_dir, private.join("ray"));
    let mode = fs_err::metadata(&private).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    assert!(text.contains("unset RAY_AUTH_TOKEN"), "{text}");
    let api = var(&env, "RAY_API_SERVER_ADDRESS").unwrap();
    assert_eq!(
        api,
        format!(
            "http://127.0.0.1:{}",
            var(&env, "RAYWATCH_DASHBOARD_PORT").unwrap()
        )
    );

    // The token: raywatch's own file, private, handed over by path, never printed.
    assert_eq!(var(&env, "RAY_AUTH_MODE").as_deref(), Some("token"));
    let token_file = PathBuf::from(var(&env, "RAY_AUTH_TOKEN_PATH").unwrap());
    assert!(token_file.starts_with(dir.path().join("home/secrets")));
    let meta = fs_err::metadata(&token_file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let token = fs_err::read_to_string(&token_file).unwrap();
    assert!(token.len() >= 32, "{token:?}");
    assert!(!text.contains(&token), "env printed the token: {text}");
    // Generated once: a second `env` hands out the same file and token.
    let (env2, _) = env_default();
    assert_eq!(
        var(&env2, "RAY_AUTH_TOKEN_PATH"),
        var(&env, "RAY_AUTH_TOKEN_PATH")
    );
    assert_eq!(fs_err::read_to_string(&token_file).unwrap(), token);

    let mut ray = RayCluster::start_with_env(&temp_dir, false, &env);
    ray.wait_discovery(Duration::from_secs(120));
    wait_scraped(&stack, &name, &ray);
    wait_for("the Dashboard to answer", Duration::from_secs(90), || {
        ray.dashboard_get("/api/jobs/")
            .filter(|r| r.status().is_success())
            .map(|_| ())
    });

    // Ray made its folders 0777, but the other user cannot reach them (nor
    // replace the Dashboard's sockets to catch the token).
    let ls = crate::security::as_other(other, &["ls", temp_dir.to_str().unwrap()]);
    assert!(
        !ls.status.success(),
        "the other user listed {}",
        temp_dir.display()
    );

    // The other user's job submission is refused, and nothing runs.
    let marker = dir.path().join("pwned");
    let out = as_other_python(
        other,
        python,
        &[&ray.dashboard_port.to_string(), marker.to_str().unwrap()],
    );
    assert_eq!(
        out.trim(),
        "401",
        "the other user's POST /api/jobs/ answered {out}"
    );
    assert!(!marker.exists(), "the other user's job ran");

    // Everything raywatch does still works.
    assert_metrics_tab_works(&ray);
    let d = wait_dashboard(&stack, &name);
    assert_eq!(d["job_api"], "token", "{d:#}");
    assert_eq!(d["token_file"], token_file.to_str().unwrap(), "{d:#}");
    let human = String::from_utf8_lossy(&stack.run(&["status"]).stdout).into_owned();
    assert!(human.contains("token auth on"), "{human}");
    let open = stack.run(&["open", &name]);
    let open = String::from_utf8_lossy(&open.stdout).into_owned();
    assert!(
        open.contains(token_file.to_str().unwrap())
            && open.contains(&format!(":{}", ray.dashboard_port)),
        "{open}"
    );
    assert!(!open.contains(&token), "open printed the token: {open}");
    assert_top_lists(&stack, &name);
    let doc = doctor(&stack, dir.path(), &temp_dir);
    let f = finding(&doc, "dashboard_auth");
    assert_eq!(f["status"], "ok", "{f:#}");
    let f = finding(&doc, "ray_token_file");
    assert_eq!(f["status"], "ok", "{f:#}");
    assert_death_noticed(&stack, &name, &mut ray);
}

/// Runs [`SUBMIT`] as the other user; its output (the HTTP status).
fn as_other_python(other: (u32, u32), python: &str, args: &[&str]) -> String {
    let out = command_as(other, python)
        .arg("-c")
        .arg(SUBMIT)
        .args(args)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn doctor_and_status_flag_a_cluster_whose_job_api_needs_no_token() {
    let dir = open_scratch();
    let stack = Stack::up_at(&dir.path().join("home"), &["--no-default-watch"]);
    // `env --no-ray-auth` says token auth is off, explicitly.
    let (env, _) = env_for(&stack, &dir.path().join("ray_unused"), &["--no-ray-auth"]);
    assert_eq!(var(&env, "RAY_AUTH_MODE").as_deref(), Some("disabled"));
    // A cluster started the usual way, without `raywatch env` (token auth off,
    // RAY_AUTH_MODE=disabled), its temp dir attached by hand.
    let temp_dir = dir.path().join("ray_open");
    fs_err::create_dir(&temp_dir).unwrap();
    let out = stack.run(&["attach", temp_dir.to_str().unwrap(), "--name", "plain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let name = "plain".to_string();
    let mut ray = RayCluster::start(&temp_dir, false);
    ray.wait_discovery(Duration::from_secs(120));
    wait_scraped(&stack, &name, &ray);

    let d = wait_dashboard(&stack, &name);
    assert_eq!(d["job_api"], "open", "{d:#}");
    let human = String::from_utf8_lossy(&stack.run(&["status"]).stdout).into_owned();
    assert!(
        human.contains("OPEN: its job API runs any local user's code"),
        "{human}"
    );
    let doc = doctor(&stack, dir.path(), &temp_dir);
    let f = finding(&doc, "dashboard_auth");
    assert_eq!(f["status"], "problem", "{f:#}");
    let evidence = f["evidence"].to_string();
    assert!(
        evidence.contains(&format!("port {}", ray.dashboard_port)),
        "{f:#}"
    );
    assert!(f["fix"].as_str().unwrap().contains("raywatch env"), "{f:#}");
    drop(ray);
}

#[test]
fn with_rays_own_token_file_a_cluster_is_fully_monitored_and_a_readable_file_is_flagged() {
    let dir = open_scratch();
    let stack = Stack::up_at(&dir.path().join("home"), &["--no-default-watch"]);
    // Ray's own way: `ray get-auth-token --generate` writes $HOME/.ray/auth_token
    // with a plain open(); later `ray start`s then turn token auth on by themselves.
    let user_home = dir.path().join("user");
    fs_err::create_dir(&user_home).unwrap();
    let out = std::process::Command::new(ray_bin())
        .args(["get-auth-token", "--generate"])
        .env("HOME", &user_home)
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .env_remove("RAY_AUTH_MODE")
        .output()
        .unwrap();
    let ray_token = user_home.join(".ray/auth_token");
    assert!(
        ray_token.exists(),
        "ray get-auth-token --generate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // As under the usual umask 022 (whatever this process's umask is).
    fs_err::set_permissions(&ray_token, std::fs::Permissions::from_mode(0o644)).unwrap();

    let temp_dir = dir.path().join("ray_implicit");
    let (mut env, _) = env_for(&stack, &temp_dir, &[]);
    let name = var(&env, "RAYWATCH_CLUSTER").unwrap();
    // Without raywatch's token variables, and RAY_AUTH_MODE unset: Ray decides.
    env.retain(|(k, _)| k != "RAY_AUTH_MODE" && k != "RAY_AUTH_TOKEN_PATH");
    env.push(("RAY_AUTH_MODE".into(), String::new()));
    env.push(("HOME".into(), user_home.display().to_string()));
    let mut ray = RayCluster::start_with_env(&temp_dir, false, &env);
    ray.token_file = Some(ray_token.clone());
    ray.wait_discovery(Duration::from_secs(120));
    wait_scraped(&stack, &name, &ray);

    // Token auth is really on, and raywatch sees it so.
    let anonymous = wait_for("the Dashboard to answer", Duration::from_secs(90), || {
        reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{}/api/jobs/", ray.dashboard_port))
            .send()
            .ok()
            .map(|r| r.status().as_u16())
    });
    assert_eq!(anonymous, 401);
    assert_metrics_tab_works(&ray);
    let d = wait_dashboard(&stack, &name);
    assert_eq!(d["job_api"], "token", "{d:#}");
    assert_eq!(d["token_file"], ray_token.to_str().unwrap(), "{d:#}");
    assert_top_lists(&stack, &name);

    // doctor: the Dashboard is fine, the token file is not.
    let doc = doctor(&stack, &user_home, &temp_dir);
    assert_eq!(finding(&doc, "dashboard_auth")["status"], "ok");
    let f = finding(&doc, "ray_token_file");
    assert_eq!(f["status"], "problem", "{f:#}");
    assert!(f["evidence"].to_string().contains("0644"), "{f:#}");
    assert!(f["fix"].as_str().unwrap().contains("chmod 600"), "{f:#}");
    fs_err::set_permissions(&ray_token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let doc = doctor(&stack, &user_home, &temp_dir);
    assert_eq!(finding(&doc, "ray_token_file")["status"], "ok");

    assert_death_noticed(&stack, &name, &mut ray);
}

#[test]
fn env_refuses_a_temp_dir_another_user_created_or_can_redirect_unless_trusted() {
    let other = other_user();
    let dir = open_scratch();
    let stack = Stack::up_at(&dir.path().join("home"), &["--no-default-watch"]);
    let refused = |temp_dir: &Path| {
        let out = stack.run(&["env", "--temp-dir", temp_dir.to_str().unwrap()]);
        assert!(
            !out.status.success(),
            "env accepted {}: {}",
            temp_dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        (format!("env --temp-dir {}", temp_dir.display()), out)
    };
    // The other user prepares, in /tmp, the folder the victim is about to name,
    // a folder to put it in, and a link to their own folder.
    let mine = format!("/tmp/ray_rwprepared_{}", std::process::id());
    let prepared = PathBuf::from(&mine);
    let parent = PathBuf::from(format!("{mine}_parent"));
    let link = PathBuf::from(format!("{mine}_link"));
    let _cleanup = [&prepared, &parent, &link].map(|p| RemoveOnDrop(p.clone()));
    for args in [
        vec!["mkdir", "-m", "0777", prepared.to_str().unwrap()],
        vec!["mkdir", "-m", "0777", parent.to_str().unwrap()],
        vec!["ln", "-s", parent.to_str().unwrap(), link.to_str().unwrap()],
    ] {
        let out = crate::security::as_other(other, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Each refusal names the other user and why (the folder belongs not to
    // you, or is a symbolic link), and the way out (--trust-uid); nothing on
    // stdout.
    let mut outs = vec![
        refused(&prepared),
        refused(&parent.join("ray")),
        refused(&link.join("ray")),
        refused(&PathBuf::from(format!("{}/", link.display()))),
    ];
    let _ = fs_err::remove_file(&link);

    // The private default's folder, squatted by the other user, is refused too.
    let shared = dir.path().join("shared_tmp");
    fs_err::create_dir(&shared).unwrap();
    fs_err::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let squat = shared.join(format!("raywatch-{}", nix::unistd::geteuid()));
    let out = crate::security::as_other(other, &["mkdir", "-m", "0777", squat.to_str().unwrap()]);
    assert!(out.status.success());
    let out = stack
        .cmd()
        .arg("env")
        .env("RAY_TMPDIR", &shared)
        .output()
        .unwrap();
    assert!(!out.status.success());
    outs.push((
        "env (RAY_TMPDIR with a squatted raywatch-<uid>)".into(),
        out,
    ));

    // A temp dir others can reach works, with a warning.
    let open = dir.path().join("ray_reachable");
    let out = stack.run(&["env", "--temp-dir", open.to_str().unwrap()]);
    assert!(out.status.success());
    outs.push((format!("env --temp-dir {}", open.display()), out));
    let mut filters = vec![
        (regex_escape(&mine), "/tmp/ray_rwprepared_[pid]".to_string()),
        (
            format!(r"\buid {}\b", other.0),
            "uid [other uid]".to_string(),
        ),
        (
            format!(r"--trust-uid {}\b", other.0),
            "--trust-uid [other uid]".to_string(),
        ),
        (
            format!(r"raywatch-{}\b", nix::unistd::geteuid()),
            "raywatch-[uid]".to_string(),
        ),
    ];
    filters.extend(env_filters(&stack));
    assert_transcripts("env-refuses-temp-dirs-of-others", &outs, filters);
    drop(stack);

    // Trusting that user's uid lets their folder through.
    let stack = Stack::up_at(
        &dir.path().join("home2"),
        &["--no-default-watch", "--trust-uid", &other.0.to_string()],
    );
    let out = stack.run(&["env", "--temp-dir", prepared.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_token_file_others_could_read_is_replaced() {
    let dir = open_scratch();
    let stack = Stack::up_at(&dir.path().join("home"), &["--no-default-watch"]);
    let (env, _) = env_for(&stack, &dir.path().join("ray_a"), &[]);
    let token_file = PathBuf::from(var(&env, "RAY_AUTH_TOKEN_PATH").unwrap());
    let old = fs_err::read_to_string(&token_file).unwrap();
    fs_err::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = stack.run(&[
        "env",
        "--temp-dir",
        dir.path().join("ray_b").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    // It says it wrote a new token.
    assert_transcript("env-replaces-a-readable-token", &out, env_filters(&stack));
    let new = fs_err::read_to_string(&token_file).unwrap();
    assert_ne!(new, old);
    let mode = fs_err::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn env_says_plainly_when_the_ray_on_path_has_no_token_auth() {
    let dir = open_scratch();
    let stack = Stack::up_at(&dir.path().join("home"), &["--no-default-watch"]);
    let env_with_ray = |ray: &Path, temp: &str| {
        let path = format!("{}:/usr/bin:/bin", ray.parent().unwrap().display());
        stack
            .cmd()
            .args(["env", "--temp-dir"])
            .arg(dir.path().join(temp))
            .env("PATH", path)
            .output()
            .unwrap()
    };
    // With Ray 2.40.0 it says that Ray has no token auth; with today's Ray,
    // nothing about token auth.
    let oldest = oldest_ray_bin();
    let old = env_with_ray(&oldest, "ray_old");
    assert!(old.status.success());
    let new = env_with_ray(&ray_bin(), "ray_new");
    assert!(new.status.success());
    assert_transcripts(
        "env-with-a-ray-without-token-auth",
        &[("Ray 2.40.0 on PATH", &old), ("today's Ray on PATH", &new)],
        [
            vec![(
                regex_escape(&oldest.display().to_string()),
                "[Ray 2.40.0's ray]".to_string(),
            )],
            stack_filters(&stack),
        ]
        .concat(),
    );
}

/// Run by the other user: listens on a port, logs every request line it gets,
/// and answers 401 (as if token auth were on).
const FAKE_DASHBOARD: &str = r#"
import socket, sys
port, log, ready = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', port))
s.listen(16)
open(ready, 'w').write('ok')
s.settimeout(60)
while True:
    try:
        c, _ = s.accept()
    except socket.timeout:
        break
    c.settimeout(2)
    try:
        data = c.recv(4096)
        open(log, 'ab').write(data)
        c.sendall(b'HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n')
    except OSError:
        pass
    c.close()
"#;

#[test]
fn a_dashboard_port_another_user_holds_is_neither_asked_nor_believed() {
    let other = other_user();
    let python = system_python();
    let dir = open_scratch();
    let stack = Stack::up_at(&dir.path().join("home"), &["--no-default-watch"]);
    // A process of ours that looks like Ray's Dashboard (by its command line)
    // and names a port the other user holds: it died, they took the port.
    let port = free_port();
    let (log, ready) = (dir.path().join("requests"), dir.path().join("ready"));
    fs_err::write(&log, "").unwrap();
    fs_err::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    fs_err::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let _squatter = KillOnDrop(
        command_as(other, python)
            .arg("-c")
            .arg(FAKE_DASHBOARD)
            .args([
                &port.to_string(),
                log.to_str().unwrap(),
                ready.to_str().unwrap(),
            ])
            .spawn()
            .unwrap(),
    );
    wait_for("the other user's listener", Duration::from_secs(10), || {
        ready.exists().then_some(())
    });
    let temp_dir = dir.path().join("ray_fake");
    let script = dir.path().join("ray/dashboard/dashboard.py");
    fs_err::create_dir_all(script.parent().unwrap()).unwrap();
    fs_err::write(&script, "import time\ntime.sleep(120)\n").unwrap();
    let _mine = KillOnDrop(
        std::process::Command::new(python)
            .arg(&script)
            .arg(format!("--port={port}"))
            .arg("--host=127.0.0.1")
            .arg(format!("--temp-dir={}", temp_dir.display()))
            .arg(format!("--session-dir={}/session_x", temp_dir.display()))
            .spawn()
            .unwrap(),
    );

    let doc = doctor(&stack, dir.path(), &temp_dir);
    let f = finding(&doc, "dashboard_auth");
    assert_eq!(f["status"], "warning", "{f:#}");
    assert!(
        f["evidence"]
            .to_string()
            .contains(&format!("held by {}", crate::security::OTHER)),
        "{f:#}"
    );
    assert_eq!(
        fs_err::read_to_string(&log).unwrap(),
        "",
        "the other user's listener was asked"
    );
}

/// Kills and reaps a process when dropped (also when the test fails).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
