//! The download cache, `$XDG_CACHE_HOME/raywatch` (else `~/.cache/raywatch`): private
//! to its user, and a cached program is run only while nobody else could have changed it.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::HintExt;
use anyhow::{Context, Result};

use super::release::{Checksum, Release};

/// What to do about a cache folder raywatch refuses.
const FIX: &str = "set XDG_CACHE_HOME to a folder only you and root control, or remove the cache";

/// The file in a release folder that records the SHA-256 it was verified against.
pub const VERIFIED: &str = ".raywatch-sha256";

/// `$XDG_CACHE_HOME/raywatch` or `~/.cache/raywatch`.
pub fn dir() -> Option<PathBuf> {
    if let Some(x) = crate::env::xdg_cache_home() {
        return Some(x.join("raywatch"));
    }
    crate::env::home_dir().map(|h| h.join(".cache/raywatch"))
}

/// The cache folder, created 0700 when missing, refused when another user could
/// change it; returned as its real path (no links on the way), which is what
/// raywatch writes into its config and later runs.
pub fn ensure() -> Result<PathBuf> {
    let dir = dir()
        .context("cannot place a download cache: neither $XDG_CACHE_HOME nor $HOME is set")
        .hint("set XDG_CACHE_HOME to a folder of yours")?;
    crate::home::check_ancestors_of(&dir, "the download cache", FIX)?;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let real = fs_err::canonicalize(&dir)?;
    check_ours(&real, Kind::Folder, FIX)?;
    Ok(real)
}

/// Where a release unpacks to (whether or not it is there).
pub fn release_dir(release: &Release) -> Option<PathBuf> {
    Some(dir()?.join(&release.dir_name))
}

/// The binary of a cached release, by its real path: None when it was never
/// downloaded, an error when it is there but another user could have changed it
/// (then it is not run), or when it was verified against another hash than the one
/// now required.
pub fn binary(release: &Release) -> Result<Option<PathBuf>> {
    let Some(root) = release_dir(release) else {
        return Ok(None);
    };
    if fs_err::symlink_metadata(&root).is_err() {
        return Ok(None);
    }
    let cache = ensure()?;
    let root = cache.join(&release.dir_name);
    let remove = format!("remove {} and raywatch downloads it again", root.display());
    let binary = Path::new(release.program.binary());
    let mut path = cache.clone();
    let steps = std::iter::once(Path::new(&release.dir_name).as_os_str())
        .chain(binary.iter())
        .collect::<Vec<_>>();
    for (i, step) in steps.iter().enumerate() {
        path.push(step);
        let kind = if i + 1 == steps.len() {
            Kind::Executable
        } else {
            Kind::Folder
        };
        check_ours(&path, kind, &remove)?;
    }
    if let Checksum::Given(wanted) = &release.checksum {
        let recorded = fs_err::read_to_string(root.join(VERIFIED)).unwrap_or_default();
        if recorded.trim() != wanted {
            return Err(anyhow::anyhow!(
                "the cached {} in {} was verified against another SHA-256 than ${} gives",
                release.program.title(),
                root.display(),
                release.program.sha256_var()
            ))
            .hint(&remove);
        }
    }
    Ok(Some(path))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Folder,
    Executable,
}

/// A cache entry raywatch may trust: a real folder (or executable file), ours,
/// writable by nobody else; `fix` is the hint when it is not.
fn check_ours(path: &Path, kind: Kind, fix: &str) -> Result<()> {
    let meta = fs_err::symlink_metadata(path).hint(fix)?;
    let me = nix::unistd::geteuid().as_raw();
    let problem = if meta.file_type().is_symlink() {
        "is a symbolic link".to_string()
    } else if kind == Kind::Folder && !meta.is_dir() {
        "is not a folder".to_string()
    } else if kind == Kind::Executable && !meta.is_file() {
        "is not a regular file".to_string()
    } else if meta.uid() != me {
        format!(
            "is owned by uid {} ({}), not by you",
            meta.uid(),
            crate::process::user_name(meta.uid())
        )
    } else if meta.mode() & 0o022 != 0 {
        format!(
            "is writable by other users (mode {:o})",
            meta.mode() & 0o7777
        )
    } else if kind == Kind::Executable && meta.mode() & 0o100 == 0 {
        "is not executable".to_string()
    } else {
        return Ok(());
    };
    Err(anyhow::anyhow!(
        "{} in raywatch's download cache {problem}; refusing to use it",
        crate::escape::path(path)
    ))
    .hint(fix)
}
