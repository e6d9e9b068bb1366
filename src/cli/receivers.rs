//! `up`'s notification receivers: webhooks, Slack, e-mail and the mail server,
//! their secrets (read from files, copied 0600 into the home), and the
//! Alertmanager that delivers them (its binary, its port, when it may start).

use std::path::PathBuf;

use anyhow::{Result, anyhow};

use super::{Hint, UpArgs};
use crate::config::StackConfig;
use crate::escape;
use crate::home::Home;

/// Receivers need an Alertmanager to deliver them and a Prometheus that
/// evaluates rules, and e-mail a mail server: said plainly rather than saved
/// to do nothing.
pub(super) fn check_notifications(config: &StackConfig) -> Result<()> {
    if !config.notify_email.is_empty() && config.smtp.is_none() {
        return Err(Hint::attach(
            anyhow!("--notify-email needs a mail server to send through, and none was given"),
            "add --smtp HOST:PORT (e.g. --smtp smtp.example.org:587 --smtp-auth-file FILE, or --smtp 127.0.0.1:25 for a local relay)",
        ));
    }
    if !config.has_receivers() {
        return Ok(());
    }
    // The flag the message names: the first kind of receiver configured.
    let flag = [
        (!config.notify_webhooks.is_empty(), "--notify-webhook"),
        (
            !config.notify_webhook_files.is_empty(),
            "--notify-webhook-file",
        ),
        (
            !config.notify_slack.is_empty(),
            "--notify-slack-webhook-file",
        ),
        (!config.notify_email.is_empty(), "--notify-email"),
    ]
    .into_iter()
    .find_map(|(set, flag)| set.then_some(flag))
    .unwrap_or("--notify-webhook");
    if config.alertmanager_bin.is_none() {
        return Err(Hint::attach(
            anyhow!("{flag} needs Alertmanager, and none was found"),
            "`raywatch install alertmanager` gets it (no root needed), or name one with --alertmanager-bin PATH",
        ));
    }
    if config.agent {
        return Err(Hint::attach(
            anyhow!("{flag} with --agent: an agent evaluates no alert rules"),
            "load `raywatch alerts rules` into the central store's Prometheus or vmalert and notify from there, or drop --agent",
        ));
    }
    Ok(())
}

/// The Alertmanager to run when there are receivers: the flag's, one on PATH,
/// or `raywatch install alertmanager`'s.
pub(super) fn alertmanager_bin(args: &UpArgs) -> Result<Option<PathBuf>> {
    Ok(
        match crate::alertmanager::locate(args.alertmanager_bin.as_deref())? {
            Some(bin) => Some(bin),
            None => crate::install::cached(crate::install::Program::Alertmanager).unwrap_or(None),
        },
    )
}

/// Alertmanager's port: the previous one while free, else a fresh one other than `taken`.
pub(super) fn alertmanager_port(previous: Option<&StackConfig>, taken: &[u16]) -> Result<u16> {
    if let Some(c) = previous.filter(|c| {
        c.alertmanager_port != 0
            && !taken.contains(&c.alertmanager_port)
            && crate::ports::is_free(c.alertmanager_port)
    }) {
        return Ok(c.alertmanager_port);
    }
    loop {
        let p = crate::ports::free_port()?;
        if !taken.contains(&p) {
            return Ok(p);
        }
    }
}

/// The receivers a running stack is given: refused when its Alertmanager does not
/// run (it starts with the first receiver, on a fresh start only).
pub(super) fn check_receivers(
    home: &Home,
    current: &StackConfig,
    wanted: &StackConfig,
) -> Result<()> {
    if wanted.has_receivers() && !current.runs_alertmanager() {
        return Err(Hint::attach(
            anyhow!(
                "raywatch is running for {} without Alertmanager, which starts with the first notification receiver on a fresh start only",
                escape::path(home.root())
            ),
            "raywatch down, then raywatch up with the receivers (and --yes, or --alertmanager-bin PATH, if there is no Alertmanager yet)",
        ));
    }
    check_notifications(wanted)
}

/// `up`'s receivers whose secrets come from files (Slack, webhooks with a
/// token, the mail server's password), and `--no-notify`. Every file is read
/// and checked before anything is written; each secret is then copied into
/// `<home>/secrets` (0600), which is all the stack reads afterwards.
pub(super) fn apply_notify(home: &Home, args: &UpArgs, base: &mut StackConfig) -> Result<()> {
    use crate::alertmanager::{check_address, check_secret_url, read_secret, store_secret};
    if args.no_notify {
        base.notify_webhooks.clear();
        base.notify_slack.clear();
        base.notify_webhook_files.clear();
        base.notify_email.clear();
        base.smtp = None;
    }
    let urls = |flag: &str, files: &[PathBuf]| -> Result<Vec<(PathBuf, String)>> {
        files
            .iter()
            .map(|f| {
                let url = read_secret(flag, f)?;
                check_secret_url(flag, f, &url)?;
                Ok((std::path::absolute(f).unwrap_or_else(|_| f.clone()), url))
            })
            .collect()
    };
    let slack = urls(
        "--notify-slack-webhook-file",
        &args.notify_slack_webhook_file,
    )?;
    let hooks = urls("--notify-webhook-file", &args.notify_webhook_file)?;
    let emails = args
        .notify_email
        .iter()
        .map(|a| check_address("--notify-email", a))
        .collect::<Result<Vec<_>>>()?;
    let smtp = args
        .smtp
        .as_deref()
        .map(|s| smtp_settings(args, s))
        .transpose()?;
    let store = |kind: &str, got: Vec<(PathBuf, String)>| -> Result<Vec<_>> {
        got.iter()
            .map(|(from, url)| store_secret(home, from, kind, url))
            .collect()
    };
    if !args.notify_slack_webhook_file.is_empty() {
        base.notify_slack = store("slack", slack)?;
    }
    if !args.notify_webhook_file.is_empty() {
        base.notify_webhook_files = store("webhook", hooks)?;
    }
    if !emails.is_empty() {
        base.notify_email = emails;
    }
    if let Some((mut smtp, password)) = smtp {
        if let Some((from, password)) = password {
            smtp.auth_password = Some(store_secret(home, &from, "smtp-password", &password)?);
        }
        base.smtp = Some(smtp);
    }
    Ok(())
}

/// `--smtp`, `--smtp-from` and `--smtp-auth-file` (`user:password` on one
/// line): the settings, and the password with the file it came from (not yet stored).
type SmtpPassword = Option<(PathBuf, String)>;

pub(super) fn smtp_settings(
    args: &UpArgs,
    smtp: &str,
) -> Result<(crate::config::Smtp, SmtpPassword)> {
    const FLAG: &str = "--smtp-auth-file";
    let (smarthost, require_tls) = crate::alertmanager::check_smarthost(smtp)?;
    let from = match &args.smtp_from {
        Some(a) => crate::alertmanager::check_address("--smtp-from", a)?,
        None => format!(
            "raywatch@{}",
            fs_err::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into())
        ),
    };
    let mut auth_username = None;
    let mut password = None;
    if let Some(f) = &args.smtp_auth_file {
        crate::alertmanager::check_auth_over(&smarthost, require_tls)?;
        let text = crate::alertmanager::read_secret(FLAG, f)?;
        let (user, pass) = text
            .split_once(':')
            .filter(|(u, p)| !u.is_empty() && !p.is_empty() && !text.contains('\n'))
            .ok_or_else(|| {
                anyhow!(
                    "{FLAG} {} must hold user:password on one line",
                    escape::path(f)
                )
            })?;
        auth_username = Some(user.to_string());
        password = Some((
            std::path::absolute(f).unwrap_or_else(|_| f.clone()),
            pass.to_string(),
        ));
    }
    Ok((
        crate::config::Smtp {
            smarthost,
            from,
            auth_username,
            auth_password: None,
            require_tls,
        },
        password,
    ))
}
