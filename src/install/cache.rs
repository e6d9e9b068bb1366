//! The download cache, `$XDG_CACHE_HOME/raywatch` (else `~/.cache/raywatch`): private
//! to its user, and a cached program is run only while nobody else could have changed it.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::release::Release;

/// What to do about a cache raywatch refuses.
const FIX: &str = "set XDG_CACHE_HOME to a folder only you and root control, or remove the cache";

/// `$XDG_CACHE_HOME/raywatch` or `~/.cache/raywatch`.
pub fn dir() -> Option<PathBuf> {
    if let Some(x) = crate::env::xdg_cache_home() {
        return Some(x.join("raywatch"));
    }
    crate::env::home_dir().map(|h| h.join(".cache/raywatch"))
}

/// The cache folder, created 0700 when missing, refused when another user could change it.
pub fn ensure() -> Result<PathBuf> {
    let dir = dir().context(
        "cannot place a download cache: neither $XDG_CACHE_HOME nor $HOME is set\n\
         hint: set XDG_CACHE_HOME to a folder of yours",
    )?;
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
    check_ours(&dir, true)?;
    Ok(dir)
}

/// Where a release unpacks to (whether or not it is there).
pub fn release_dir(release: &Release) -> Option<PathBuf> {
    Some(dir()?.join(&release.dir_name))
}

/// The binary of a cached release: None when it was never downloaded, an error when it
/// is there but another user could have changed it (then it is not run).
pub fn binary(release: &Release) -> Result<Option<PathBuf>> {
    let Some(root) = release_dir(release) else {
        return Ok(None);
    };
    if std::fs::symlink_metadata(&root).is_err() {
        return Ok(None);
    }
    let cache = root.parent().expect("a release folder is in the cache");
    crate::home::check_ancestors_of(cache, "the download cache", FIX)?;
    check_ours(cache, true)?;
    let bin = root.join(release.program.binary());
    let mut path = cache.to_path_buf();
    for comp in Path::new(&release.dir_name)
        .join(release.program.binary())
        .components()
    {
        path.push(comp);
        check_ours(&path, path != bin)?;
    }
    let mode = std::fs::metadata(&bin)?.mode();
    if mode & 0o100 == 0 {
        bail!(
            "the cached {} {} is not executable\nhint: remove {} and raywatch downloads it again",
            release.program.title(),
            bin.display(),
            root.display()
        );
    }
    Ok(Some(bin))
}

/// A cache entry raywatch may trust: a real folder (or file), ours, writable by nobody else.
fn check_ours(path: &Path, folder: bool) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).with_context(|| {
        format!(
            "cannot inspect {}\nhint: remove the cache entry and raywatch downloads it again",
            path.display()
        )
    })?;
    let me = nix::unistd::geteuid().as_raw();
    let problem = if meta.file_type().is_symlink() {
        Some("is a symbolic link".to_string())
    } else if folder != meta.is_dir() || (!folder && !meta.is_file()) {
        Some(format!(
            "is not a {}",
            if folder { "folder" } else { "file" }
        ))
    } else if meta.uid() != me {
        Some(format!(
            "is owned by uid {} ({}), not by you",
            meta.uid(),
            crate::process::user_name(meta.uid())
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "is writable by other users (mode {:o})",
            meta.mode() & 0o7777
        ))
    } else {
        None
    };
    match problem {
        Some(p) => bail!(
            "{} in raywatch's download cache {p}; refusing to use it\nhint: {FIX}",
            path.display()
        ),
        None => Ok(()),
    }
}
