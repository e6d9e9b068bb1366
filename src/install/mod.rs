//! Finding the programs raywatch runs (Prometheus, Grafana, Alertmanager), and getting
//! them when they are missing.
//!
//! Prometheus is looked for at `--prometheus-bin`, `$RAYWATCH_PROMETHEUS`, on PATH,
//! then in raywatch's download cache. When none is there, the way to get one is chosen
//! ([`route`]): a site mirror the environment names; else Debian's package when
//! raywatch runs as root where apt-get exists; else the official release, downloaded,
//! checked against its published SHA-256 and unpacked into the cache ([`download`]).

mod cache;
mod download;
pub mod release;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub use download::{fetch, size};
pub use release::{Program, Release};

/// Where a binary was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env,
    Path,
    Cache,
}

/// A binary and where it came from.
#[derive(Debug, Clone)]
pub struct Found {
    pub path: PathBuf,
    pub source: Source,
}

impl Found {
    /// "on PATH", "in raywatch's download cache", ...: for `up`'s report.
    pub fn describe(&self) -> &'static str {
        match self.source {
            Source::Flag => "given by --prometheus-bin",
            Source::Env => "given by $RAYWATCH_PROMETHEUS",
            Source::Path => "found on PATH",
            Source::Cache => "downloaded earlier, from raywatch's cache",
        }
    }
}

/// Where a Prometheus binary was looked for, for messages.
pub fn search_description() -> String {
    let cache = release::release(Program::Prometheus)
        .ok()
        .and_then(|r| cache::release_dir(&r))
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "(no cache: $HOME is unset)".into());
    format!("--prometheus-bin, $RAYWATCH_PROMETHEUS, `prometheus` on $PATH, {cache}")
}

/// Finds Prometheus without installing anything.
pub fn locate(flag: Option<&Path>) -> Result<Option<Found>> {
    if let Some(p) = flag {
        return check_executable(p, "--prometheus-bin").map(|path| {
            Some(Found {
                path,
                source: Source::Flag,
            })
        });
    }
    if let Some(p) = crate::env::prometheus_bin() {
        return check_executable(&p, "RAYWATCH_PROMETHEUS").map(|path| {
            Some(Found {
                path,
                source: Source::Env,
            })
        });
    }
    if let Ok(path) = which::which("prometheus") {
        return Ok(Some(Found {
            path,
            source: Source::Path,
        }));
    }
    cached(Program::Prometheus).map(|c| {
        c.map(|path| Found {
            path,
            source: Source::Cache,
        })
    })
}

/// The cached binary of the release raywatch would download for `program`, if any.
pub fn cached(program: Program) -> Result<Option<PathBuf>> {
    cache::binary(&release::release(program)?)
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

/// The other ways to a Prometheus, for a user who declined the download.
pub fn instructions() -> String {
    "or install it yourself:\n    \
     - Debian/Ubuntu: sudo apt-get install prometheus\n    \
     - Fedora/RHEL:   sudo dnf install golang-github-prometheus\n    \
     - any binary:    raywatch up --prometheus-bin /path/to/prometheus\n    \
     - air-gapped:    set RAYWATCH_PROMETHEUS_URL to a mirror of the release tarball"
        .to_string()
}

/// How a missing program will be obtained, and why that way.
#[derive(Debug, Clone)]
pub enum Route {
    /// `apt-get install <package>`.
    Apt {
        package: &'static str,
        why: String,
    },
    Download {
        release: Release,
        why: String,
    },
}

/// Chooses how to get `program`: a mirror the environment names wins; root on a
/// system with apt-get uses Debian's package; everyone else downloads the release.
pub fn route(program: Program) -> Result<Route> {
    let release = release::release(program)?;
    let mirror = crate::env::download_override(&program.url_var()).is_some();
    let root = nix::unistd::geteuid().is_root();
    let apt = which::which("apt-get").is_ok();
    Ok(choose(release, mirror, root, apt))
}

/// [`route`]'s decision, from what it found.
fn choose(release: Release, mirror: bool, root: bool, apt: bool) -> Route {
    let program = release.program;
    let why = match program.debian_package() {
        _ if mirror => format!("${} is set", program.url_var()),
        Some(package) if root && apt => {
            return Route::Apt {
                package,
                why: "raywatch runs as root on a system with apt-get".into(),
            };
        }
        _ if !root => "raywatch runs without root, so it keeps its own copy in your cache".into(),
        _ if !apt => "this system has no apt-get".into(),
        _ => format!("Debian does not package {}", program.title()),
    };
    Route::Download { release, why }
}

/// One line saying what a download fetches and how big it is.
pub fn describe_download(release: &Release, bytes: Option<u64>) -> String {
    let size = match bytes {
        Some(b) => format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64),
        None => format!("about {} MiB", release.approx_mib),
    };
    let check = match &release.checksum {
        release::Checksum::Given(_) => format!("${}", release.program.sha256_var()),
        release::Checksum::List(u) | release::Checksum::Sidecar(u) => u.clone(),
    };
    format!(
        "{} ({size}) from {}\n  SHA-256 checked against {check}, unpacked into {}",
        release.name(),
        release.url,
        cache::release_dir(release)
            .map(|d| d.display().to_string())
            .unwrap_or_default()
    )
}

/// `program` on PATH (Debian names Alertmanager `prometheus-alertmanager`).
pub fn on_path(program: Program) -> Option<PathBuf> {
    which::which(program.name())
        .or_else(|_| which::which(format!("prometheus-{}", program.name())))
        .ok()
}

/// Installs Debian's package of `program` with apt-get (root only), then stops and
/// disables the system-wide service the package starts: Debian's Prometheus listens
/// on 0.0.0.0:9090 and its Alertmanager on 0.0.0.0:9093, both without a password,
/// and raywatch runs its own private one instead. Returns the binary and what was
/// done to the service, to be said.
pub fn apt_install(program: Program, package: &str) -> Result<(PathBuf, Option<String>)> {
    let status = std::process::Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get install {package} failed ({status})");
    }
    let service = stop_package_service(package);
    let name = program.name();
    let bin = on_path(program)
        .or_else(|| Some(PathBuf::from(format!("/usr/bin/{name}"))).filter(|p| p.is_file()))
        .or_else(|| {
            Some(PathBuf::from(format!("/usr/bin/prometheus-{name}"))).filter(|p| p.is_file())
        })
        .with_context(|| format!("apt-get installed {package}, but no {name} binary is on PATH"))?;
    if program == Program::Prometheus {
        let need = crate::prometheus::WEB_CONFIG_SINCE;
        match crate::prometheus::version(&bin) {
            Some(v) if v >= need => {}
            found => bail!(
                "apt-get installed Prometheus {}, older than the {}.{} raywatch needs (--web.config.file, for its password)",
                found.map_or("of unknown version".into(), |(a, b)| format!("{a}.{b}")),
                need.0,
                need.1
            ),
        }
    }
    Ok((bin, service))
}

/// Stops and disables `unit` (a Debian package's service of the same name) under
/// systemd, or with invoke-rc.d/update-rc.d; says what it did.
fn stop_package_service(unit: &str) -> Option<String> {
    let quiet = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if Path::new("/run/systemd/system").is_dir() {
        if !quiet("systemctl", &["disable", "--now", unit]) {
            return Some(format!(
                "could not stop the system service {unit} the package started (it serves every user without a password): run `systemctl disable --now {unit}`"
            ));
        }
        return Some(format!(
            "stopped and disabled the system service {unit} the package started (it served every user without a password; raywatch runs its own); `systemctl enable --now {unit}` brings it back"
        ));
    }
    let stopped = quiet("invoke-rc.d", &[unit, "stop"]);
    let disabled = quiet("update-rc.d", &[unit, "disable"]);
    (stopped || disabled).then(|| {
        format!(
            "disabled the system service {unit} the package installs (it would serve every user without a password; raywatch runs its own)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn way(program: Program, mirror: bool, root: bool, apt: bool) -> String {
        let r = release::resolve(program, "amd64", None, None).unwrap();
        match choose(r, mirror, root, apt) {
            Route::Apt { package, why } => format!("apt {package}: {why}"),
            Route::Download { why, .. } => format!("download: {why}"),
        }
    }

    #[test]
    fn root_with_apt_takes_debian_everyone_else_downloads_and_a_mirror_always_wins() {
        use Program::*;
        assert_eq!(
            way(Prometheus, false, true, true),
            "apt prometheus: raywatch runs as root on a system with apt-get"
        );
        assert_eq!(
            way(Alertmanager, false, true, true),
            "apt prometheus-alertmanager: raywatch runs as root on a system with apt-get"
        );
        assert!(way(Prometheus, false, false, true).contains("without root"));
        assert!(way(Prometheus, false, true, false).contains("no apt-get"));
        assert!(way(Grafana, false, true, true).contains("Debian does not package Grafana"));
        assert_eq!(
            way(Prometheus, true, true, true),
            "download: $RAYWATCH_PROMETHEUS_URL is set"
        );
        assert_eq!(
            way(Grafana, true, false, false),
            "download: $RAYWATCH_GRAFANA_URL is set"
        );
    }
}
