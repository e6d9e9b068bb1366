//! The stack's secrets for Prometheus: its password (rotated at every start), and the
//! remote writes' basic-auth files split into the user and password files it reads.

use std::path::Path;

use anyhow::{Context, Result};

use crate::config::StackConfig;
use crate::home::Home;

/// The user name of the `i`-th remote write's basic-auth file (read at `up`).
pub(super) fn basic_auth_user(home: &Home, i: usize) -> Option<String> {
    fs_err::read_to_string(home.remote_write_user(i))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Splits each remote write's `user:password` file into a user file and a
/// password file in `<home>/secrets/` (0600): Prometheus' basic auth reads the
/// password from a file, and the user goes into prometheus.yml. The user's
/// file is read like untrusted input (regular, owned by this user, bounded).
pub fn write_remote_write_secrets(home: &Home, cfg: &StackConfig) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    for (i, rw) in cfg.remote_write.iter().enumerate() {
        let Some(file) = &rw.basic_auth_file else {
            continue;
        };
        let contents = crate::untrusted::read_file(file, 4096, &|uid| uid == me)
            .map_err(|r| {
                anyhow::anyhow!("--remote-write-basic-auth-file {}: it {r}", file.display())
            })?
            .with_context(|| {
                format!(
                    "--remote-write-basic-auth-file {} does not exist",
                    file.display()
                )
            })?;
        let text = String::from_utf8(contents.bytes).with_context(|| {
            format!(
                "--remote-write-basic-auth-file {} is not UTF-8",
                file.display()
            )
        })?;
        let (user, password) = text
            .trim_end_matches(['\n', '\r'])
            .split_once(':')
            .with_context(|| {
                format!(
                    "--remote-write-basic-auth-file {} must hold user:password on one line",
                    file.display()
                )
            })?;
        crate::atomic::write(
            &home.remote_write_user(i),
            format!("{user}\n").as_bytes(),
            0o600,
        )?;
        crate::atomic::write(&home.remote_write_password(i), password.as_bytes(), 0o600)?;
    }
    Ok(())
}

/// The stack's Prometheus password, generated on first use (0600 in `secrets/`).
pub fn ensure_password(home: &Home) -> Result<String> {
    ensure_secret(&home.prometheus_password())
}

/// Replaces the stack's Prometheus password with a fresh one (at every start
/// of the daemon), so a password that ever leaked stops working.
pub fn rotate_password(home: &Home) -> Result<String> {
    let secret = random_secret()?;
    crate::atomic::write(
        &home.prometheus_password(),
        format!("{secret}\n").as_bytes(),
        0o600,
    )?;
    Ok(secret)
}

/// A fresh random secret (48 hex digits).
pub fn random_secret() -> Result<String> {
    let mut bytes = [0u8; 24];
    fs_err::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("cannot read /dev/urandom to generate a secret")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reads a secret file, generating it (random, hex, 0600) when missing or empty.
pub fn ensure_secret(path: &Path) -> Result<String> {
    match fs_err::read_to_string(path) {
        Ok(p) if !p.trim().is_empty() => return Ok(p.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let secret = random_secret()?;
    crate::atomic::write(path, format!("{secret}\n").as_bytes(), 0o600)?;
    Ok(secret)
}
