//! `up --alert-rules FILE`: the user's own rules files, read safely, checked with
//! promtool and kept as copies in the stack's settings.
//!
//! A file is read once, at `up`: a regular file of this user's (or root's), not a
//! link, FIFO or device, at most [`MAX_BYTES`]. Its groups may not take a name of
//! raywatch's (`raywatch_…`: `top` and `alerts` find their groups by name). promtool
//! checks it before anything is saved, so a bad file changes nothing: a running
//! stack keeps the rules it has, a new one does not start. Prometheus reads the
//! copy in `<home>/prometheus/`, never the user's path.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize;

use super::UpArgs;
use crate::config::{StackConfig, UserRules};
use crate::escape;

/// The most a rules file, and all of them together, may hold (thousands of rules
/// fit; the settings that keep them travel to the daemon in one request).
pub const MAX_BYTES: u64 = 1 << 20;

/// The group names of a rules file, to refuse raywatch's own.
#[derive(Deserialize)]
struct Names {
    #[serde(default)]
    groups: Vec<Named>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

/// Applies `--alert-rules` / `--no-alert-rules` over `base`: each file read and
/// checked (with the promtool beside `base.prometheus_bin`).
pub fn apply(args: &UpArgs, base: &mut StackConfig) -> Result<()> {
    if args.no_alert_rules {
        base.user_rules.clear();
    }
    if args.alert_rules.is_empty() {
        return Ok(());
    }
    let max = crate::prometheus::files::MAX_USER_RULES;
    ensure!(
        args.alert_rules.len() <= max,
        "--alert-rules was given {} times; at most {max} files (merge some into one)",
        args.alert_rules.len()
    );
    let rules: Vec<UserRules> = args
        .alert_rules
        .iter()
        .map(|f| read(f, &base.prometheus_bin))
        .collect::<Result<_>>()?;
    let total: usize = rules.iter().map(|r| r.yaml.len()).sum();
    ensure!(
        total as u64 <= MAX_BYTES,
        "--alert-rules: the files hold {total} bytes together, over the {MAX_BYTES} raywatch keeps; trim them or merge their rules"
    );
    base.user_rules = rules;
    Ok(())
}

/// Refuses user rules where no rule is evaluated (an agent).
pub fn check(cfg: &StackConfig) -> Result<()> {
    ensure!(
        cfg.user_rules.is_empty() || !cfg.agent,
        "--alert-rules: an agent (--agent) evaluates no rules; evaluate them where the samples are stored (the central Prometheus), or drop them with --no-alert-rules"
    );
    Ok(())
}

/// One `--alert-rules` file, read and checked.
fn read(file: &Path, prometheus: &Path) -> Result<UserRules> {
    let shown = escape::path(file);
    let me = nix::unistd::geteuid().as_raw();
    let contents = crate::untrusted::read_file(file, MAX_BYTES, &|uid| uid == me || uid == 0)
        .map_err(|r| anyhow!("--alert-rules {shown}: it {r}"))?
        .with_context(|| format!("--alert-rules {shown} does not exist"))?;
    let yaml = String::from_utf8(contents.bytes)
        .with_context(|| format!("--alert-rules {shown} is not UTF-8 text"))?;
    let names: Names = serde_yaml_ng::from_str(&yaml)
        .with_context(|| format!("--alert-rules {shown} is not a Prometheus rules file"))?;
    if let Some(g) = names
        .groups
        .iter()
        .find(|g| g.name.starts_with("raywatch_"))
    {
        bail!(
            "--alert-rules {shown}: its group {} takes a name of raywatch's own (raywatch_…); rename the group",
            escape::text(&g.name)
        );
    }
    let checked = crate::prometheus::files::check_rules(prometheus, &yaml)
        .with_context(|| format!("--alert-rules {shown} was refused, nothing changed"))?;
    if !checked {
        eprintln!(
            "note: no promtool beside {} or on PATH: --alert-rules {shown} is checked by Prometheus when it loads it",
            escape::path(prometheus)
        );
    }
    let source = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    Ok(UserRules { source, yaml })
}
