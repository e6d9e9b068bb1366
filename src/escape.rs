//! Strings from outside raywatch (paths, names, scraped labels) made safe to print on a terminal.
//!
//! Folder names, session names, rejection reasons and label values come from the
//! filesystem or from scraped data, so another local user chooses them. Printed raw,
//! an ESC or OSC sequence could move the cursor, clear the screen or set the window
//! title, and a newline could forge a line of `raywatch status`. Human output runs
//! such strings through [`text`] (or [`path`]); every control character then shows
//! as a visible escape:
//!
//! | character | shown as |
//! | --- | --- |
//! | ESC | `\e` |
//! | newline, CR, tab, NUL, BEL | `\n`, `\r`, `\t`, `\0`, `\a` |
//! | other C0 controls, DEL | `\xNN` (`\x7f`) |
//! | C1 controls (U+0080–U+009F) | `\u{9b}` |
//! | bidi overrides and isolates (U+202A–U+202E, U+2066–U+2069) | `\u{202e}` |
//!
//! A backslash is left as it is. Plain text comes back borrowed, without a copy.
//! JSON output needs none of this: serde escapes what it writes.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

/// `s` with every control character shown visibly; borrowed when there is none.
pub fn text(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// Like [`text`] but keeps the line breaks: for messages raywatch itself writes
/// over several lines (errors and their hints), with untrusted parts inside.
pub fn lines(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

/// A path as [`text`] shows it: its lossy UTF-8 form, control characters escaped.
pub fn path(p: &Path) -> Cow<'_, str> {
    match p.to_string_lossy() {
        Cow::Borrowed(s) => text(s),
        Cow::Owned(s) if s.chars().any(is_control) => Cow::Owned(escaped(&s, false)),
        Cow::Owned(s) => Cow::Owned(s),
    }
}

/// Whether `c` must not reach a terminal as it is.
pub fn is_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    if s.chars()
        .any(|c| is_control(c) && !(keep_newlines && c == '\n'))
    {
        Cow::Owned(escaped(s, keep_newlines))
    } else {
        Cow::Borrowed(s)
    }
}

fn escaped(s: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    let _ = write_escaped(&mut out, s, keep_newlines);
    out
}

fn write_escaped(out: &mut impl fmt::Write, s: &str, keep_newlines: bool) -> fmt::Result {
    let mut rest = s;
    while let Some((i, c)) = rest
        .char_indices()
        .find(|&(_, c)| is_control(c) && !(keep_newlines && c == '\n'))
    {
        out.write_str(&rest[..i])?;
        match c {
            '\x1b' => out.write_str("\\e")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            '\0' => out.write_str("\\0")?,
            '\x07' => out.write_str("\\a")?,
            '\0'..='\x7f' => write!(out, "\\x{:02x}", c as u32)?,
            _ => write!(out, "\\u{{{:x}}}", c as u32)?,
        }
        rest = &rest[i + c.len_utf8()..];
    }
    out.write_str(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        for s in [
            "",
            "/tmp/ray_alice/session_2026-01-01_00-00-00_000001_7",
            "café ☃ 日本語 back\\slash \"quoted\" {braces}",
        ] {
            assert!(matches!(text(s), Cow::Borrowed(b) if b == s), "{s:?}");
            assert!(matches!(lines(s), Cow::Borrowed(b) if b == s), "{s:?}");
            assert!(
                matches!(path(Path::new(s)), Cow::Borrowed(b) if b == s),
                "{s:?}"
            );
        }
        assert!(matches!(lines("one\ntwo"), Cow::Borrowed("one\ntwo")));
    }

    #[test]
    fn escape_and_common_controls_have_short_names() {
        assert_eq!(text("a\x1b]0;pwned\x07b"), "a\\e]0;pwned\\ab");
        assert_eq!(text("\x1b[2J"), "\\e[2J");
        assert_eq!(
            text("x\ncluster forged live\r\t\0"),
            "x\\ncluster forged live\\r\\t\\0"
        );
    }

    #[test]
    fn other_c0_controls_and_del_are_hex() {
        assert_eq!(
            text("\x01\x08\x0b\x0c\x1f\x7f"),
            "\\x01\\x08\\x0b\\x0c\\x1f\\x7f"
        );
        for b in (0u8..0x20).chain([0x7f]) {
            let s = (b as char).to_string();
            let e = text(&s);
            assert!(
                e.starts_with('\\') && !e.chars().any(is_control),
                "{b:#x}: {e}"
            );
        }
    }

    #[test]
    fn c1_controls_are_unicode_escapes() {
        assert_eq!(
            text("\u{80}\u{9b}2J\u{9d}0;t\u{9c}"),
            "\\u{80}\\u{9b}2J\\u{9d}0;t\\u{9c}"
        );
        assert_eq!(text("\u{9f}"), "\\u{9f}");
        // Printable Latin-1 right after the C1 block stays.
        assert_eq!(text("\u{a0}é"), "\u{a0}é");
    }

    #[test]
    fn bidi_overrides_and_isolates_are_unicode_escapes() {
        assert_eq!(
            text("a\u{202a}\u{202b}\u{202c}\u{202d}\u{202e}b"),
            "a\\u{202a}\\u{202b}\\u{202c}\\u{202d}\\u{202e}b"
        );
        assert_eq!(
            text("\u{2066}\u{2067}\u{2068}\u{2069}"),
            "\\u{2066}\\u{2067}\\u{2068}\\u{2069}"
        );
        assert!(matches!(text("\u{2029}\u{2070}"), Cow::Borrowed(_)));
    }

    #[test]
    fn backslashes_stay_as_they_are() {
        assert_eq!(text("a\\e\x1b"), "a\\e\\e");
    }

    #[test]
    fn lines_keeps_line_breaks_and_escapes_the_rest() {
        assert_eq!(
            lines("cannot read /tmp/x\x1b[2J\nhint: \x07again\r\n"),
            "cannot read /tmp/x\\e[2J\nhint: \\aagain\\r\n"
        );
    }

    #[test]
    fn paths_are_shown_lossily_then_escaped() {
        assert_eq!(
            path(Path::new("/tmp/ray\x1b]0;t\x07\nx")),
            "/tmp/ray\\e]0;t\\a\\nx"
        );
        let bad = Path::new(OsStr::from_bytes(b"/tmp/caf\xe9"));
        assert_eq!(path(bad), "/tmp/caf\u{fffd}");
        let bad_and_ctl = Path::new(OsStr::from_bytes(b"/tmp/\xe9\x1b[2J"));
        assert_eq!(path(bad_and_ctl), "/tmp/\u{fffd}\\e[2J");
    }
}
