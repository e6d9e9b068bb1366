//! Downloading a release: its checksum first, then the tarball streamed into a private
//! temp file while it is hashed, unpacked only when the hash matches, and moved into
//! the cache by one rename. A failure at any step leaves nothing behind.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::HintExt;
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::cache;
use super::release::{Checksum, Release, hash_in_list, hash_in_sidecar};

/// The largest tarball raywatch downloads (Grafana's is about 200 MiB).
const MAX_TARBALL: u64 = 1 << 30;
/// The most a tarball may unpack to.
const MAX_UNPACKED: u64 = 4 << 30;
/// The most files a tarball may hold (Grafana's holds about 20 000).
const MAX_ENTRIES: usize = 200_000;
/// The largest checksum file raywatch reads (Prometheus' lists about 40 files in 4 KiB).
const MAX_CHECKSUMS: u64 = 1 << 20;
/// Leftovers of a download that was killed are removed after this long.
const STALE: Duration = Duration::from_secs(3600);

/// What to tell a user whose download failed.
fn retry_hint(release: &Release) -> String {
    format!(
        "try again; behind a proxy set HTTPS_PROXY; on an air-gapped machine set {} (and {}) to a mirror, or pass --prometheus-bin",
        release.program.url_var(),
        release.program.sha256_var()
    )
}

fn client() -> Result<reqwest::Client> {
    // Redirects (GitHub's go to its object store) may not leave https.
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let from_https = attempt.previous().iter().any(|u| u.scheme() == "https");
        if attempt.previous().len() > 5 {
            attempt.error("more than 5 redirects")
        } else if from_https && attempt.url().scheme() != "https" {
            attempt.error("a redirect from https to plain http")
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .redirect(policy)
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(stall_window())
        .user_agent(concat!("raywatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot set up an HTTP client")
}

/// The tarball's size as the server states it (a HEAD request), when it does.
pub async fn size(release: &Release) -> Option<u64> {
    let resp = client()
        .ok()?
        .head(&release.url)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?;
    resp.headers()
        .get(reqwest::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The window in which a download must make progress ([`MIN_PROGRESS`]), and the
/// longest a checksum file may take: `RAYWATCH_DOWNLOAD_STALL`, else 60 s.
fn stall_window() -> Duration {
    crate::env::download_stall().unwrap_or(Duration::from_secs(60))
}

/// A download that brings less than this in one [`stall_window`] has stalled.
const MIN_PROGRESS: u64 = 64 << 10;

/// Downloads, verifies and unpacks `release` into the cache; returns its binary.
/// The network part runs on `rt`; unpacking runs here, off the runtime.
pub fn fetch(
    rt: &tokio::runtime::Runtime,
    release: &Release,
    show_progress: bool,
) -> Result<PathBuf> {
    let cache = cache::ensure()?;
    remove_stale(&cache);
    let mut tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempfile_in(&cache)
        .with_context(|| format!("cannot create a download file in {}", cache.display()))?;
    let expected = rt.block_on(async {
        let http = client()?;
        let (expected, source) = expected_hash(&http, release).await?;
        let digest = stream(&http, release, tmp.as_file_mut(), show_progress).await?;
        if digest != expected {
            return Err(anyhow::anyhow!(
                "the download of {} has SHA-256 {digest}, but {source} gives {expected}: it was deleted, nothing was installed",
                release.url
            ))
            .hint(retry_hint(release));
        }
        Ok(expected)
    })?;
    unpack(release, tmp.path(), &cache, &expected)
}

/// The expected hash and where it came from (for messages).
async fn expected_hash(http: &reqwest::Client, release: &Release) -> Result<(String, String)> {
    let file = format!("{}.tar.gz", release.dir_name);
    let (url, found) = match &release.checksum {
        Checksum::Given(h) => return Ok((h.clone(), format!("${}", release.program.sha256_var()))),
        Checksum::List(url) => (
            url,
            hash_in_list(&get_text(http, url, release).await?, &file),
        ),
        Checksum::Sidecar(url) => {
            warn_plain_http(url, release);
            (url, hash_in_sidecar(&get_text(http, url, release).await?))
        }
    };
    let hash = found.ok_or_else(|| {
        crate::error::Hint::attach(
            anyhow::anyhow!("{url} gives no SHA-256 for {file}; nothing was downloaded"),
            format!(
                "set {} to the tarball's SHA-256, or point {} at a release that lists it",
                release.program.sha256_var(),
                release.program.url_var()
            ),
        )
    })?;
    Ok((hash, url.to_string()))
}

/// A checksum fetched over plain http guards against a broken download, not against
/// someone on the way: say so, and how to pin it.
fn warn_plain_http(url: &str, release: &Release) {
    if url.starts_with("http://") {
        eprintln!(
            "warning: the checksum comes over plain http ({url}): it catches a broken download, not a tampered one; set {} to pin it",
            release.program.sha256_var()
        );
    }
}

async fn get_text(http: &reqwest::Client, url: &str, release: &Release) -> Result<String> {
    let mut resp = http
        .get(url)
        .timeout(stall_window())
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("cannot fetch the checksums {url}"))
        .with_hint(|| retry_hint(release))?;
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("the checksums {url} broke off"))
        .with_hint(|| retry_hint(release))?
    {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > MAX_CHECKSUMS {
            return Err(anyhow::anyhow!(
                "{url} is larger than {} KiB, which no checksum list is; nothing was downloaded",
                MAX_CHECKSUMS >> 10
            ))
            .hint(format!("check {}", release.program.url_var()));
        }
    }
    String::from_utf8(body)
        .with_context(|| format!("{url} is not text, so no checksum list"))
        .with_hint(|| format!("check {}", release.program.url_var()))
}

/// Streams the tarball into `out`, hashing it; returns the hex SHA-256.
async fn stream(
    http: &reqwest::Client,
    release: &Release,
    out: &mut std::fs::File,
    show_progress: bool,
) -> Result<String> {
    let url = &release.url;
    let mut resp = http
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("cannot download {url}"))
        .with_hint(|| retry_hint(release))?;
    let total = resp.content_length();
    if let Some(t) = total.filter(|t| *t > MAX_TARBALL) {
        return Err(anyhow::anyhow!(
            "{url} is {} MiB, more than the {} MiB raywatch downloads; nothing was downloaded",
            t >> 20,
            MAX_TARBALL >> 20
        ))
        .hint(format!("check {}", release.program.url_var()));
    }
    let bar = progress_bar(total, show_progress);
    let mut hasher = Sha256::new();
    let mut got: u64 = 0;
    let (mut window_start, mut window_got) = (std::time::Instant::now(), 0u64);
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "the download of {url} broke off after {got} of {} bytes ({e}): it was deleted, nothing was installed",
                    total.map_or("?".into(), |t| t.to_string())
                ))
                .hint(retry_hint(release));
            }
        };
        got += chunk.len() as u64;
        window_got += chunk.len() as u64;
        if window_start.elapsed() >= stall_window() {
            if window_got < MIN_PROGRESS {
                return Err(anyhow::anyhow!(
                    "the download of {url} stalled: {window_got} bytes in the last {}s ({got} in all): it was deleted, nothing was installed",
                    window_start.elapsed().as_secs()
                ))
                .hint(retry_hint(release));
            }
            (window_start, window_got) = (std::time::Instant::now(), 0);
        }
        if got > MAX_TARBALL {
            return Err(anyhow::anyhow!(
                "{url} goes on past {} MiB, more than any release; it was deleted",
                MAX_TARBALL >> 20
            ))
            .hint(format!("check {}", release.program.url_var()));
        }
        hasher.update(&chunk);
        out.write_all(&chunk)
            .context("cannot write the download into the cache (is the disk full?)")?;
        bar.set_position(got);
    }
    bar.finish_and_clear();
    out.sync_all().context("cannot flush the download")?;
    Ok(hex(&hasher.finalize()))
}

fn progress_bar(total: Option<u64>, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::no_length(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "  {bytes:>10} / {total_bytes:10} {wide_bar} {bytes_per_sec} {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unpacks a verified tarball into a private staging folder, checks it is laid out
/// like the release (one top folder holding the binary), records the hash it was
/// verified against, renames it into place, and checks it there as any cached release.
fn unpack(release: &Release, tarball: &Path, cache: &Path, sha256: &str) -> Result<PathBuf> {
    let staging = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(cache)
        .with_context(|| format!("cannot create an unpack folder in {}", cache.display()))?;
    let top = extract(tarball, staging.path())
        .with_context(|| format!("cannot unpack {}: nothing was installed", release.url))?;
    let unpacked = staging.path().join(&top);
    let bin = unpacked.join(release.program.binary());
    // Every step to the binary is a real folder, and the binary a real file (a link
    // on the way could lead out of the cache).
    let mut step = unpacked.clone();
    let real_path = Path::new(release.program.binary()).iter().all(|c| {
        step.push(c);
        fs_err::symlink_metadata(&step)
            .is_ok_and(|m| if step == bin { m.is_file() } else { m.is_dir() })
    });
    if !real_path {
        return Err(anyhow::anyhow!("{} holds no {}/{}: it is not laid out like the official {} release; nothing was installed", release.url, crate::escape::text(&top.to_string_lossy()), release.program.binary(), release.program.title())).hint(format!("check {}", release.program.url_var()));
    }
    close_to_others(&unpacked)?;
    let mode = fs_err::symlink_metadata(&bin)?.permissions().mode();
    fs_err::set_permissions(&bin, std::fs::Permissions::from_mode(mode | 0o700))?;
    fs_err::write(unpacked.join(cache::VERIFIED), format!("{sha256}\n"))?;
    let dest = cache.join(&release.dir_name);
    if let Err(e) = fs_err::rename(&unpacked, &dest) {
        // Another `up` of this user may have unpacked the same release a moment ago:
        // then what is there is checked below like any cached release.
        if !dest.exists() {
            return Err(e)
                .with_context(|| format!("cannot move the unpacked release to {}", dest.display()))
                .with_hint(|| {
                    format!(
                        "check the free space and permissions of {}",
                        cache.display()
                    )
                });
        }
    }
    crate::atomic::fsync_dir(cache)?;
    cache::binary(release)?.with_context(|| format!("{} vanished after unpacking", dest.display()))
}

/// Extracts every entry under `dest`; returns the one top-level folder they share.
fn extract(tarball: &Path, dest: &Path) -> Result<std::ffi::OsString> {
    let file = fs_err::File::open(tarball)?;
    let mut archive =
        tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    archive.set_preserve_mtime(true);
    let mut top: Option<std::ffi::OsString> = None;
    let (mut total, mut count) = (0u64, 0usize);
    for entry in archive.entries()? {
        let mut entry = entry?;
        count += 1;
        total += entry.size();
        if total > MAX_UNPACKED || count > MAX_ENTRIES {
            bail!(
                "it unpacks to more than {} GiB or {MAX_ENTRIES} files",
                MAX_UNPACKED >> 30
            );
        }
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        let path = entry.path()?.into_owned();
        let shown = crate::escape::path(&path).into_owned();
        if kind.is_symlink() {
            // A link stays inside its own folder: no absolute target, no `..`.
            let target = entry.link_name()?.unwrap_or_default().into_owned();
            if !target
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
            {
                bail!(
                    "it holds the link {shown} to {}, outside its folder",
                    crate::escape::path(&target)
                );
            }
        } else if !(kind.is_file() || kind.is_dir()) {
            bail!("it holds {shown}, a {kind:?} entry, which no release does");
        }
        let Some(std::path::Component::Normal(first)) = path.components().next() else {
            bail!("it holds {shown}, outside any folder");
        };
        match &top {
            None => top = Some(first.to_owned()),
            Some(t) if t == first => {}
            Some(t) => bail!(
                "it holds {} and {shown}: a release has one top folder",
                crate::escape::text(&t.to_string_lossy())
            ),
        }
        if !entry.unpack_in(dest)? {
            bail!("it holds {shown}, which points outside its folder");
        }
    }
    let top = top.context("it is empty")?;
    if !fs_err::symlink_metadata(dest.join(&top)).is_ok_and(|m| m.is_dir()) {
        bail!(
            "its top entry {} is not a folder",
            crate::escape::text(&top.to_string_lossy())
        );
    }
    Ok(top)
}

/// Takes write permission away from group and others on everything unpacked.
fn close_to_others(dir: &Path) -> Result<()> {
    for entry in fs_err::read_dir(dir)? {
        let path = entry?.path();
        let meta = fs_err::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        if meta.is_dir() {
            close_to_others(&path)?;
        }
        let mode = meta.permissions().mode() & 0o7755;
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    let mode = fs_err::symlink_metadata(dir)?.permissions().mode() & 0o7755;
    fs_err::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o700))?;
    Ok(())
}

/// Removes what a killed download left (`.download-*`, `.unpack-*`) once it is old.
fn remove_stale(cache: &Path) {
    let Ok(entries) = fs_err::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with(".download-") || name.starts_with(".unpack-")) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE);
        if old {
            let p = entry.path();
            let _ = fs_err::remove_dir_all(&p).or_else(|_| fs_err::remove_file(&p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(dir: &Path, entries: &[(&str, &[u8], u32)]) -> PathBuf {
        let path = dir.join("t.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            fs_err::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        for (name, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        path
    }

    #[test]
    fn a_release_unpacks_with_one_top_folder_and_nothing_writable_by_others() {
        let d = tempfile::tempdir().unwrap();
        let t = tarball(
            d.path(),
            &[
                ("p-1.linux-amd64/prometheus", b"#!/bin/sh\n", 0o777),
                ("p-1.linux-amd64/LICENSE", b"text", 0o666),
            ],
        );
        let out = d.path().join("out");
        fs_err::create_dir(&out).unwrap();
        assert_eq!(extract(&t, &out).unwrap(), "p-1.linux-amd64");
        close_to_others(&out.join("p-1.linux-amd64")).unwrap();
        let mode = |p: &str| fs_err::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("p-1.linux-amd64/prometheus") & 0o022, 0);
        assert_eq!(mode("p-1.linux-amd64/LICENSE") & 0o022, 0);
    }

    #[test]
    fn archives_unlike_a_release_are_refused() {
        for entries in [
            &[("a/prometheus", &b"x"[..], 0o755), ("b/other", b"y", 0o644)][..],
            &[("prometheus", b"x", 0o755)],
            &[],
        ] {
            let d = tempfile::tempdir().unwrap();
            let t = tarball(d.path(), entries);
            let out = d.path().join("out");
            fs_err::create_dir(&out).unwrap();
            assert!(extract(&t, &out).is_err(), "{entries:?}");
        }
    }
}
