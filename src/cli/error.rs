//! How a command ends: its exit code ([`Exit`]), and the printer that shows an error
//! as `error:`, `Caused by:` lines, then the [`Hint`]s as `hint:` lines.

use std::process::ExitCode;

use crate::api::{NotRunning, Refusal, Unreadable};
use crate::error::Hint;
use crate::escape;

/// What a command tells its caller (documented in the README, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done.
    Success,
    /// 1: the user's input or the environment is wrong (a taken port, no
    /// Prometheus, an unknown cluster, a PromQL error, a command line clap rejects).
    Failure,
    /// 2: a bug in raywatch: the daemon's internal error (HTTP 500), an answer
    /// this raywatch cannot read, a panic.
    Internal,
    /// 3: the stack is not running, for a command that needs its daemon.
    NotRunning,
}

impl Exit {
    /// The exit code an error ends the command with: the first cause that
    /// decides it, from the outermost; anything else is the user's or the
    /// environment's (1).
    pub fn of(error: &anyhow::Error) -> Exit {
        for cause in error.chain() {
            if cause.is::<NotRunning>() {
                return Exit::NotRunning;
            }
            if matches!(cause.downcast_ref::<Refusal>(), Some(Refusal::Internal(_)))
                || cause.is::<Unreadable>()
            {
                return Exit::Internal;
            }
        }
        Exit::Failure
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(match exit {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Internal => 2,
            Exit::NotRunning => 3,
        })
    }
}

/// An error as the user reads it: `error: <message>`, then `  Caused by: <cause>`
/// for each cause, then every hint as `hint: ...`, last. Messages carry paths
/// and names from outside raywatch: their control characters are shown
/// escaped; the line breaks raywatch wrote are kept.
pub fn render(error: &anyhow::Error) -> String {
    let mut messages: Vec<String> = Vec::new();
    let mut hints: Vec<String> = Vec::new();
    for cause in error.chain() {
        if let Some(h) = cause.downcast_ref::<Hint>() {
            hints.push(h.text().to_string());
            continue;
        }
        messages.push(cause.to_string());
    }
    let mut seen = std::collections::HashSet::new();
    hints.retain(|h| seen.insert(h.clone()));

    let mut out = String::new();
    for (i, m) in messages.iter().enumerate() {
        let prefix = if i == 0 { "error: " } else { "  Caused by: " };
        out.push_str(prefix);
        out.push_str(&escape::lines(m));
        out.push('\n');
    }
    for h in hints {
        out.push_str("hint: ");
        out.push_str(&escape::lines(&h));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use anyhow::{Context, anyhow};

    use super::*;
    use crate::error::HintExt;

    #[test]
    fn the_hint_comes_after_every_cause() {
        let e: Result<(), _> = Err(std::io::Error::other("disk on fire"));
        let e = e
            .context("cannot write /h/targets/a.json")
            .hint("free some space")
            .context("the targets kept their last version")
            .unwrap_err();
        assert_eq!(
            render(&e),
            "error: the targets kept their last version\n  \
             Caused by: cannot write /h/targets/a.json\n  \
             Caused by: disk on fire\n\
             hint: free some space\n"
        );
    }

    #[test]
    fn several_hints_come_last_in_the_order_they_were_attached() {
        let e = Err::<(), _>(anyhow!("port 9 is in use"))
            .hint("pick another port")
            .context("cannot start")
            .with_hint(|| "or stop its holder")
            .unwrap_err();
        assert_eq!(
            render(&e),
            "error: cannot start\n  Caused by: port 9 is in use\n\
             hint: or stop its holder\nhint: pick another port\n"
        );
    }

    #[test]
    fn messages_and_hints_are_escaped_but_keep_their_line_breaks() {
        let e = Hint::attach(anyhow!("bad /tmp/x\x1b[2J\nsecond line"), "run \x07 again");
        assert_eq!(
            render(&e),
            "error: bad /tmp/x\\e[2J\nsecond line\nhint: run \\a again\n"
        );
    }

    #[test]
    fn exit_codes_follow_the_typed_causes_under_hints_and_context() {
        let not_running = NotRunning {
            socket: "/h/run/raywatch.sock".into(),
            cause: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let e = Hint::attach(anyhow::Error::new(not_running).context("not running"), "up");
        assert_eq!(Exit::of(&e), Exit::NotRunning);
        let internal = anyhow::Error::new(Refusal::Internal("cannot save".into())).context("x");
        assert_eq!(Exit::of(&internal), Exit::Internal);
        let invalid = anyhow::Error::new(Refusal::Invalid("bad name".into()));
        assert_eq!(Exit::of(&invalid), Exit::Failure);
        let not_found = Hint::attach(Refusal::NotFound("no such".into()), "status");
        assert_eq!(Exit::of(&not_found), Exit::Failure);
        assert_eq!(Exit::of(&anyhow!("port taken")), Exit::Failure);
    }
}
