//! The one reader for files and folders other users can write (Ray's temp and session folders).
//!
//! Ray makes its temp and session folders world-writable, so anything found
//! there may have been planted: a symlink to a secret or to `/dev/zero`, a FIFO
//! that blocks a reader forever, a huge file, a folder swapped for a link. Every
//! read raywatch makes there goes through this module:
//! - no symlink is followed: folders and files are opened with `O_NOFOLLOW`,
//!   and a path below a folder is walked one component at a time with `openat`;
//! - opening never blocks (`O_NONBLOCK`), and only regular files are read;
//! - the file's owner must be trusted (and a session folder's owner, by the caller);
//! - at most `max` bytes are read, whatever the file claims.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

/// Why a file or folder was not read. Shown in `status` and the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error(
        "is a symbolic link; raywatch reads only regular files and real folders (attach the target if you trust it)"
    )]
    Symlink,
    #[error("is a directory where a regular file was expected")]
    Directory,
    #[error("is not a directory")]
    NotDirectory,
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("is {size} bytes, over the {max}-byte limit")]
    TooLarge { size: u64, max: u64 },
    #[error(
        "is owned by uid {uid} ({user}), not by this stack's user; run `raywatch up --trust-uid {uid}` to follow it"
    )]
    Untrusted { uid: u32, user: String },
    #[error("is not valid discovery JSON ({0})")]
    Parse(String),
    #[error("lists target {target:?}, which is not host:port ({why})")]
    BadTarget { target: String, why: String },
    #[error("lists {0} targets, over the limit of {max}", max = crate::discovery::MAX_TARGETS)]
    TooManyTargets(usize),
    #[error("cannot be read ({0})")]
    Io(String),
}

/// What was read from an untrusted file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub bytes: Vec<u8>,
    pub uid: u32,
    pub mtime: SystemTime,
}

/// The kind of a folder entry, from the folder listing (no `stat` needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Other,
    /// The file system did not say; [`Folder::stat`] tells.
    Unknown,
}

/// A folder opened without following a symlink, read through its descriptor so
/// that its entries cannot be swapped for links between a check and a read.
pub struct Folder {
    fd: OwnedFd,
    pub path: PathBuf,
    pub uid: u32,
}

fn rejection_for(e: Errno) -> Rejection {
    match e {
        Errno::ELOOP => Rejection::Symlink,
        Errno::ENOTDIR => Rejection::NotDirectory,
        e => Rejection::Io(e.desc().to_string()),
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC
}

fn file_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY
}

/// Opens a file with [`file_flags`], and without updating its access time
/// when the kernel allows it (the file is this user's): reading Ray's file
/// every 5 s must not cost a metadata write each time. A file of another
/// user is opened as before (`O_NOATIME` is refused for it).
fn open_file(open: impl Fn(OFlag) -> nix::Result<OwnedFd>) -> nix::Result<OwnedFd> {
    match open(file_flags() | OFlag::O_NOATIME) {
        Err(Errno::EPERM) => open(file_flags()),
        other => other,
    }
}

impl Folder {
    /// Opens `path` as a folder; a symlink at its last component is refused.
    /// `Ok(None)`: it does not exist.
    pub fn open(path: &Path) -> Result<Option<Folder>, Rejection> {
        match nix::fcntl::open(path, dir_flags(), Mode::empty()) {
            Ok(fd) => Folder::from_fd(fd, path.to_path_buf()).map(Some),
            Err(Errno::ENOENT) => Ok(None),
            // With O_DIRECTORY, a link may be reported as "not a directory".
            Err(Errno::ENOTDIR)
                if fs_err::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                Err(Rejection::Symlink)
            }
            Err(e) => Err(rejection_for(e)),
        }
    }

    fn from_fd(fd: OwnedFd, path: PathBuf) -> Result<Folder, Rejection> {
        let st = nix::sys::stat::fstat(&fd).map_err(|e| Rejection::Io(e.desc().into()))?;
        Ok(Folder {
            fd,
            path,
            uid: st.st_uid,
        })
    }

    /// Opens the folder `name` (one component) inside this one, never through a link.
    pub fn child(&self, name: &OsStr) -> Result<Option<Folder>, Rejection> {
        match nix::fcntl::openat(&self.fd, name, dir_flags(), Mode::empty()) {
            Ok(fd) => Folder::from_fd(fd, self.path.join(name)).map(Some),
            Err(Errno::ENOENT) => Ok(None),
            // With O_DIRECTORY, a link may be reported as "not a directory".
            Err(Errno::ENOTDIR)
                if self.stat(name).is_some_and(|st| {
                    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFLNK
                }) =>
            {
                Err(Rejection::Symlink)
            }
            Err(e) => Err(rejection_for(e)),
        }
    }

    /// Opens a folder below this one, one component at a time, never through a link.
    pub fn descend(&self, relative: &Path) -> Result<Option<Folder>, Rejection> {
        let mut parts = relative.iter();
        let Some(first) = parts.next() else {
            return Err(Rejection::Io("empty path".into()));
        };
        let Some(mut folder) = self.child(first)? else {
            return Ok(None);
        };
        for part in parts {
            match folder.child(part)? {
                Some(f) => folder = f,
                None => return Ok(None),
            }
        }
        Ok(Some(folder))
    }

    /// The entry's metadata, without following a link.
    pub fn stat(&self, name: &OsStr) -> Option<FileStat> {
        nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()
    }

    /// The folder's entries (`.` and `..` left out), with their kinds as listed.
    pub fn entries(&self) -> Vec<(OsString, Kind)> {
        let Ok(fd) = self.fd.try_clone() else {
            return Vec::new();
        };
        let Ok(mut dir) = nix::dir::Dir::from_fd(fd) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in dir.iter().flatten() {
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let kind = match entry.file_type() {
                Some(nix::dir::Type::Directory) => Kind::Dir,
                Some(nix::dir::Type::File) => Kind::File,
                Some(nix::dir::Type::Symlink) => Kind::Symlink,
                Some(_) => Kind::Other,
                None => Kind::Unknown,
            };
            out.push((OsStr::from_bytes(name).to_os_string(), kind));
        }
        out
    }

    /// Reads the regular file `name` of this folder with every check of this module.
    /// `Ok(None)`: it does not exist.
    pub fn read(
        &self,
        name: &OsStr,
        max: u64,
        trusted: &dyn Fn(u32) -> bool,
    ) -> Result<Option<Contents>, Rejection> {
        match open_file(|flags| nix::fcntl::openat(&self.fd, name, flags, Mode::empty())) {
            Ok(fd) => read_open(fd, max, trusted).map(Some),
            Err(Errno::ENOENT) => Ok(None),
            Err(Errno::EISDIR) => Err(Rejection::Directory),
            Err(e) => Err(rejection_for(e)),
        }
    }
}

/// Reads a file at `path` with every check of this module (a link at its last
/// component is refused; the folders above it are the caller's to trust).
/// `Ok(None)`: it does not exist.
pub fn read_file(
    path: &Path,
    max: u64,
    trusted: &dyn Fn(u32) -> bool,
) -> Result<Option<Contents>, Rejection> {
    match open_file(|flags| nix::fcntl::open(path, flags, Mode::empty())) {
        Ok(fd) => read_open(fd, max, trusted).map(Some),
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Ok(None),
        Err(Errno::EISDIR) => Err(Rejection::Directory),
        Err(e) => Err(rejection_for(e)),
    }
}

/// The kind of a file that is not regular, for messages.
fn special_kind(st: &FileStat) -> Option<&'static str> {
    let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    match fmt {
        SFlag::S_IFREG => None,
        SFlag::S_IFIFO => Some("a FIFO"),
        SFlag::S_IFSOCK => Some("a socket"),
        SFlag::S_IFCHR | SFlag::S_IFBLK => Some("a device"),
        SFlag::S_IFLNK => Some("a symbolic link"),
        _ => Some("a special file"),
    }
}

fn read_open(fd: OwnedFd, max: u64, trusted: &dyn Fn(u32) -> bool) -> Result<Contents, Rejection> {
    let st = nix::sys::stat::fstat(&fd).map_err(|e| Rejection::Io(e.desc().into()))?;
    let fmt = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if fmt == SFlag::S_IFDIR {
        return Err(Rejection::Directory);
    }
    if let Some(kind) = special_kind(&st) {
        return Err(Rejection::NotRegular(kind));
    }
    if !trusted(st.st_uid) {
        return Err(Rejection::Untrusted {
            uid: st.st_uid,
            user: crate::process::user_name(st.st_uid),
        });
    }
    let size = st.st_size.max(0) as u64;
    if size > max {
        return Err(Rejection::TooLarge { size, max });
    }
    // At most the size the file had when it was checked (not over `max`),
    // read in one go: no second read to find the end of a regular file.
    let mut bytes = Vec::with_capacity(size as usize);
    std::fs::File::from(fd)
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(|e| Rejection::Io(e.to_string()))?;
    let mtime = SystemTime::UNIX_EPOCH
        + Duration::new(
            st.st_mtime.max(0) as u64,
            st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
        );
    Ok(Contents {
        bytes,
        uid: st.st_uid,
        mtime,
    })
}

/// Whether metadata describes a real folder (not a link).
pub fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn me(uid: u32) -> bool {
        uid == nix::unistd::geteuid().as_raw()
    }

    #[test]
    fn refuses_links_fifos_devices_and_large_files_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let dir = Folder::open(d.path()).unwrap().unwrap();
        fs_err::write(d.path().join("ok"), b"42\n").unwrap();
        let got = dir.read(OsStr::new("ok"), 16, &me).unwrap().unwrap();
        assert_eq!(got.bytes, b"42\n");
        assert_eq!(dir.read(OsStr::new("missing"), 16, &me), Ok(None));

        symlink("/dev/zero", d.path().join("zero")).unwrap();
        assert_eq!(
            dir.read(OsStr::new("zero"), 16, &me),
            Err(Rejection::Symlink)
        );
        assert_eq!(
            read_file(&d.path().join("zero"), 16, &me),
            Err(Rejection::Symlink)
        );

        nix::unistd::mkfifo(&d.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        assert_eq!(
            dir.read(OsStr::new("fifo"), 16, &me),
            Err(Rejection::NotRegular("a FIFO"))
        );

        fs_err::write(d.path().join("big"), vec![b'1'; 100]).unwrap();
        assert!(matches!(
            dir.read(OsStr::new("big"), 16, &me),
            Err(Rejection::TooLarge { size: 100, max: 16 })
        ));
        assert!(matches!(
            dir.read(OsStr::new("ok"), 16, &|_| false),
            Err(Rejection::Untrusted { .. })
        ));
        fs_err::create_dir(d.path().join("sub")).unwrap();
        assert_eq!(
            dir.read(OsStr::new("sub"), 16, &me),
            Err(Rejection::Directory)
        );
    }

    #[test]
    fn folders_are_never_entered_through_links() {
        let d = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(d.path().join("a/b")).unwrap();
        symlink(d.path().join("a"), d.path().join("link")).unwrap();
        let top = Folder::open(d.path()).unwrap().unwrap();
        assert!(top.descend(Path::new("a/b")).unwrap().is_some());
        assert_eq!(
            top.descend(Path::new("link/b")).err(),
            Some(Rejection::Symlink)
        );
        assert_eq!(
            Folder::open(&d.path().join("link")).err(),
            Some(Rejection::Symlink)
        );
        assert!(Folder::open(&d.path().join("none")).unwrap().is_none());
        let kinds: std::collections::BTreeMap<_, _> = top.entries().into_iter().collect();
        assert_eq!(kinds[OsStr::new("a")], Kind::Dir);
        assert_eq!(kinds[OsStr::new("link")], Kind::Symlink);
        assert!(is_dir(&top.stat(OsStr::new("a")).unwrap()));
        assert!(!is_dir(&top.stat(OsStr::new("link")).unwrap()));
    }
}
