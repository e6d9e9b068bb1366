//! Finding a Prometheus binary, and getting one when there is none.
//!
//! Order: `--prometheus-bin`, `RAYWATCH_PROMETHEUS`, PATH, raywatch's cache.
//! Failing those, `up` may download the pinned official release, checked against
//! the SHA-256 kept below; where that cannot be reached and raywatch runs as root
//! on a machine with apt-get, it installs Debian's `prometheus` package.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The release `up` downloads when asked to.
pub const PINNED_VERSION: &str = "2.28.1";
/// SHA-256 of the official `prometheus-<version>.linux-<arch>.tar.gz`, per arch.
const PINNED_SHA256: &[(&str, &str)] = &[(
    "amd64",
    "91dd91e13f30fe520e01175ca1027dd09a458d4421a584ba557ba88b38803f27",
)];

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `$XDG_CACHE_HOME/raywatch` or `~/.cache/raywatch`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(x) = crate::env::xdg_cache_home() {
        return Some(x.join("raywatch"));
    }
    crate::env::home_dir().map(|h| h.join(".cache/raywatch"))
}

fn release_name() -> String {
    format!("prometheus-{PINNED_VERSION}.linux-{}", arch())
}

fn cached_binary() -> Option<PathBuf> {
    let p = cache_dir()?.join(release_name()).join("prometheus");
    p.is_file().then_some(p)
}

/// Where a Prometheus binary was looked for, for messages.
pub fn search_description() -> String {
    let cache = cache_dir()
        .map(|d| d.join(release_name()).display().to_string())
        .unwrap_or_else(|| "(no cache: $HOME is unset)".into());
    format!("--prometheus-bin, $RAYWATCH_PROMETHEUS, `prometheus` on $PATH, {cache}")
}

/// Finds Prometheus without installing anything.
pub fn locate(flag: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(p) = flag {
        return check_executable(p, "--prometheus-bin").map(Some);
    }
    if let Some(p) = crate::env::prometheus_bin() {
        return check_executable(&p, "RAYWATCH_PROMETHEUS").map(Some);
    }
    if let Ok(p) = which::which("prometheus") {
        return Ok(Some(p));
    }
    Ok(cached_binary())
}

fn check_executable(p: &Path, source: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs_err::metadata(p)
        .with_context(|| format!("{source} names {}, which does not exist", p.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        bail!(
            "{source} names {}, which is not an executable file",
            p.display()
        );
    }
    fs_err::canonicalize(p).with_context(|| format!("cannot resolve {}", p.display()))
}

/// What to tell a user who has no Prometheus.
pub fn instructions() -> String {
    format!(
        "install one of:\n  \
         - Debian/Ubuntu: sudo apt-get install prometheus\n  \
         - Fedora/RHEL:   sudo dnf install golang-github-prometheus\n  \
         - any Linux:     raywatch up --yes   (downloads Prometheus {PINNED_VERSION}, SHA-256 checked)\n  \
         or point raywatch at a binary: raywatch up --prometheus-bin /path/to/prometheus"
    )
}

/// Downloads the pinned release into the cache, verifying its SHA-256, and
/// unpacks it into a temp folder that is renamed into place only when complete.
pub async fn download() -> Result<PathBuf> {
    let Some((_, expected)) = PINNED_SHA256.iter().find(|(a, _)| *a == arch()) else {
        bail!("raywatch has no pinned Prometheus checksum for {}", arch());
    };
    let cache = cache_dir().context("cannot place a cache: $HOME is unset")?;
    fs_err::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let url = format!(
        "https://github.com/prometheus/prometheus/releases/download/v{PINNED_VERSION}/{}.tar.gz",
        release_name()
    );
    eprintln!("downloading {url}");
    let resp = reqwest::Client::new()
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("cannot download {url}"))?;
    let bytes = resp
        .bytes()
        .await
        .with_context(|| format!("download of {url} broke off"))?;
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if digest != *expected {
        bail!(
            "the download of {url} has SHA-256 {digest}, expected {expected}; nothing was installed"
        );
    }
    let staging = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(&cache)
        .context("cannot create an unpack folder in the cache")?;
    let mut archive =
        tar::Archive::new(flate2::read::GzDecoder::new(bytes.as_ref().take(u64::MAX)));
    archive
        .unpack(staging.path())
        .context("cannot unpack the Prometheus archive")?;
    let unpacked = staging.path().join(release_name());
    if !unpacked.join("prometheus").is_file() {
        bail!(
            "the Prometheus archive has no {}/prometheus",
            release_name()
        );
    }
    let dest = cache.join(release_name());
    fs_err::rename(&unpacked, &dest)
        .with_context(|| format!("cannot move the unpacked release to {}", dest.display()))?;
    Ok(dest.join("prometheus"))
}

/// Installs Debian's package, when raywatch is root on a machine with apt-get.
pub fn apt_install() -> Result<PathBuf> {
    if !nix::unistd::geteuid().is_root() || which::which("apt-get").is_err() {
        bail!("apt-get is not available to this user");
    }
    eprintln!("installing Debian's prometheus package with apt-get");
    let status = std::process::Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "prometheus"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get install prometheus failed ({status})");
    }
    which::which("prometheus")
        .ok()
        .or_else(|| Some(PathBuf::from("/usr/bin/prometheus")).filter(|p| p.is_file()))
        .context("apt-get installed prometheus, but no binary is on PATH")
}
