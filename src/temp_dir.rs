//! Where a cluster's Ray temp dir may live: a private default (`/tmp/raywatch-<uid>/`), and the checks on one the user names.
//!
//! Ray makes its temp dir and every session folder in it writable by everyone
//! (0777, no sticky bit), whoever created them: another user who can reach
//! them can replace the Dashboard's sockets (and so read the `Authorization`
//! header of its owner's requests: Ray's token), read every log, and plant
//! links. Only a private folder *above* the temp dir keeps them out, so the
//! default temp dir is `<$RAY_TMPDIR or /tmp>/raywatch-<uid>/ray` (0700).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

use crate::escape;

/// Why a temp dir is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Refused {
    #[error("{path} is a symbolic link owned by {owner}, who could redirect it")]
    ForeignLink { path: String, owner: String },
    #[error("{path} is a symbolic link; Ray's temp dir must be a real folder")]
    Link { path: String },
    #[error(
        "{path} belongs to {owner}, not to you: they could move, replace or read what Ray writes there"
    )]
    Foreign {
        path: String,
        owner: String,
        uid: u32,
    },
    #[error("{path} is not a folder")]
    NotADir { path: String },
    #[error("cannot prepare {path}: {why}")]
    Io { path: String, why: String },
}

impl Refused {
    /// What to do instead.
    pub fn hint(&self) -> String {
        match self {
            Refused::Foreign { uid, .. } => format!(
                "use the private default (`raywatch env` without --temp-dir); or, if you trust that user, `raywatch up --trust-uid {uid}`"
            ),
            _ => "use the private default (`raywatch env` without --temp-dir), or a folder of your own".into(),
        }
    }
}

/// Whether other users can reach a temp dir (and so the world-writable folders Ray makes in it).
#[derive(Debug, PartialEq, Eq)]
pub enum Reach {
    /// A folder above it is yours and closed to others.
    Private,
    /// Others can reach it.
    Open,
}

/// `path` with `.` and `..` resolved lexically and no trailing slash.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

fn owner_name(uid: u32) -> String {
    format!("{} (uid {uid})", crate::process::user_name(uid))
}

/// Checks a temp dir the user named (absolute, normalized): every existing
/// folder on the way must be yours, root's, a trusted uid's, or sticky like
/// /tmp; a link on the way must be yours or root's; the temp dir itself, when
/// it exists, a real folder of yours (or root's, or a trusted uid's).
pub fn check(path: &Path, trusted: &dyn Fn(u32) -> bool) -> Result<Reach, Refused> {
    check_within(path, trusted, 0)
}

/// How many links on the way [`check`] follows.
const MAX_LINKS: usize = 8;

fn check_within(
    path: &Path,
    trusted: &dyn Fn(u32) -> bool,
    links: usize,
) -> Result<Reach, Refused> {
    let me = nix::unistd::geteuid().as_raw();
    let ok_owner = |uid: u32| uid == me || uid == 0 || trusted(uid);
    let mut reach = Reach::Open;
    let mut current = PathBuf::from("/");
    let parent = path.parent().unwrap_or(Path::new("/"));
    for comp in parent.components().skip(1) {
        current.push(comp);
        let Ok(m) = fs_err::symlink_metadata(&current) else {
            break;
        };
        let shown = escape::path(&current).into_owned();
        if m.file_type().is_symlink() {
            if m.uid() != me && m.uid() != 0 {
                return Err(Refused::ForeignLink {
                    path: shown,
                    owner: owner_name(m.uid()),
                });
            }
            if links >= MAX_LINKS {
                return Err(Refused::Io {
                    path: shown,
                    why: "too many symbolic links on the way".into(),
                });
            }
            // Where it leads is checked by the folders reached through it.
            let resolved = normalize(&resolve_link(&current, path)?);
            return check_within(&resolved, trusted, links + 1);
        }
        let sticky = m.mode() & 0o1000 != 0;
        if !ok_owner(m.uid()) && !sticky {
            return Err(Refused::Foreign {
                path: shown,
                owner: owner_name(m.uid()),
                uid: m.uid(),
            });
        }
        if m.uid() == me && m.mode() & 0o011 == 0 {
            reach = Reach::Private;
        }
    }
    match fs_err::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Refused::Link {
            path: escape::path(path).into_owned(),
        }),
        Ok(m) if !m.is_dir() => Err(Refused::NotADir {
            path: escape::path(path).into_owned(),
        }),
        Ok(m) if !ok_owner(m.uid()) => Err(Refused::Foreign {
            path: escape::path(path).into_owned(),
            owner: owner_name(m.uid()),
            uid: m.uid(),
        }),
        _ => Ok(reach),
    }
}

/// `path` with the link `link` (one of its ancestors) replaced by its target.
fn resolve_link(link: &Path, path: &Path) -> Result<PathBuf, Refused> {
    let target = fs_err::read_link(link).map_err(|e| Refused::Io {
        path: escape::path(link).into_owned(),
        why: e.to_string(),
    })?;
    let base = if target.is_absolute() {
        target
    } else {
        link.parent().unwrap_or(Path::new("/")).join(target)
    };
    let rest = path.strip_prefix(link).unwrap_or(Path::new(""));
    Ok(base.join(rest))
}

/// The private folder for this user's temp dirs: `<$RAY_TMPDIR or /tmp>/raywatch-<uid>`,
/// created 0700 or checked to be a real folder of ours that nobody else can enter.
pub fn private_base() -> Result<PathBuf, Refused> {
    let me = nix::unistd::geteuid().as_raw();
    let base = crate::env::ray_tmpdir()
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join(format!("raywatch-{me}"));
    let io = |e: std::io::Error| Refused::Io {
        path: escape::path(&base).into_owned(),
        why: e.to_string(),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    let m = fs_err::symlink_metadata(&base).map_err(io)?;
    let shown = escape::path(&base).into_owned();
    if m.file_type().is_symlink() {
        return Err(Refused::Link { path: shown });
    }
    if !m.is_dir() {
        return Err(Refused::NotADir { path: shown });
    }
    if m.uid() != me {
        return Err(Refused::Foreign {
            path: shown,
            owner: owner_name(m.uid()),
            uid: m.uid(),
        });
    }
    if m.mode() & 0o077 != 0 {
        fs_err::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_lexically() {
        assert_eq!(normalize(Path::new("/tmp/x/")), PathBuf::from("/tmp/x"));
        assert_eq!(
            normalize(Path::new("/tmp/./x/../y")),
            PathBuf::from("/tmp/y")
        );
    }

    #[test]
    fn a_folder_under_a_private_one_of_ours_is_private() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let t = dir.path().join("ray");
        assert_eq!(check(&t, &|_| false), Ok(Reach::Private));
        fs_err::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check(&t, &|_| false), Ok(Reach::Open));
        // A link as the temp dir itself is refused; a link of ours on the way is followed.
        fs_err::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), &t).unwrap();
        assert!(matches!(check(&t, &|_| false), Err(Refused::Link { .. })));
        assert_eq!(check(&t.join("inner"), &|_| false), Ok(Reach::Open));
    }
}
