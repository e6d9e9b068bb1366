//! Ray's token authentication: raywatch's per-user token for the clusters `env` prepares, Ray's own token file, and which Ray can use a token.
//!
//! Ray's Dashboard runs any entrypoint POSTed to `/api/jobs/` as the cluster's
//! user; since Ray 2.52 it demands a bearer token when `RAY_AUTH_MODE=token`.
//! Ray reads the token from `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`,
//! which Ray itself writes with a plain `open(path, "w")`: readable by every
//! user under the usual umask. raywatch's token lives in `<home>/secrets/`
//! (0700), 0600, generated once and never replaced (live clusters hold it),
//! and is handed to Ray by `RAY_AUTH_TOKEN_PATH`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::home::Home;

/// The first Ray whose Dashboard can demand a token.
pub const MIN_VERSION: (u32, u32) = (2, 52);
/// The variable that turns Ray's token auth on (`token`) or off (`disabled`).
pub const MODE_VAR: &str = "RAY_AUTH_MODE";
/// The variable naming the file Ray reads its token from.
pub const TOKEN_PATH_VAR: &str = "RAY_AUTH_TOKEN_PATH";

/// raywatch's token file for Ray (0600, in the home's 0700 `secrets/`).
pub fn token_path(home: &Home) -> PathBuf {
    home.secrets_dir().join("ray-auth-token")
}

/// The token file: created once (32 random bytes, hex, no newline: Ray compares
/// the file's bytes), or checked to be a regular file of ours that nobody else
/// can read. One others could read is replaced by a new token; the answer then
/// says so (`true`): clusters started with the old one keep it until they restart.
pub fn ensure_token(home: &Home) -> Result<(PathBuf, bool)> {
    let path = token_path(home);
    match fs_err::symlink_metadata(&path) {
        Ok(m) => {
            let me = nix::unistd::geteuid().as_raw();
            if !m.file_type().is_file() || m.uid() != me {
                bail!(
                    "{} is not a regular file of yours; remove it and run `raywatch env` again",
                    path.display()
                );
            }
            if m.mode() & 0o077 != 0 {
                write_new(&path)?;
                return Ok((path, true));
            }
            if m.len() == 0 {
                write_new(&path)?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_new(&path)?,
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    Ok((path, false))
}

fn write_new(path: &Path) -> Result<()> {
    let mut bytes = [0u8; 32];
    fs_err::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("cannot read /dev/urandom to generate Ray's token")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    crate::atomic::write(path, token.as_bytes(), 0o600)
}

/// Ray's default token file, `~/.ray/auth_token`.
pub fn ray_default_token_file() -> Option<PathBuf> {
    crate::env::home_dir().map(|h| h.join(".ray").join("auth_token"))
}

/// Why other users can read a token file, or `None` when they cannot (or it does not exist).
pub fn readable_by_others(path: &Path) -> Option<String> {
    let m = fs_err::metadata(path).ok()?;
    if !m.is_file() {
        return None;
    }
    let mode = m.mode() & 0o777;
    let who = match (mode & 0o040 != 0, mode & 0o004 != 0) {
        (_, true) => "every user",
        (true, false) => "its group",
        (false, false) => return None,
    };
    Some(format!("mode {mode:04o}: {who} can read it"))
}

/// The `chmod` that makes a token file and its folder private.
pub fn chmod_fix(path: &Path) -> String {
    let file = crate::escape::path(path);
    match path.parent() {
        Some(dir) => format!("chmod 600 {file} && chmod 700 {}", crate::escape::path(dir)),
        None => format!("chmod 600 {file}"),
    }
}

/// A Ray version's major and minor numbers (`2.60.0` → (2, 60)).
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    Some((major, minor))
}

/// Whether a Ray version can demand a token.
pub fn has_token_auth(v: (u32, u32)) -> bool {
    v >= MIN_VERSION
}

/// The version of the Ray that `ray` on `PATH` belongs to, read from its
/// environment's `ray-X.Y.Z.dist-info` (no Python started), with the `ray` found.
pub fn ray_on_path() -> Option<(PathBuf, Option<String>)> {
    let ray = which::which("ray").ok()?;
    let prefix = ray.parent()?.parent()?;
    let version = ["lib", "lib64"].iter().find_map(|lib| {
        let libdir = prefix.join(lib);
        fs_err::read_dir(&libdir)
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python"))
            .find_map(|py| dist_info_version(&py.path().join("site-packages")))
    });
    Some((ray, version))
}

pub fn dist_info_version(site_packages: &Path) -> Option<String> {
    fs_err::read_dir(site_packages)
        .ok()?
        .flatten()
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("ray-")?
                .strip_suffix(".dist-info")
                .map(String::from)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn versions_with_and_without_token_auth() {
        assert_eq!(parse_version("2.60.0"), Some((2, 60)));
        assert_eq!(parse_version("2.52.1"), Some((2, 52)));
        assert_eq!(parse_version("3.0.0rc1"), Some((3, 0)));
        assert_eq!(parse_version("2.9"), Some((2, 9)));
        assert_eq!(parse_version("x"), None);
        assert!(has_token_auth((2, 52)));
        assert!(has_token_auth((3, 0)));
        assert!(!has_token_auth((2, 51)));
        assert!(!has_token_auth((2, 40)));
    }

    #[test]
    fn a_token_file_others_can_read_is_named_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth_token");
        fs_err::write(&f, "t").unwrap();
        fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            readable_by_others(&f).as_deref(),
            Some("mode 0644: every user can read it")
        );
        fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(readable_by_others(&f).unwrap().contains("its group"));
        fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(readable_by_others(&f), None);
        assert_eq!(readable_by_others(&dir.path().join("missing")), None);
    }

    #[test]
    fn the_version_comes_from_the_dist_info_beside_ray() {
        let dir = tempfile::tempdir().unwrap();
        let sp = dir.path().join("site-packages");
        fs_err::create_dir_all(sp.join("ray-2.60.0.dist-info")).unwrap();
        fs_err::create_dir_all(sp.join("rich-13.0.0.dist-info")).unwrap();
        fs_err::create_dir_all(sp.join("ray-2.9.0.dist-info")).unwrap();
        assert_eq!(dist_info_version(&sp).as_deref(), Some("2.60.0"));
    }
}
