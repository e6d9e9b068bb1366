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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};

/// Why a file or folder was not read. Generic: what the refusal means for the
/// caller (a discovery file, a credential file) and what to do about it is the
/// caller's to add (see `discovery::Rejection`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("is a symbolic link; raywatch reads only regular files and real folders")]
    Symlink,
    #[error("is a directory where a regular file was expected")]
    Directory,
    #[error("is not a directory")]
    NotDirectory,
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("is {size} bytes, over the {max}-byte limit")]
    TooLarge { size: u64, max: u64 },
    #[error("is owned by uid {uid} ({user}), not by this stack's user")]
    Untrusted { uid: u32, user: String },
    #[error("cannot be read ({0})")]
    Io(String),
    /// The daemon is out of descriptors or memory: says nothing about the
    /// file, so its cluster is kept as it was (never declared gone or dead
    /// for it) and the file is read again.
    #[error(
        "cannot be read for now ({0}): raywatch is short of file descriptors or memory; the cluster is kept as it was, not declared dead, and read again"
    )]
    Exhausted(String),
}

impl Rejection {
    /// Whether the refusal is about raywatch's own resources, not the file.
    pub fn is_transient(&self) -> bool {
        matches!(self, Rejection::Exhausted(_))
    }
}

/// How many times an open or read failed for want of descriptors or memory
/// (`EMFILE`, `ENFILE`, `ENOMEM`, `ENOBUFS`), in this process.
static EXHAUSTED: AtomicU64 = AtomicU64::new(0);

/// The count of failures for want of descriptors or memory so far: a scan
/// during which it moved may have missed folders that are there.
pub fn exhaustion_count() -> u64 {
    EXHAUSTED.load(Ordering::Relaxed)
}

/// Whether `e` is a failure for want of descriptors or memory (then counted).
fn exhausted(e: Errno) -> bool {
    let out = matches!(
        e,
        Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM | Errno::ENOBUFS
    );
    if out {
        EXHAUSTED.fetch_add(1, Ordering::Relaxed);
    }
    out
}

/// [`exhausted`] for a `std::io::Error`.
fn io_exhausted(e: &std::io::Error) -> bool {
    e.raw_os_error()
        .is_some_and(|n| exhausted(Errno::from_raw(n)))
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
        e if exhausted(e) => Rejection::Exhausted(e.desc().to_string()),
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
        let st = nix::sys::stat::fstat(&fd).map_err(rejection_for)?;
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
    /// A listing cut short for want of descriptors or memory is counted (see
    /// [`exhaustion_count`]).
    pub fn entries(&self) -> Vec<(OsString, Kind)> {
        let fd = match self.fd.try_clone() {
            Ok(fd) => fd,
            Err(e) => {
                io_exhausted(&e);
                return Vec::new();
            }
        };
        let mut dir = match nix::dir::Dir::from_fd(fd) {
            Ok(d) => d,
            Err(e) => {
                exhausted(e);
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    exhausted(e);
                    continue;
                }
            };
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
    let st = nix::sys::stat::fstat(&fd).map_err(rejection_for)?;
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
        .map_err(|e| {
            if io_exhausted(&e) {
                Rejection::Exhausted(e.to_string())
            } else {
                Rejection::Io(e.to_string())
            }
        })?;
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

    /// Runs the named test of this binary again in a child process with
    /// `marker` set, so that what it does to the process (its limits) touches
    /// no other test; true in that child.
    fn in_a_child_process(name: &str, marker: &str) -> bool {
        if std::env::var_os(marker).is_some() {
            return true;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--nocapture", "--test-threads=1"])
            .env(marker, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        false
    }

    #[test]
    fn out_of_descriptors_is_neither_a_missing_file_nor_an_empty_folder() {
        const NAME: &str =
            "untrusted::tests::out_of_descriptors_is_neither_a_missing_file_nor_an_empty_folder";
        if !in_a_child_process(NAME, "RAYWATCH_TEST_EMFILE_CHILD") {
            return;
        }
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let d = tempfile::tempdir().unwrap();
        let session = d.path().join("session_2026-01-01_00-00-00_000001_1");
        fs_err::create_dir(&session).unwrap();
        let file = session.join(crate::discovery::DISCOVERY_FILE);
        fs_err::write(&file, br#"[{"targets": ["127.0.0.1:1"]}]"#).unwrap();
        let me = |uid: u32| uid == nix::unistd::geteuid().as_raw();
        assert!(matches!(
            crate::discovery::read_listing(&file, me),
            Ok(Some(_))
        ));

        // Every descriptor this process may have is taken.
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, 64, hard).unwrap();
        let mut held = Vec::new();
        while let Ok(f) = fs_err::File::open("/dev/null") {
            held.push(f);
        }
        let before = exhaustion_count();
        let read = crate::discovery::read_listing(&file, me);
        assert!(matches!(read, Err(ref r) if r.is_transient()), "{read:?}");
        let scan = crate::discovery::scan_root(d.path(), &me);
        assert!(scan.found.is_empty());
        assert!(
            scan.refused.as_ref().is_some_and(|r| r.is_transient()),
            "{:?}",
            scan.refused
        );
        assert!(exhaustion_count() > before);

        drop(held);
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
        assert!(matches!(
            crate::discovery::read_listing(&file, me),
            Ok(Some(_))
        ));
        assert_eq!(crate::discovery::scan_root(d.path(), &me).found.len(), 1);
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
