//! Crash-safe file writes: temp file on the same file system, fsync, rename, fsync of the folder;
//! and, for files recomputed at every start, the same replace without the fsyncs.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// New content for a file, written and flushed to disk in a temp file on the
/// same file system, not yet in place: check it (e.g. with promtool), then
/// [`Staged::commit`] it.
pub struct Staged {
    file: tempfile::NamedTempFile,
}

/// Writes `bytes` to a temp file in `tmp_dir` (same file system as the
/// destination), with `mode`, fsync'd. Its name starts with `.` and ends with
/// `.tmp`, so a writer killed before the commit leaves a file the daemon sweeps.
pub fn stage(tmp_dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<Staged> {
    use std::os::unix::fs::PermissionsExt;
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(tmp_dir)
        .with_context(|| format!("cannot create a temp file in {}", tmp_dir.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.as_file().sync_all())
        .with_context(|| format!("cannot write {}", file.path().display()))?;
    Ok(Staged { file })
}

/// An empty temp file beside `dest`, for content written in pieces (a
/// stream): write through [`Staged::file`], then [`Staged::commit`] it, which
/// syncs it first. Until then `dest` is untouched.
pub fn stage_stream(dest: &Path, mode: u32) -> Result<Staged> {
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .with_context(|| format!("{} has no file name", dest.display()))?;
    stage(dir, &name.to_string_lossy(), b"", mode)
}

impl Staged {
    /// The temp file, to write the content to.
    pub fn file(&mut self) -> &mut File {
        self.file.as_file_mut()
    }

    /// Where the staged content is, for checking it.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Renames it over `dest` and makes the rename durable (fsync of the folder).
    /// Readers see the old content or the new one, never a partial file.
    pub fn commit(self, dest: &Path) -> Result<()> {
        let tmp = self.file.path().to_path_buf();
        self.file
            .as_file()
            .sync_all()
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        self.file
            .persist(dest)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))?;
        if let Some(dir) = dest.parent() {
            fsync_dir(dir)?;
        }
        Ok(())
    }
}

/// Writes `bytes` to `dest` atomically. The temp file is created in `tmp_dir`,
/// which must be on the same file system as `dest` (usually its own folder).
pub fn write_via(tmp_dir: &Path, dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let name = dest
        .file_name()
        .with_context(|| format!("{} has no file name", dest.display()))?;
    stage(tmp_dir, &name.to_string_lossy(), bytes, mode)?.commit(dest)
}

/// Replaces `dest` with `bytes` the way [`write_via`] does (readers see the
/// old content or the new, never a partial file), without making it durable:
/// for files the daemon recomputes at every start (Prometheus' targets), where
/// two fsyncs per write would only add milliseconds to every cluster's
/// registration.
pub fn replace_via(tmp_dir: &Path, dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let name = dest
        .file_name()
        .with_context(|| format!("{} has no file name", dest.display()))?;
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(tmp_dir)
        .with_context(|| format!("cannot create a temp file in {}", tmp_dir.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", file.path().display()))?;
    let tmp = file.path().to_path_buf();
    file.persist(dest)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))?;
    Ok(())
}

/// Writes `bytes` to `dest` atomically, with the temp file beside it.
pub fn write(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = dest
        .parent()
        .with_context(|| format!("{} has no parent folder", dest.display()))?;
    write_via(dir, dest, bytes, mode)
}

/// Makes a rename or unlink in `dir` durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    fs_err::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync folder {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_without_fsync_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("shard.json");
        replace_via(dir.path(), &dest, b"old", 0o644).unwrap();
        replace_via(dir.path(), &dest, b"new", 0o644).unwrap();
        assert_eq!(fs_err::read(&dest).unwrap(), b"new");
        assert_eq!(fs_err::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.json");
        write(&dest, b"old", 0o600).unwrap();
        write(&dest, b"new", 0o600).unwrap();
        assert_eq!(fs_err::read(&dest).unwrap(), b"new");
        let names: Vec<_> = fs_err::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temp files left behind: {names:?}");
    }
}
