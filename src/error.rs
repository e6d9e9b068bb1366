//! Errors as raywatch reports them: an error carries its causes (anyhow's chain) and
//! may carry advice, a [`Hint`] saying what to do, which the command line prints last.
//!
//! Library modules attach hints here, never by writing `hint:` into a message.

use std::fmt;

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
    /// The advice.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The first hint attached to `error`, if any.
    pub fn of(error: &anyhow::Error) -> Option<&str> {
        error
            .chain()
            .find_map(|c| c.downcast_ref::<Hint>())
            .map(Hint::text)
    }

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

#[cfg(test)]
mod tests {
    /// Hints travel as [`super::Hint`], never inside a message: a `hint:` written
    /// into a string would be printed in the middle of the error.
    #[test]
    fn no_source_file_writes_a_hint_into_a_message() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            for entry in fs_err::read_dir(&dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                // The two that print hints.
                if path.ends_with("src/error.rs") || path.ends_with("cli/error.rs") {
                    continue;
                }
                let text = fs_err::read_to_string(&path).unwrap_or_default();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for (i, line) in code.lines().enumerate() {
                    let l = line.trim_start();
                    if l.starts_with("//") {
                        continue;
                    }
                    if l.contains("\\nhint: ") || l.starts_with("hint: ") || l.contains("\"hint: ")
                    {
                        found.push(format!("{}:{}", path.display(), i + 1));
                    }
                }
            }
        }
        assert!(found.is_empty(), "hints written into messages: {found:?}");
    }
}
