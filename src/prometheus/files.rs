//! Writing Prometheus' files for a stack: web.yml, the recording rules and prometheus.yml,
//! each checked with promtool (when there is one) before it replaces the old file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::USER;
use super::schema::{Rules, WebYml, prometheus_yml};
use super::secrets::{ensure_password, write_remote_write_secrets};
use crate::config::StackConfig;
use crate::home::Home;

/// Writes the secret (once), web.yml, the rules files (those there are) and
/// prometheus.yml. Each is checked with promtool, when there is one, before it
/// replaces the old file.
pub fn write_files(home: &Home, cfg: &StackConfig, rules: &Rules) -> Result<()> {
    // A hand-edited config.json gets the same checks as `up --drop-label`.
    crate::guard::drop_labels(&cfg.drop_labels)
        .with_context(|| format!("{} has a bad drop_labels entry", home.config().display()))?;
    let password = ensure_password(home)?;
    write_remote_write_secrets(home, cfg)?;
    let web_ok = fs_err::read_to_string(home.web_yml())
        .ok()
        .and_then(|t| serde_yaml_ng::from_str::<WebYml>(&t).ok())
        .and_then(|w| w.basic_auth_users.get(USER).cloned())
        .is_some_and(|hash| bcrypt::verify(&password, &hash).unwrap_or(false));
    if !web_ok {
        let hash = bcrypt::hash(&password, 10).context("cannot hash the Prometheus password")?;
        let web = WebYml {
            basic_auth_users: BTreeMap::from([(USER.to_string(), hash)]),
        };
        crate::atomic::write(
            &home.web_yml(),
            serde_yaml_ng::to_string(&web)?.as_bytes(),
            0o600,
        )?;
    }
    // The rules first: the prometheus.yml naming them may be read at any moment.
    let mut files = vec![
        (
            home.top_rules(),
            rules.top.as_ref().map(|r| r.yaml.as_str()),
        ),
        (home.alert_rules(), rules.alerts.as_deref()),
    ];
    files.extend(
        rules
            .user
            .iter()
            .enumerate()
            .map(|(i, y)| (home.user_rules(i), Some(y.as_str()))),
    );
    // The copies of user rules files no longer given (at most as many as were ever kept).
    files.extend((rules.user.len()..MAX_USER_RULES).map(|i| (home.user_rules(i), None)));
    for (path, yaml) in &files {
        if let Some(yaml) = yaml {
            write_checked(home, cfg, path, yaml, &["check", "rules"])?;
        }
    }
    let yml = serde_yaml_ng::to_string(&prometheus_yml(home, cfg, rules))?;
    write_checked(
        home,
        cfg,
        &home.prometheus_yml(),
        &yml,
        &["check", "config", "--syntax-only"],
    )?;
    // A file no longer named by prometheus.yml: a stale copy would only mislead a reader.
    for (path, yaml) in &files {
        if yaml.is_none() {
            match fs_err::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
    }
    Ok(())
}

/// At most this many rules files of the user's (`up --alert-rules`).
pub const MAX_USER_RULES: usize = 16;

/// Checks a rules file's text with `promtool check rules` (the one beside
/// `prometheus`, else on PATH): Err with promtool's words when it refuses it,
/// Ok(false) when there is no promtool to ask.
pub fn check_rules(prometheus: &Path, text: &str) -> Result<bool> {
    let Some(promtool) = promtool_beside(prometheus) else {
        return Ok(false);
    };
    let mut file = tempfile::Builder::new()
        .prefix("raywatch-rules-")
        .suffix(".yml")
        .tempfile()
        .context("cannot stage the rules file for promtool")?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(file.path())
        .output()
        .with_context(|| format!("cannot run {}", promtool.display()))?;
    if !out.status.success() {
        // promtool names the staged copy; the caller names the file it came from.
        let said = format!(
            "{} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .replace(&*file.path().to_string_lossy(), "the file");
        bail!("promtool check rules: {}", said.trim());
    }
    Ok(true)
}

/// Writes `text` to `dest` in Prometheus' folder unless it holds it already: staged
/// (0600), checked with `promtool <check…>` when there is a promtool, committed.
fn write_checked(
    home: &Home,
    cfg: &StackConfig,
    dest: &Path,
    text: &str,
    check: &[&str],
) -> Result<()> {
    if fs_err::read_to_string(dest).ok().as_deref() == Some(text) {
        return Ok(());
    }
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .context("a generated file has no name")?;
    let staged = crate::atomic::stage(&home.prometheus_dir(), name, text.as_bytes(), 0o600)?;
    if let Some(promtool) = promtool_beside(&cfg.prometheus_bin) {
        let out = std::process::Command::new(&promtool)
            .args(check)
            .arg(staged.path())
            .output();
        if let Ok(out) = out
            && !out.status.success()
        {
            bail!(
                "the new {} failed `promtool {}`, so the previous file is kept: {} {}",
                dest.display(),
                check.join(" "),
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    staged.commit(dest)
}

fn promtool_beside(prometheus: &Path) -> Option<PathBuf> {
    let beside = prometheus.with_file_name("promtool");
    if beside.is_file() {
        return Some(beside);
    }
    which::which("promtool").ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_hand_edited_config_that_drops_a_label_raywatch_needs_is_refused_before_any_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(dir.path().join("home"))).unwrap();
        home.ensure().unwrap();
        let cfg = StackConfig {
            prometheus_bin: dir.path().join("no-prometheus"),
            prometheus_port: 9999,
            scrape_interval: Duration::from_secs(10),
            drop_labels: vec!["ray_io_cluster".into()],
            ..Default::default()
        };
        let err = format!(
            "{:#}",
            write_files(&home, &cfg, &Rules::default()).unwrap_err()
        );
        assert!(err.contains("config.json"), "{err}");
        assert!(
            err.contains("\"ray_io_cluster\" would break raywatch"),
            "{err}"
        );
        assert!(!home.prometheus_yml().exists());
    }
}
