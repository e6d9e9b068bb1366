//! Build script: records the commit raywatch is built from, for `raywatch --version`.
//!
//! Sets `RAYWATCH_BUILD` for the compiler: the commit's first 9 hex digits and its
//! date (`51cf8ea12 2026-12-07`), the commit alone when its date is unknown, or
//! `unknown`. Asked in order: the environment
//! (`RAYWATCH_BUILD_COMMIT`, `RAYWATCH_BUILD_DATE`, for builds from a tarball or an
//! sdist), git (only when this crate's folder is the top of the work tree, so a
//! registry copy inside someone's git-managed home does not take their commit),
//! then `.cargo_vcs_info.json`, which `cargo package` writes into crates.io
//! packages (it holds the commit, not its date).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=RAYWATCH_BUILD_COMMIT");
    println!("cargo::rerun-if-env-changed=RAYWATCH_BUILD_DATE");
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let (commit, date) = from_env()
        .or_else(|| from_git(&dir))
        .or_else(|| from_vcs_info(&dir))
        .unwrap_or_else(|| ("unknown".to_string(), String::new()));
    let build = format!("{commit} {date}");
    println!("cargo::rustc-env=RAYWATCH_BUILD={}", build.trim());
}

fn from_env() -> Option<(String, String)> {
    let commit = std::env::var("RAYWATCH_BUILD_COMMIT").ok()?;
    let commit = commit.trim();
    if commit.is_empty() {
        return None;
    }
    let date = std::env::var("RAYWATCH_BUILD_DATE").unwrap_or_default();
    Some((short(commit), date.trim().to_string()))
}

/// The commit and its date from git; also tells cargo to run this script again
/// when HEAD moves (HEAD itself, the branch it names, and packed-refs; in a
/// worktree, where `.git` is a file, HEAD lives in the worktree's own git dir and
/// the refs in the common one).
fn from_git(dir: &Path) -> Option<(String, String)> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let same = |a: &Path, b: &Path| a.canonicalize().ok() == b.canonicalize().ok();
    if !same(Path::new(&top), dir) {
        return None;
    }
    let abs = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { dir.join(p) }
    };
    let git_dir = abs(git(dir, &["rev-parse", "--git-dir"])?);
    let common = git(dir, &["rev-parse", "--git-common-dir"]).map_or(git_dir.clone(), abs);
    rerun_if_changed(&git_dir.join("HEAD"));
    rerun_if_changed(&common.join("packed-refs"));
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        // A branch only in packed-refs gets its own file at its next commit.
        let file = common.join(branch);
        match file.parent().filter(|_| !file.exists()) {
            Some(folder) => rerun_if_changed(folder),
            None => rerun_if_changed(&file),
        }
    }
    let line = git(dir, &["log", "-1", "--format=%H %cs"])?;
    let (commit, date) = line.split_once(' ')?;
    Some((short(commit), date.to_string()))
}

fn from_vcs_info(dir: &Path) -> Option<(String, String)> {
    let file = dir.join(".cargo_vcs_info.json");
    rerun_if_changed(&file);
    // A build script has no fs-err (clippy.toml would have it): std::fs here.
    #[allow(clippy::disallowed_methods)]
    let text = std::fs::read_to_string(file).ok()?;
    // `{"git": {"sha1": "<40 hex>", ...}, ...}`, as cargo writes it.
    let rest = &text[text.find("\"sha1\"")? + "\"sha1\"".len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let sha = rest.strip_prefix('"')?.split('"').next()?;
    (!sha.is_empty() && sha.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (short(sha), String::new()))
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

/// Only for paths that exist: cargo runs the script at every build for a missing one.
fn rerun_if_changed(path: &Path) {
    if !path.exists() {
        return;
    }
    println!("cargo::rerun-if-changed={}", path.display());
}

/// The first 9 characters of a commit id (what `git rev-parse --short=9` shows).
fn short(commit: &str) -> String {
    commit.chars().take(9).collect()
}
