//! Which Prometheus a binary is (`prometheus --version`), and the versions raywatch needs.

use std::path::Path;

/// The major version of a Prometheus binary (`prometheus --version`).
pub fn major_version(bin: &Path) -> Option<u32> {
    version(bin).map(|(major, _)| major)
}

/// Agent mode needs Prometheus ≥ 2.32.
pub const AGENT_SINCE: (u32, u32) = (2, 32);
/// `--web.config.file` (basic auth), without which raywatch does not run Prometheus, exists since 2.24.
pub const WEB_CONFIG_SINCE: (u32, u32) = (2, 24);

/// The (major, minor) version of a Prometheus binary.
pub fn version(bin: &Path) -> Option<(u32, u32)> {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let rest = text.split("version ").nth(1)?;
    let mut parts = rest.split(['.', '+', ' ', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}
