//! How a command ends: its exit code ([`Exit`]), hints attached to errors ([`Hint`]),
//! and the printer that shows an error as `error:`, `Caused by:` lines, then `hint:` lines.

use std::fmt;
use std::process::ExitCode;

use crate::api::{NotRunning, Refusal, Unreadable};
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

/// Advice attached to an error: what to do about it. It is no part of the
/// message: the printer shows it last, as `hint: ...`, after every cause.
///
/// It sits in the error's chain as a layer of its own (its source is the error
/// it advises on), so the typed causes below it stay visible to [`Exit::of`].
#[derive(Debug)]
pub struct Hint {
    text: String,
    error: anyhow::Error,
}

impl Hint {
    /// `error`, with `hint` to be shown after it.
    pub fn attach(error: impl Into<anyhow::Error>, hint: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Hint {
            text: hint.into(),
            error: error.into(),
        })
    }
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hint: {}", self.text)
    }
}

impl std::error::Error for Hint {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.error.as_ref())
    }
}

/// Attaching a [`Hint`] to the error of a `Result`.
pub trait HintExt<T> {
    /// Attaches `hint` to the error, if there is one.
    fn hint(self, hint: impl Into<String>) -> anyhow::Result<T>;
    /// Attaches the hint `f` makes to the error, if there is one.
    fn with_hint<S: Into<String>>(self, f: impl FnOnce() -> S) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> HintExt<T> for Result<T, E> {
    fn hint(self, hint: impl Into<String>) -> anyhow::Result<T> {
        self.map_err(|e| Hint::attach(e, hint))
    }

    fn with_hint<S: Into<String>>(self, f: impl FnOnce() -> S) -> anyhow::Result<T> {
        self.map_err(|e| Hint::attach(e, f()))
    }
}

/// An error as the user reads it: `error: <message>`, then `  Caused by: <cause>`
/// for each cause, then every hint as `hint: ...`, last. Messages carry paths
/// and names from outside raywatch: their control characters are shown
/// escaped; the line breaks raywatch wrote are kept.
///
/// Modules that still write their hint into the message (`...\nhint: ...`) get
/// it moved to the end too, so the order holds whichever way a hint came.
pub fn render(error: &anyhow::Error) -> String {
    let mut messages: Vec<String> = Vec::new();
    let mut hints: Vec<String> = Vec::new();
    for cause in error.chain() {
        if let Some(h) = cause.downcast_ref::<Hint>() {
            hints.push(h.text.clone());
            continue;
        }
        let text = cause.to_string();
        let (message, hint) = match text.find("\nhint: ") {
            Some(i) => (&text[..i], Some(&text[i + "\nhint: ".len()..])),
            None => match text.strip_prefix("hint: ") {
                Some(h) => ("", Some(h)),
                None => (text.as_str(), None),
            },
        };
        if !message.is_empty() {
            messages.push(message.to_string());
        }
        hints.extend(hint.map(str::to_string));
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
    fn a_hint_written_into_a_message_is_moved_to_the_end() {
        let e = Err::<(), _>(anyhow!("port 9 is in use\nhint: pick another port"))
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
