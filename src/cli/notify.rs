//! `raywatch notify test`: a test alert through the stack's Alertmanager to every
//! receiver, and what each answered (Alertmanager's counters and its log).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, anyhow};
use serde::Serialize;

use super::{Exit, Hint, fetch_status, runtime, stack_down};
use crate::config::StackConfig;
use crate::escape;
use crate::home::Home;
use crate::prometheus::Client;

/// The schema of `notify test --json`.
const SCHEMA: u32 = 1;

/// What one receiver answered.
#[derive(Serialize, Debug, Clone, PartialEq)]
struct Answer {
    /// Alertmanager's name of it: `webhook[0]`, `slack[0]`, `email[0]`.
    integration: String,
    /// What it is (a file's path, an address; never a secret).
    receiver: String,
    /// "ok", "failed" or "no answer".
    result: &'static str,
    /// Alertmanager's error, secrets removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize)]
struct Report<'a> {
    schema: u32,
    receivers: &'a [Answer],
}

pub(super) fn test(home: &Home, json: bool, timeout: Duration) -> Result<Exit> {
    let cfg = StackConfig::load(&home.config())?.unwrap_or_default();
    if !cfg.has_receivers() {
        return Err(Hint::attach(
            anyhow!(
                "no notification receiver is configured for {}",
                escape::path(home.root())
            ),
            "add one: raywatch up --notify-webhook URL, --notify-webhook-file FILE, --notify-slack-webhook-file FILE, or --notify-email ADDR --smtp HOST:PORT",
        ));
    }
    let rt = runtime()?;
    rt.block_on(fetch_status(home))
        .map_err(|e| stack_down(home, e))?;
    let client = Client::alertmanager(home)?;
    let integrations = crate::alertmanager::integrations(&cfg);
    let secrets = secrets(&cfg);
    let log = home.alertmanager_log();
    let log_start = fs_err::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let before = rt.block_on(counters(&client))?;
    rt.block_on(send(&client, &cfg))?;
    let deadline = Instant::now() + timeout;
    let answers = loop {
        let after = rt.block_on(counters(&client))?;
        let lines = log_since(&log, log_start);
        let (answers, done) = judge(&integrations, &before, &after, &lines, &secrets);
        if done || Instant::now() > deadline {
            break answers;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if json {
        let report = Report {
            schema: SCHEMA,
            receivers: &answers,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&answers, timeout));
    }
    Ok(if answers.iter().all(|a| a.result == "ok") {
        Exit::Success
    } else {
        Exit::Failure
    })
}

/// Posts the test alert: its own group (see the route of
/// [`crate::alertmanager::TEST_ALERT`]), sent at once to every receiver.
async fn send(client: &Client, cfg: &StackConfig) -> Result<()> {
    let now = SystemTime::now();
    let stamp = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        .to_string();
    let user = crate::process::user_name(nix::unistd::geteuid().as_raw());
    let host = cfg.ray_host();
    let body = serde_json::json!([{
        "labels": {
            "alertname": crate::alertmanager::TEST_ALERT,
            "severity": "info",
            "ray_io_cluster": "notify-test",
            "ray_user": user,
            "ray_host": host,
            "test": stamp,
        },
        "annotations": {
            "summary": format!("A test notification of raywatch (user {user} on {host})"),
            "description": "Nothing to do: `raywatch notify test` checks that notifications reach you.",
        },
        "startsAt": humantime::format_rfc3339(now).to_string(),
        "endsAt": humantime::format_rfc3339(now + Duration::from_secs(60)).to_string(),
    }]);
    let (status, _, answer) = client
        .forward(
            reqwest::Method::POST,
            "/api/v2/alerts",
            None,
            Some(reqwest::header::HeaderValue::from_static(
                "application/json",
            )),
            serde_json::to_vec(&body)?.into(),
        )
        .await?;
    anyhow::ensure!(
        status == 200,
        "Alertmanager refused the test alert (HTTP {status}): {}",
        escape::text(String::from_utf8_lossy(&answer).trim())
    );
    Ok(())
}

/// Alertmanager's request counters per integration kind: (all, failed).
type Counters = BTreeMap<String, (f64, f64)>;

async fn counters(client: &Client) -> Result<Counters> {
    let (status, _, text) = client
        .forward(
            reqwest::Method::GET,
            "/metrics",
            None,
            None,
            Default::default(),
        )
        .await?;
    anyhow::ensure!(status == 200, "Alertmanager's /metrics answered {status}");
    Ok(parse_counters(&String::from_utf8_lossy(&text)))
}

/// `alertmanager_notification_requests_total` and `..._failed_total` by `integration`.
fn parse_counters(text: &str) -> Counters {
    let mut out = Counters::new();
    for line in text.lines() {
        let (failed, rest) = if let Some(r) =
            line.strip_prefix("alertmanager_notification_requests_failed_total{")
        {
            (true, r)
        } else if let Some(r) = line.strip_prefix("alertmanager_notification_requests_total{") {
            (false, r)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(kind) = labels
            .split(',')
            .find_map(|l| l.strip_prefix("integration=\""))
            .map(|v| v.trim_end_matches('"').to_string())
        else {
            continue;
        };
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        let e = out.entry(kind).or_default();
        if failed {
            e.1 = v;
        } else {
            e.0 = v;
        }
    }
    out
}

/// The lines Alertmanager logged since `start` (bytes), at most 1 MiB of them.
fn log_since(log: &std::path::Path, start: u64) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = fs_err::File::open(log) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // A log rotated meanwhile is read from its start.
    let from = if len < start { 0 } else { start };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(1 << 20).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .lines()
        .map(String::from)
        .collect()
}

/// The secrets an error may carry (the URLs and password of the copies).
fn secrets(cfg: &StackConfig) -> Vec<String> {
    let copies = cfg
        .notify_slack
        .iter()
        .chain(&cfg.notify_webhook_files)
        .chain(cfg.smtp.iter().filter_map(|s| s.auth_password.as_ref()));
    copies
        .filter_map(|c| fs_err::read_to_string(&c.file).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// An error of Alertmanager's with the secrets and every URL's path and query removed.
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        out = out.replace(s.as_str(), "<secret>");
    }
    // Any URL left keeps its scheme and host only.
    let mut result = String::new();
    let mut rest = out.as_str();
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        result.push_str(head);
        let host_end = tail
            .find(|c: char| c == '/' || c == '?' || c == '"' || c.is_whitespace())
            .unwrap_or(tail.len());
        let host = &tail[..host_end];
        result.push_str(host.rsplit('@').next().unwrap_or(host));
        let after = &tail[host_end..];
        let url_end = after
            .find(|c: char| c == '"' || c == '\\' || c.is_whitespace())
            .unwrap_or(after.len());
        if url_end > 0 {
            result.push_str("/…");
        }
        rest = &after[url_end..];
    }
    result.push_str(rest);
    result
}

/// The `err="..."` of a logfmt line.
fn logged_error(line: &str) -> String {
    match line.split_once("err=\"") {
        Some((_, e)) => e.strip_suffix('"').unwrap_or(e).replace("\\\"", "\""),
        None => line.to_string(),
    }
}

/// Each receiver's answer from the counters' change and the log, and whether
/// every receiver has answered.
fn judge(
    integrations: &[(String, String)],
    before: &Counters,
    after: &Counters,
    lines: &[String],
    secrets: &[String],
) -> (Vec<Answer>, bool) {
    let delta = |kind: &str| {
        let b = before.get(kind).copied().unwrap_or_default();
        let a = after.get(kind).copied().unwrap_or_default();
        (a.0 - b.0, a.1 - b.1)
    };
    let kind_of = |name: &str| name.split('[').next().unwrap_or(name).to_string();
    let mut answers: Vec<Answer> = integrations
        .iter()
        .map(|(name, what)| {
            // The name whole (webhook[1] is not webhook[10]), the level in any case.
            let failure = lines.iter().rev().find(|l| {
                let lower = l.to_ascii_lowercase();
                l.split_whitespace().any(|w| {
                    w == format!("integration={name}") || w.ends_with(&format!("/{name}:"))
                }) && (lower.contains("level=warn") || lower.contains("level=error"))
            });
            Answer {
                integration: name.clone(),
                receiver: what.clone(),
                result: if failure.is_some() {
                    "failed"
                } else {
                    "no answer"
                },
                error: failure.map(|l| scrub(&logged_error(l), secrets)),
            }
        })
        .collect();
    let mut done = true;
    let kinds: std::collections::BTreeSet<String> =
        integrations.iter().map(|(n, _)| kind_of(n)).collect();
    for kind in kinds {
        let (all, failed) = delta(&kind);
        let ok = (all - failed).max(0.0) as usize;
        let open: Vec<&mut Answer> = answers
            .iter_mut()
            .filter(|a| kind_of(&a.integration) == kind && a.result != "failed")
            .collect();
        if ok >= open.len() {
            for a in open {
                a.result = "ok";
            }
        } else {
            done = false;
        }
    }
    (answers, done)
}

fn render(answers: &[Answer], timeout: Duration) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for a in answers {
        let _ = write!(
            out,
            "{:<10} {:<11} {}",
            a.result,
            a.integration,
            escape::text(&a.receiver)
        );
        match (&a.error, a.result) {
            (Some(e), _) => {
                let _ = write!(out, ": {}", escape::text(e));
            }
            (None, "no answer") => {
                let _ = write!(
                    out,
                    ": no answer within {}",
                    humantime::format_duration(timeout)
                );
            }
            _ => {}
        }
        out.push('\n');
    }
    let failed = answers.iter().filter(|a| a.result != "ok").count();
    if failed == 0 {
        let _ = writeln!(
            out,
            "every receiver ({}) took the test notification",
            answers.len()
        );
    } else {
        let _ = writeln!(
            out,
            "{failed} of {} receivers did not take the test notification",
            answers.len()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP alertmanager_notification_requests_total The total number of attempted notification requests.
alertmanager_notification_requests_total{integration="email"} 0
alertmanager_notification_requests_total{integration="webhook"} 3
alertmanager_notification_requests_failed_total{integration="webhook"} 1
"#;

    #[test]
    fn counters_are_read_per_integration() {
        let c = parse_counters(METRICS);
        assert_eq!(c["webhook"], (3.0, 1.0));
        assert_eq!(c["email"], (0.0, 0.0));
    }

    #[test]
    fn a_logged_failure_names_its_receiver_and_the_others_count_as_ok() {
        let integrations = vec![
            (
                "webhook[0]".to_string(),
                "webhook http://127.0.0.1:1/a".to_string(),
            ),
            (
                "webhook[1]".to_string(),
                "webhook from /home/a/hook".to_string(),
            ),
        ];
        let before = parse_counters("");
        let after = parse_counters(METRICS);
        let lines = vec![
            r#"ts=2026 caller=notify.go:732 level=warn component=dispatcher receiver=raywatch integration=webhook[1] msg="Notify attempt failed, will retry later" attempts=1 err="Post \"http://127.0.0.1:9/t0ken?x=s3cret\": dial tcp 127.0.0.1:9: connect: connection refused""#.to_string(),
        ];
        let secrets = vec!["http://127.0.0.1:9/t0ken?x=s3cret".to_string()];
        let (answers, done) = judge(&integrations, &before, &after, &lines, &secrets);
        assert!(done);
        assert_eq!(answers[0].result, "ok");
        assert_eq!(answers[1].result, "failed");
        let e = answers[1].error.as_deref().unwrap();
        assert!(
            e.contains("connection refused") && !e.contains("s3cret"),
            "{e}"
        );
        // Not yet counted: not done, nobody ok.
        let (answers, done) = judge(&integrations, &before, &before, &[], &secrets);
        assert!(!done && answers.iter().all(|a| a.result == "no answer"));
        let text = render(&answers, Duration::from_secs(30));
        assert!(text.contains("no answer within 30s"), "{text}");
        assert!(text.ends_with("2 of 2 receivers did not take the test notification\n"));
    }

    #[test]
    fn urls_in_errors_keep_only_scheme_and_host() {
        assert_eq!(
            scrub(
                r#"Post "https://hooks.slack.com/services/T/B/xyz": EOF"#,
                &[]
            ),
            r#"Post "https://hooks.slack.com/…": EOF"#
        );
        assert_eq!(
            scrub("to https://u:pw@h.example:8/p?q=1 failed", &[]),
            "to https://h.example:8/… failed"
        );
        assert_eq!(scrub("pw=hunter2 x", &["hunter2".into()]), "pw=<secret> x");
    }
}
