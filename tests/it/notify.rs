//! Notifications besides the plain webhook: Slack's JSON and e-mail reach a
//! real receiver through a real Alertmanager, their secrets only in files
//! (copied 0600, never shown), `notify test` says what each receiver answered,
//! and files another user controls are refused by `up`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::alerts::idle_gpu_node;
use crate::security::other_user;
use crate::support::*;
use raywatch::testkit::HttpSink;

fn need_alertmanager() {
    if on_path("prometheus-alertmanager").is_none() && on_path("alertmanager").is_none() {
        unmet("alertmanager");
    }
}

/// The test virtualenv's Python with `aiosmtpd` (scripts/test installs it).
fn smtp_sink_python() -> PathBuf {
    let python = std::env::var_os("RAYWATCH_TEST_RAY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/raywatch-venv/bin/ray")
        })
        .with_file_name("python");
    let has = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        unmet("aiosmtpd, a Python SMTP server from PyPI in the test virtualenv");
    }
    python
}

/// A file only this user reads, holding `text`.
fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let f = dir.join(name);
    fs_err::write(&f, format!("{text}\n")).unwrap();
    fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f
}

/// The copies of secrets of this kind (`slack`, `webhook`, `smtp-password`) in the home.
fn copies(home: &Path, kind: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs_err::read_dir(home.join("secrets"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(kind)?.strip_prefix('-'))
            .is_some_and(|d| d.len() == 16)
    });
    found
}

fn mode(p: &Path) -> u32 {
    fs_err::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Whether `secret` shows anywhere another process or a reader of the stack's
/// output could see it: command lines, `status` (human and JSON), the logs.
fn assert_nowhere(stack: &Stack, secret: &str) {
    assert!(
        processes_mentioning(secret).is_empty(),
        "a command line carries the secret"
    );
    for args in [&["status"][..], &["status", "--json"]] {
        let out = stack.run(args);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(secret), "{args:?} shows the secret: {all}");
    }
    for log in ["daemon.log", "daemon.stderr", "prometheus.log"] {
        let text = fs_err::read_to_string(stack.home.join("logs").join(log)).unwrap_or_default();
        assert!(!text.contains(secret), "logs/{log} carries the secret");
    }
    let yml = fs_err::read_to_string(stack.home.join("alertmanager/alertmanager.yml")).unwrap();
    assert!(!yml.contains(secret), "alertmanager.yml carries the secret");
}

/// A Slack incoming webhook (here a loopback receiver speaking its part) gets
/// Slack's JSON for a firing alert, naming the alert, cluster, user and host;
/// its URL lives only in a 0600 copy inside the home, which the second user
/// cannot read, and shows on no command line, status or log.
#[test]
fn a_slack_webhook_gets_slacks_json_naming_the_cluster_and_its_url_stays_secret() {
    need_alertmanager();
    let other = other_user();
    let slack = HttpSink::start().unwrap();
    let dir = scratch();
    let token = format!("T0KEN{}", std::process::id());
    let url = format!("{}/services/T01/B02/{token}", slack.base);
    let file = secret_file(dir.path(), "slack.url", &url);
    let (stack, root) = Stack::watching(
        "ray_slack",
        &[
            "--gpu-idle-for",
            "1s",
            "--notify-slack-webhook-file",
            file.to_str().unwrap(),
        ],
    );
    let endpoint = MetricsEndpoint::serve(&idle_gpu_node("session_slack_1"));
    let _head = FakeHead::start(&root, "session_slack_1", vec![endpoint.addr.clone()]);
    let name = format!("{}-ray_slack", user());
    let path = format!("/services/T01/B02/{token}");
    let note = wait_explained(
        "RayGpusIdle at the Slack webhook",
        Duration::from_secs(120),
        || {
            slack.json_on(&path).into_iter().find(|n| {
                n["attachments"][0]["title"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("[FIRING] RayGpusIdle"))
            })
        },
        || format!("received: {:?}\n{}", slack.received(), stack.diagnostics()),
    );
    // Slack's shape: attachments with a title, a markdown text and a colour;
    // not Alertmanager's webhook JSON.
    assert!(note.get("alerts").is_none(), "{note}");
    let att = &note["attachments"][0];
    assert_eq!(
        att["title"],
        format!("[FIRING] RayGpusIdle on {name}"),
        "{note}"
    );
    assert_eq!(att["color"], "danger", "{note}");
    assert!(
        att["mrkdwn_in"]
            .as_array()
            .is_some_and(|m| m.iter().any(|f| f == "text")),
        "{note}"
    );
    let text = att["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "*RayGpusIdle* (warning): cluster {name}, user {}, host ",
            user()
        )),
        "{text}"
    );
    assert!(text.contains(&format!("GPUs held by {name}")), "{text}");

    // The URL: a 0600 copy in the home, which the second user cannot read,
    // and nowhere else.
    let copy = copies(&stack.home, "slack")
        .pop()
        .expect("a copy of the Slack URL");
    assert_eq!(fs_err::read_to_string(&copy).unwrap().trim(), url);
    assert_eq!(mode(&copy), 0o600);
    let out = command_as(other, "cat").arg(&copy).output().unwrap();
    assert!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains(&token),
        "the second user read the copy"
    );
    assert_nowhere(&stack, &token);
}

/// The aiosmtpd sink: every message and every login it gets, in files.
const SMTP_SINK: &str = r#"
import sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
port, out = int(sys.argv[1]), sys.argv[2]
class Handler:
    async def handle_DATA(self, server, session, envelope):
        with open(out, 'ab') as f:
            f.write(b'RCPT ' + ','.join(envelope.rcpt_tos).encode() + b'\n' + envelope.content + b'\n.\n')
        return '250 OK'
def login(server, session, envelope, mechanism, data):
    with open(out + '.auth', 'ab') as f:
        f.write(mechanism.encode() + b' ' + data.login + b':' + data.password + b'\n')
    return AuthResult(success=True)
# PLAIN only: Go's client expects LOGIN's challenges as real servers word them.
c = Controller(Handler(), hostname='127.0.0.1', port=port, authenticator=login,
               auth_require_tls=False, auth_exclude_mechanism=['LOGIN'])
c.start()
print('ready', flush=True)
while True:
    time.sleep(3600)
"#;

/// A local SMTP server (aiosmtpd), killed on drop.
struct SmtpSink {
    child: Child,
    port: u16,
    mail: PathBuf,
}

impl SmtpSink {
    fn start(dir: &Path) -> SmtpSink {
        use std::io::BufRead;
        let python = smtp_sink_python();
        let script = dir.join("sink.py");
        fs_err::write(&script, SMTP_SINK).unwrap();
        // Below 1024, as a relay that takes a password in the clear must be (root's
        // ports: no other user can stand in for it); the test runs as root.
        if !nix::unistd::geteuid().is_root() {
            unmet("root, for an SMTP port below 1024");
        }
        let port = (900..1024)
            .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
            .expect("a free port below 1024");
        let mail = dir.join("mail.txt");
        let child = Command::new(python)
            .arg(&script)
            .arg(port.to_string())
            .arg(&mail)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Killed on drop from here on, whatever the checks below find.
        let mut sink = SmtpSink { child, port, mail };
        let stdout = sink.child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        assert_eq!(line.trim(), "ready", "the SMTP sink did not start");
        sink
    }

    fn mail(&self) -> String {
        fs_err::read_to_string(&self.mail).unwrap_or_default()
    }

    fn logins(&self) -> String {
        fs_err::read_to_string(self.mail.with_extension("txt.auth")).unwrap_or_default()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A firing alert reaches a local SMTP server as a mail to the address given,
/// from `--smtp-from`, its subject and text naming the alert and cluster, after
/// a login with the password of `--smtp-auth-file` (read from its 0600 copy).
#[test]
fn an_alert_is_mailed_through_a_local_smtp_server_with_the_password_from_its_file() {
    need_alertmanager();
    let dir = scratch();
    let sink = SmtpSink::start(dir.path());
    let password = format!("pw-S3CRET-{}", std::process::id());
    let auth = secret_file(dir.path(), "smtp-auth", &format!("alice:{password}"));
    let smarthost = format!("127.0.0.1:{}", sink.port);
    let (stack, root) = Stack::watching(
        "ray_mail",
        &[
            "--gpu-idle-for",
            "1s",
            "--notify-email",
            "oncall@example.org",
            "--smtp",
            &smarthost,
            "--smtp-auth-file",
            auth.to_str().unwrap(),
            "--smtp-from",
            "raywatch@box.example.org",
        ],
    );
    let endpoint = MetricsEndpoint::serve(&idle_gpu_node("session_mail_1"));
    let _head = FakeHead::start(&root, "session_mail_1", vec![endpoint.addr.clone()]);
    let name = format!("{}-ray_mail", user());
    let mail = wait_explained(
        "the RayGpusIdle mail",
        Duration::from_secs(120),
        || {
            let all = sink.mail();
            all.split("\n.\n")
                .find(|m| m.contains("Subject: [FIRING] RayGpusIdle"))
                .map(String::from)
        },
        || format!("mail: {}\n{}", sink.mail(), stack.diagnostics()),
    );
    assert!(mail.starts_with("RCPT oncall@example.org\n"), "{mail}");
    assert!(mail.contains("From: raywatch@box.example.org"), "{mail}");
    assert!(
        mail.contains(&format!("Subject: [FIRING] RayGpusIdle on {name}")),
        "{mail}"
    );
    assert!(
        mail.contains(&format!(
            "*RayGpusIdle* (warning): cluster {name}, user {}",
            user()
        )),
        "{mail}"
    );
    assert!(
        sink.logins().contains(&format!("PLAIN alice:{password}")),
        "the mail server saw no login with the file's password: {}",
        sink.logins()
    );
    let copy = copies(&stack.home, "smtp-password")
        .pop()
        .expect("a copy of the password");
    assert_eq!(fs_err::read_to_string(&copy).unwrap(), password);
    assert_eq!(mode(&copy), 0o600);
    assert_nowhere(&stack, &password);
}

/// `notify test` sends through Alertmanager to every receiver and names each:
/// the working webhook ok, the one on a closed port failed with the reason
/// (its token-carrying URL not shown), exit 1; a receiver added by `up` on the
/// running stack reloads Alertmanager, and then every receiver is ok, exit 0.
/// Without a running stack, or (after `up --no-notify`) without receivers, it says so.
#[test]
fn notify_test_reports_each_receiver_and_names_the_failing_one() {
    need_alertmanager();
    let hook = HttpSink::start().unwrap();
    let dir = scratch();
    let closed = free_port();
    let token = format!("tok3n{}", std::process::id());
    let broken = secret_file(
        dir.path(),
        "broken.url",
        &format!("http://127.0.0.1:{closed}/hook?token={token}"),
    );
    let good = secret_file(
        dir.path(),
        "good.url",
        &format!("{}/second?token={token}", hook.base),
    );
    let (stack, _root) = Stack::watching(
        "ray_test",
        &[
            "--notify-webhook",
            &format!("{}/first", hook.base),
            "--notify-webhook-file",
            broken.to_str().unwrap(),
        ],
    );
    let out = stack.run(&["notify", "test"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{said}{err}");
    let lines: Vec<&str> = said.lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "ok         webhook[0]  webhook {}/first",
            hook.base
        )),
        "{said}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "failed     webhook[1]  webhook from {}: ",
            broken.display()
        )) && lines[1].contains("connection refused"),
        "{said}"
    );
    assert_eq!(
        lines[2], "1 of 2 receivers did not take the test notification",
        "{said}"
    );
    assert!(
        !said.contains(&token) && !err.contains(&token),
        "{said}{err}"
    );
    let test = hook.json_on("/first");
    assert!(
        test.iter()
            .any(|n| n["alerts"][0]["labels"]["alertname"] == "RaywatchNotifyTest"),
        "{test:?}"
    );

    // The broken one replaced by a working one: Alertmanager reloads, no restart.
    let pid = stack.status()["alertmanager"]["pid"].as_u64();
    let out = stack.run(&["up", "--notify-webhook-file", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("notification receivers 2 webhook -> 2 webhook (Alertmanager reloaded)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stack.status()["alertmanager"]["pid"].as_u64(), pid);
    // Alertmanager rereads its file on the signal: poll until the new receiver answers.
    let json = wait_for("every receiver ok", Duration::from_secs(60), || {
        let out = stack.run(&["notify", "test", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        out.status.success().then_some(v)
    });
    assert_eq!(json["schema"], 1);
    let results: Vec<(&str, &str)> = json["receivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["integration"].as_str().unwrap(),
                r["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(results, [("webhook[0]", "ok"), ("webhook[1]", "ok")]);
    assert!(!hook.json_on(&format!("/second?token={token}")).is_empty());
    // The replaced URL's copy is gone; the new one is the only one.
    let kept = copies(&stack.home, "webhook");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        fs_err::read_to_string(&kept[0])
            .unwrap()
            .contains("/second?token=")
    );

    // No stack running: said so, exit 3.
    let down = stack.run(&["down"]);
    assert!(down.status.success());
    let out = stack.run(&["notify", "test"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("raywatch is not running for"), "{err}");

    // `up --no-notify` starts the stack without receivers: no Alertmanager,
    // and the copies of the secrets are gone.
    let out = stack.run(&["up", "--no-notify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stack.status()["alertmanager"].is_null());
    assert!(copies(&stack.home, "webhook").is_empty());
    let out = stack.run(&["notify", "test"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no notification receiver is configured")
    );
}

/// The second user plants what `up` is told to read as a Slack URL, a token
/// webhook or the mail server's password: a symbolic link (to the victim's own
/// file, or to /dev/zero), a FIFO, a file of their own. `up` refuses each,
/// naming the file and what is wrong with it, without hanging, and writes no
/// copy and no settings. A huge file of the user's own is refused too.
#[test]
fn notify_files_another_user_controls_are_refused_by_up_and_nothing_is_written() {
    let other = other_user();
    let mine = scratch();
    let real = secret_file(mine.path(), "real.url", "https://hooks.example/T/B/x");
    let huge = mine.path().join("huge.url");
    let f = fs_err::File::create(&huge).unwrap();
    f.set_len(64 << 20).unwrap();
    // A folder both users write to, like /tmp.
    let shared = scratch();
    fs_err::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let plant = |script: &str| {
        let out = command_as(other, "sh")
            .current_dir(shared.path())
            .args(["-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    plant(&format!(
        "ln -s '{}' link.url && ln -s /dev/zero zero.url && mkfifo fifo.url && \
         printf 'https://hooks.example/other\\nalice:pw\\n' > theirs.url",
        real.display()
    ));
    let s = shared.path();
    let cases: Vec<(PathBuf, &str)> = vec![
        (s.join("link.url"), "it is a symbolic link"),
        (s.join("zero.url"), "it is a symbolic link"),
        (s.join("fifo.url"), "it is a FIFO"),
        (s.join("theirs.url"), "it is owned by uid"),
        (
            huge.clone(),
            "it is 67108864 bytes, over the 16384-byte limit",
        ),
    ];
    for flag in [
        "--notify-slack-webhook-file",
        "--notify-webhook-file",
        "--smtp-auth-file",
    ] {
        for (file, why) in &cases {
            let dir = scratch();
            let home = dir.path().join("home");
            let mut args = vec![
                "--home".to_string(),
                home.display().to_string(),
                "up".into(),
                "--no-default-watch".into(),
            ];
            if flag == "--smtp-auth-file" {
                args.extend(
                    ["--notify-email", "a@example.org", "--smtp", "127.0.0.1:25"].map(String::from),
                );
            }
            args.extend([flag.to_string(), file.display().to_string()]);
            let out = Command::new("timeout")
                .arg("20")
                .arg(raywatch_bin())
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{flag} {}: {err}",
                file.display()
            );
            assert!(
                err.contains(&format!("{flag} {}: {why}", file.display())),
                "{flag} {}: {err}",
                file.display()
            );
            for kind in ["slack", "webhook", "smtp-password"] {
                let made = copies(&home, kind);
                assert!(made.is_empty(), "{flag}: a copy was written: {made:?}");
            }
            assert!(!home.join("config.json").exists(), "{flag}: settings saved");
            assert!(
                processes_mentioning(&home.display().to_string()).is_empty(),
                "{flag}: a stack started"
            );
        }
    }
}
