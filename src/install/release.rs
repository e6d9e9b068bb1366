//! Which release of each program raywatch downloads, from where, and how it is checked.
//!
//! Each program has a pinned official release (below) for amd64 and arm64, and two
//! variables that replace it with a site mirror: `RAYWATCH_<NAME>_URL` (the tarball)
//! and `RAYWATCH_<NAME>_SHA256` (its checksum; without it the checksum list beside the
//! tarball is read, as the official release lays it out).

use crate::error::HintExt;
use anyhow::Result;

/// A program raywatch can start and may have to fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Program {
    Prometheus,
    Alertmanager,
    Grafana,
}

/// Where the expected SHA-256 of a tarball comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// Given by the user (`RAYWATCH_<NAME>_SHA256`).
    Given(String),
    /// A `sha256sums.txt` listing every file of the release (Prometheus' layout).
    List(String),
    /// A `<tarball>.sha256` holding just the hash (Grafana's layout).
    Sidecar(String),
}

/// One downloadable release of a program for this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub program: Program,
    /// The pinned version; None for a mirror's tarball.
    pub version: Option<String>,
    pub url: String,
    pub checksum: Checksum,
    /// The cache folder's name: the tarball's file name without `.tar.gz`.
    pub dir_name: String,
    /// Roughly how big the tarball is, for the question asked before downloading.
    pub approx_mib: u64,
}

/// The official release of each program that raywatch downloads.
///
/// Prometheus 3.13 is the current long-term-support line (supported until July 2027):
/// a Ray user who walks away from a stack for months should not need a newer one, and
/// 3.x has agent mode behind `--agent`.
const PINNED: &[(Program, &str, u64)] = &[
    (Program::Prometheus, "3.13.5", 115),
    (Program::Alertmanager, "0.35.1", 35),
    (Program::Grafana, "12.3.0", 190),
];

impl Program {
    /// The program's name as its binary and its variables spell it.
    pub fn name(self) -> &'static str {
        match self {
            Program::Prometheus => "prometheus",
            Program::Alertmanager => "alertmanager",
            Program::Grafana => "grafana",
        }
    }

    /// The name for messages.
    pub fn title(self) -> &'static str {
        match self {
            Program::Prometheus => "Prometheus",
            Program::Alertmanager => "Alertmanager",
            Program::Grafana => "Grafana",
        }
    }

    /// The binary, relative to the unpacked release's folder.
    pub fn binary(self) -> &'static str {
        match self {
            Program::Prometheus => "prometheus",
            Program::Alertmanager => "alertmanager",
            Program::Grafana => "bin/grafana",
        }
    }

    /// `RAYWATCH_<NAME>_URL`.
    pub fn url_var(self) -> String {
        format!("RAYWATCH_{}_URL", self.name().to_uppercase())
    }

    /// `RAYWATCH_<NAME>_SHA256`.
    pub fn sha256_var(self) -> String {
        format!("RAYWATCH_{}_SHA256", self.name().to_uppercase())
    }

    /// The Debian package that provides it, for root on Debian or Ubuntu.
    pub fn debian_package(self) -> Option<&'static str> {
        match self {
            Program::Prometheus => Some("prometheus"),
            Program::Alertmanager => Some("prometheus-alertmanager"),
            // Debian does not package Grafana; Grafana's own apt repository is not ours to add.
            Program::Grafana => None,
        }
    }

    fn pinned(self) -> (&'static str, u64) {
        let (_, v, mib) = PINNED
            .iter()
            .find(|(p, _, _)| *p == self)
            .expect("every program is pinned");
        (v, *mib)
    }

    /// The pinned version.
    pub fn pinned_version(self) -> &'static str {
        self.pinned().0
    }
}

/// Go's name for this machine's architecture, as release file names spell it.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The release to download for this machine: the mirror the environment names, else
/// the pinned official one.
pub fn release(program: Program) -> Result<Release> {
    let url = crate::env::download_override(&program.url_var());
    let sha = crate::env::download_override(&program.sha256_var());
    resolve(program, arch(), url, sha)
}

/// [`release`] with its inputs explicit (for tests).
pub fn resolve(
    program: Program,
    arch: &str,
    url: Option<String>,
    sha256: Option<String>,
) -> Result<Release> {
    let given = sha256.map(|s| check_sha256(program, &s)).transpose()?;
    let (version, approx_mib) = program.pinned();
    let example = format!(
        "e.g. {}=https://mirror.example.org/{}/{}-{version}.linux-{arch}.tar.gz",
        program.url_var(),
        program.name(),
        program.name()
    );
    let (version, url) = match url {
        Some(u) => (None, u),
        None => {
            if !matches!(arch, "amd64" | "arm64") {
                return Err(anyhow::anyhow!(
                    "raywatch downloads {} only for amd64 and arm64, and this machine is {arch}",
                    program.title()
                ))
                .hint(format!(
                    "install it with your package manager, or set {} to a build for {arch}",
                    program.url_var()
                ));
            }
            (
                Some(version.to_string()),
                official_url(program, version, arch),
            )
        }
    };
    let parsed = reqwest::Url::parse(&url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} is {url:?}, which is not an http(s):// URL of a .tar.gz",
                program.url_var()
            )
        })
        .hint(&example)?;
    let file = tarball_name(&parsed)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{} is {url:?}, whose path does not end in a tarball's file name (letters, digits, . _ - +, ending .tar.gz)",
                program.url_var()
            )
        })
        .hint(&example)?;
    let checksum = match given {
        Some(h) => Checksum::Given(h),
        None if program == Program::Grafana => {
            let mut sidecar = parsed.clone();
            sidecar.set_path(&format!("{}.sha256", parsed.path()));
            sidecar.set_query(None);
            Checksum::Sidecar(sidecar.to_string())
        }
        None => {
            let list = parsed
                .join("sha256sums.txt")
                .expect("a file name joins onto an http(s) URL");
            Checksum::List(list.to_string())
        }
    };
    Ok(Release {
        program,
        version,
        dir_name: file.trim_end_matches(".tar.gz").to_string(),
        url,
        checksum,
        approx_mib,
    })
}

impl Release {
    /// "Prometheus 3.13.5", or just "Prometheus" for a mirror's tarball.
    pub fn name(&self) -> String {
        match &self.version {
            Some(v) => format!("{} {v}", self.program.title()),
            None => self.program.title().to_string(),
        }
    }
}

/// The last segment of `url`'s path when it is a plain `<name>.tar.gz`.
fn tarball_name(url: &reqwest::Url) -> Option<String> {
    let file = url.path_segments()?.next_back()?;
    let plain = file
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
    (plain && file.len() > ".tar.gz".len() && file.ends_with(".tar.gz") && !file.starts_with('.'))
        .then(|| file.to_string())
}

fn official_url(program: Program, v: &str, arch: &str) -> String {
    match program {
        Program::Prometheus | Program::Alertmanager => {
            let name = program.name();
            format!(
                "https://github.com/prometheus/{name}/releases/download/v{v}/{name}-{v}.linux-{arch}.tar.gz"
            )
        }
        Program::Grafana => {
            format!("https://dl.grafana.com/oss/release/grafana-{v}.linux-{arch}.tar.gz")
        }
    }
}

fn check_sha256(program: Program, s: &str) -> Result<String> {
    let h = s.trim().to_ascii_lowercase();
    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(anyhow::anyhow!(
            "{} is {s:?}, which is not a SHA-256 (64 hex digits)",
            program.sha256_var()
        ))
        .hint("copy it from the mirror's sha256sums.txt, or unset it to read that list");
    }
    Ok(h)
}

/// The hash `list` (a `sha256sums.txt`: `<hex>  <file>` per line) gives for `file`.
pub fn hash_in_list(list: &str, file: &str) -> Option<String> {
    list.lines().find_map(|line| {
        let (hash, name) = line.trim().split_once(char::is_whitespace)?;
        // `sha256sum` marks binary mode with a leading `*`.
        let name = name.trim_start().trim_start_matches('*');
        (name == file && hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| hash.to_ascii_lowercase())
    })
}

/// The hash a Grafana-style `<tarball>.sha256` holds (the first word).
pub fn hash_in_sidecar(text: &str) -> Option<String> {
    let word = text.split_whitespace().next()?;
    (word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| word.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "91dd91e13f30fe520e01175ca1027dd09a458d4421a584ba557ba88b38803f27";

    #[test]
    fn official_releases_for_both_architectures() {
        for arch in ["amd64", "arm64"] {
            let r = resolve(Program::Prometheus, arch, None, None).unwrap();
            let v = Program::Prometheus.pinned_version();
            assert_eq!(
                r.url,
                format!(
                    "https://github.com/prometheus/prometheus/releases/download/v{v}/prometheus-{v}.linux-{arch}.tar.gz"
                )
            );
            assert_eq!(
                r.checksum,
                Checksum::List(format!(
                    "https://github.com/prometheus/prometheus/releases/download/v{v}/sha256sums.txt"
                ))
            );
            assert_eq!(r.dir_name, format!("prometheus-{v}.linux-{arch}"));
            let g = resolve(Program::Grafana, arch, None, None).unwrap();
            assert_eq!(g.checksum, Checksum::Sidecar(format!("{}.sha256", g.url)));
        }
        let err = resolve(Program::Prometheus, "riscv64", None, None).unwrap_err();
        assert!(err.to_string().contains("RAYWATCH_PROMETHEUS_URL"), "{err}");
    }

    #[test]
    fn a_mirror_replaces_the_url_and_its_list_sits_beside_the_tarball() {
        let r = resolve(
            Program::Prometheus,
            "amd64",
            Some("http://127.0.0.1:8000/p/v3/prometheus-3.13.5.linux-amd64.tar.gz".into()),
            None,
        )
        .unwrap();
        assert_eq!(
            r.checksum,
            Checksum::List("http://127.0.0.1:8000/p/v3/sha256sums.txt".into())
        );
        assert_eq!(r.version, None);
        assert_eq!(r.name(), "Prometheus");
        let pinned = resolve(
            Program::Alertmanager,
            "amd64",
            Some("https://m/alertmanager-0.35.1.linux-arm64.tar.gz".into()),
            Some(H.to_uppercase()),
        )
        .unwrap();
        assert_eq!(pinned.checksum, Checksum::Given(H.into()));
        assert_eq!(pinned.dir_name, "alertmanager-0.35.1.linux-arm64");
    }

    #[test]
    fn a_signed_mirror_url_keeps_its_query_for_the_tarball_only() {
        let r = resolve(
            Program::Grafana,
            "amd64",
            Some("https://m.example/a/grafana-12.3.0.linux-amd64.tar.gz?sig=x%2Fy".into()),
            None,
        )
        .unwrap();
        assert_eq!(r.dir_name, "grafana-12.3.0.linux-amd64");
        assert_eq!(
            r.checksum,
            Checksum::Sidecar(
                "https://m.example/a/grafana-12.3.0.linux-amd64.tar.gz.sha256".into()
            )
        );
    }

    #[test]
    fn bad_mirror_settings_name_the_variable() {
        for (url, sha) in [
            (Some("ftp://m/p.tar.gz"), None),
            (Some("https://m/prometheus.zip"), None),
            (Some("https://m/../.tar.gz"), None),
            (Some("https://m/a%2f..%2fb.tar.gz"), None),
            (Some("https:///p.tar.gz"), None),
            (Some("https://m/dir/"), None),
            (None, Some("abc")),
        ] {
            let e = resolve(
                Program::Prometheus,
                "amd64",
                url.map(String::from),
                sha.map(String::from),
            )
            .unwrap_err();
            let err = format!("{e:#}");
            assert!(
                err.contains("RAYWATCH_PROMETHEUS_"),
                "{url:?} {sha:?}: {err}"
            );
            assert!(crate::error::Hint::of(&e).is_some(), "no hint: {err}");
        }
    }

    #[test]
    fn checksum_lists_are_read_strictly() {
        let list = format!(
            "{H}  prometheus-3.13.5.linux-arm64.tar.gz\n\
             {}  prometheus-3.13.5.linux-amd64.tar.gz\n\
             zzzz  prometheus-web-ui.tar.gz\n",
            "A".repeat(64)
        );
        assert_eq!(
            hash_in_list(&list, "prometheus-3.13.5.linux-arm64.tar.gz").as_deref(),
            Some(H)
        );
        assert_eq!(
            hash_in_list(&list, "prometheus-3.13.5.linux-amd64.tar.gz"),
            Some("a".repeat(64))
        );
        assert_eq!(hash_in_list(&list, "prometheus-web-ui.tar.gz"), None);
        assert_eq!(hash_in_list(&list, "prometheus-3.13.5.linux-amd6"), None);
        assert_eq!(
            hash_in_list(&format!("{H} *x.tar.gz"), "x.tar.gz").as_deref(),
            Some(H)
        );
        assert_eq!(hash_in_sidecar(&format!("{H}\n")).as_deref(), Some(H));
        assert_eq!(hash_in_sidecar("<html>not found</html>"), None);
    }
}
