//! The stack's home folder: where it lives, its layout, and the checks that keep it private.

use fs_err as fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::HintExt;
use anyhow::{Context, Result};

/// All paths of one stack. One stack per home; several homes may coexist.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// `--home` / `RAYWATCH_HOME`, else `$XDG_STATE_HOME/raywatch`, else
    /// `~/.local/state/raywatch`. Never a predictable path in /tmp.
    pub fn resolve(explicit: Option<PathBuf>) -> Result<Home> {
        let root = match explicit {
            Some(p) => p,
            None => match crate::env::xdg_state_home() {
                Some(state) => state.join("raywatch"),
                None => {
                    let home = crate::env::home_dir().context(
                        "neither $XDG_STATE_HOME nor $HOME is set; pass --home DIR or set RAYWATCH_HOME",
                    )?;
                    home.join(".local/state/raywatch")
                }
            },
        };
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()
                .context("cannot read the current folder")?
                .join(root)
        };
        Ok(Home { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }
    pub fn attachments(&self) -> PathBuf {
        self.root.join("attachments.json")
    }
    /// Every cluster's life, append-only (see [`crate::history`]).
    pub fn history(&self) -> PathBuf {
        self.root.join("history.jsonl")
    }
    pub fn prometheus_dir(&self) -> PathBuf {
        self.root.join("prometheus")
    }
    pub fn prometheus_yml(&self) -> PathBuf {
        self.prometheus_dir().join("prometheus.yml")
    }
    /// The recording rules of `raywatch top`.
    pub fn top_rules(&self) -> PathBuf {
        self.prometheus_dir().join("top-rules.yml")
    }
    /// Alertmanager's folder: its config, web config and data.
    pub fn alertmanager_dir(&self) -> PathBuf {
        self.root.join("alertmanager")
    }
    pub fn alertmanager_yml(&self) -> PathBuf {
        self.alertmanager_dir().join("alertmanager.yml")
    }
    pub fn alertmanager_web_yml(&self) -> PathBuf {
        self.alertmanager_dir().join("web.yml")
    }
    /// raywatch's built-in alert rules.
    pub fn alert_rules(&self) -> PathBuf {
        self.prometheus_dir().join("alerts.yml")
    }
    /// The copy of the user's `i`th rules file (`up --alert-rules`).
    pub fn user_rules(&self, i: usize) -> PathBuf {
        self.prometheus_dir().join(format!("user-rules-{i}.yml"))
    }
    pub fn web_yml(&self) -> PathBuf {
        self.prometheus_dir().join("web.yml")
    }
    pub fn prometheus_data(&self) -> PathBuf {
        self.prometheus_dir().join("data")
    }
    pub fn targets_dir(&self) -> PathBuf {
        self.root.join("targets")
    }
    /// Sibling of `targets/` on the same file system: temp files never appear
    /// inside the folder Prometheus watches.
    pub fn targets_tmp(&self) -> PathBuf {
        self.root.join("targets.tmp")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn socket(&self) -> PathBuf {
        self.run_dir().join("raywatch.sock")
    }
    pub fn daemon_pid(&self) -> PathBuf {
        self.run_dir().join("daemon.pid")
    }
    pub fn daemon_lock(&self) -> PathBuf {
        self.run_dir().join("daemon.lock")
    }
    pub fn prometheus_pid(&self) -> PathBuf {
        self.run_dir().join("prometheus.pid")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn daemon_log(&self) -> PathBuf {
        self.logs_dir().join("daemon.log")
    }
    /// The daemon's own stderr (panics, errors before logging starts): never
    /// rotated, unlike `daemon.log`, so such a message is never renamed away.
    pub fn daemon_stderr(&self) -> PathBuf {
        self.logs_dir().join("daemon.stderr")
    }
    pub fn prometheus_log(&self) -> PathBuf {
        self.logs_dir().join("prometheus.log")
    }
    /// The bearer token of the http_sd endpoint (0600).
    pub fn sd_token(&self) -> PathBuf {
        self.secrets_dir().join("sd-token")
    }
    /// The password of the `i`-th remote write's basic auth (0600).
    pub fn remote_write_password(&self, i: usize) -> PathBuf {
        self.secrets_dir()
            .join(format!("{}-password", crate::remote_write::remote_name(i)))
    }
    /// The user of the `i`-th remote write's basic auth.
    pub fn remote_write_user(&self, i: usize) -> PathBuf {
        self.secrets_dir()
            .join(format!("{}-user", crate::remote_write::remote_name(i)))
    }
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }
    pub fn grafana_dir(&self) -> PathBuf {
        self.root.join("grafana")
    }
    pub fn grafana_password(&self) -> PathBuf {
        self.secrets_dir().join("grafana-admin-password")
    }
    pub fn grafana_pid(&self) -> PathBuf {
        self.run_dir().join("grafana.pid")
    }
    pub fn grafana_log(&self) -> PathBuf {
        self.logs_dir().join("grafana.log")
    }
    pub fn alertmanager_pid(&self) -> PathBuf {
        self.run_dir().join("alertmanager.pid")
    }
    pub fn alertmanager_log(&self) -> PathBuf {
        self.logs_dir().join("alertmanager.log")
    }
    pub fn prometheus_password(&self) -> PathBuf {
        self.secrets_dir().join("prometheus-password")
    }
    /// Alertmanager's own password (never Prometheus'): Prometheus' notifier
    /// cannot check who holds Alertmanager's port, so what it sends there is
    /// worth no more than Alertmanager itself.
    pub fn alertmanager_password(&self) -> PathBuf {
        self.secrets_dir().join("alertmanager-password")
    }

    /// Whether the home exists at all (a stack may have been set up here).
    pub fn exists(&self) -> bool {
        self.root.exists()
    }

    /// Creates the home and its folders (0700) or checks an existing one:
    /// it must be a real folder owned by us and writable by nobody else.
    pub fn ensure(&self) -> Result<()> {
        check_ancestors(&self.root)?;
        match fs::symlink_metadata(&self.root) {
            Ok(_) => check_private_dir(&self.root)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = self.root.parent() {
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                }
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&self.root)
                    .or_else(|e| {
                        // Another `up` may have created it a moment ago.
                        if e.kind() == std::io::ErrorKind::AlreadyExists {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .with_context(|| format!("cannot create home {}", self.root.display()))?;
                check_private_dir(&self.root)?;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot inspect home {}", self.root.display()));
            }
        }
        let sock_len = self.socket().as_os_str().len();
        if sock_len > 100 {
            return Err(anyhow::anyhow!("the home path {} is too long: its control socket path would be {sock_len} bytes, and Unix sockets allow about 100", self.root.display())).hint("pass a shorter --home");
        }
        for dir in [
            self.prometheus_dir(),
            self.prometheus_data(),
            self.targets_dir(),
            self.targets_tmp(),
            self.run_dir(),
            self.logs_dir(),
            self.secrets_dir(),
        ] {
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", dir.display()));
                }
            }
            check_private_dir(&dir)?;
        }
        Ok(())
    }
}

/// A folder raywatch keeps private: not a symlink, owned by the effective user,
/// not writable by group or others.
pub fn check_private_dir(path: &Path) -> Result<()> {
    let meta =
        fs::symlink_metadata(path).with_context(|| format!("cannot inspect {}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Err(anyhow::anyhow!(
            "{} is a symbolic link; raywatch keeps its state only in a real folder it owns",
            path.display()
        ))
        .hint("remove the link or pass another --home");
    }
    if !meta.is_dir() {
        return Err(anyhow::anyhow!("{} is not a folder", path.display()))
            .hint("pass another --home");
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(anyhow::anyhow!(
            "{} is owned by uid {} ({}), not by you (uid {me}); refusing to use it",
            path.display(),
            meta.uid(),
            crate::process::user_name(meta.uid())
        ))
        .hint("pass a --home that you own");
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(anyhow::anyhow!(
            "{} is writable by other users (mode {mode:o}); refusing to use it",
            path.display()
        ))
        .hint(format!("chmod 700 {}", path.display()));
    }
    Ok(())
}

/// Refuses a home reached through a path another user could redirect: every
/// existing ancestor must be owned by root or by us, or else not writable by
/// others (a sticky folder such as /tmp is fine: others cannot rename our entries),
/// and a symlink on the way must belong to root or to us.
pub fn check_ancestors(path: &Path) -> Result<()> {
    check_ancestors_of(
        path,
        "the home",
        "pass a --home under folders only you and root control",
    )
}

/// [`check_ancestors`] for any private place: `what` names it in the error, `fix` is the hint.
/// The path as written is checked (a link on the way must be ours or root's), and so is
/// the real path it leads to: a link of ours into a folder another user controls is
/// refused like that folder itself.
pub fn check_ancestors_of(path: &Path, what: &str, fix: &str) -> Result<()> {
    if !path.is_absolute() {
        return Err(anyhow::anyhow!("{what} {} is a relative path, which names a different folder in every working directory", path.display())).hint(fix);
    }
    check_walk(path, path, what, fix)?;
    let real = resolve_existing(path);
    if real != path {
        check_walk(path, &real, what, fix)?;
    }
    Ok(())
}

/// `path` with its longest existing prefix resolved (links followed), the rest appended.
fn resolve_existing(path: &Path) -> PathBuf {
    let mut prefix = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = fs::canonicalize(&prefix) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (prefix.file_name().map(|n| n.to_owned()), prefix.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                prefix = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Checks the folders above `walked` (the path as written, or the real one), naming `path`.
fn check_walk(path: &Path, walked: &Path, what: &str, fix: &str) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    let mut current = PathBuf::from("/");
    let parent = walked.parent().unwrap_or(Path::new("/"));
    for comp in parent.components().skip(1) {
        current.push(comp);
        let Ok(meta) = fs::symlink_metadata(&current) else {
            break;
        };
        let owner_ok = meta.uid() == 0 || meta.uid() == me;
        let owner = || {
            format!(
                "uid {} ({})",
                meta.uid(),
                crate::process::user_name(meta.uid())
            )
        };
        if meta.file_type().is_symlink() {
            if !owner_ok {
                return Err(anyhow::anyhow!("{what} {} is reached through {}, a symbolic link owned by {}, who could redirect it; refusing", path.display(), current.display(), owner())).hint(fix);
            }
            continue;
        }
        let mode = meta.permissions().mode();
        let others_write = mode & 0o022 != 0;
        let sticky = mode & 0o1000 != 0;
        if !owner_ok && others_write && !sticky {
            return Err(anyhow::anyhow!("{what} {} lies under {}, which others can write to (mode {:o}, owner {}); refusing", path.display(), current.display(), mode & 0o7777, owner())).hint(fix);
        }
        if !owner_ok && !others_write && meta.uid() != me {
            // Owned by someone else but closed to others: that user could still swap it.
            return Err(anyhow::anyhow!(
                "{what} {} lies under {}, owned by {}, who could replace it; refusing",
                path.display(),
                current.display(),
                owner()
            ))
            .hint(fix);
        }
    }
    Ok(())
}
