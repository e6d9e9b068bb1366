//! `raywatch install PROGRAM`, and `up` when no Prometheus is found: say which way the
//! program is got and why, ask (or take `--yes`), then get it.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Result, anyhow};

use super::{Exit, Hint, runtime};
use crate::escape;
use crate::install::{Program, Release, Route};

/// `raywatch install PROGRAM [--yes]`: prints the binary's path.
pub(super) fn install(program: Program, yes: bool) -> Result<Exit> {
    let rt = runtime()?;
    if let Some(bin) = crate::install::on_path(program) {
        eprintln!("{} is on PATH; nothing to do", program.title());
        println!("{}", escape::path(&bin));
        return Ok(Exit::Success);
    }
    if let Some(bin) = crate::install::cached(program)? {
        eprintln!(
            "{} is already in raywatch's cache (remove its folder to download it again)",
            program.title()
        );
        println!("{}", escape::path(&bin));
        return Ok(Exit::Success);
    }
    let bin = obtain(
        &rt,
        program,
        yes,
        &format!("raywatch install {}", program.name()),
    )?;
    println!("{}", escape::path(&bin));
    Ok(Exit::Success)
}

/// Gets `program` the way [`crate::install::route`] chooses, with the user's consent
/// (`yes`, or a `y` at a terminal). `command` is what to run again with `--yes`.
pub(super) fn obtain(
    rt: &tokio::runtime::Runtime,
    program: Program,
    yes: bool,
    command: &str,
) -> Result<PathBuf> {
    match crate::install::route(program)? {
        Route::Apt { package, why } => {
            let what = format!("Debian's {package} package with apt-get");
            consent(program, yes, &what, &why, command)?;
            eprintln!("installing {what} ({why})");
            match crate::install::apt_install(program, package) {
                Ok((bin, service)) => {
                    if let Some(s) = service {
                        eprintln!("{s}");
                    }
                    Ok(bin)
                }
                Err(e) => {
                    eprintln!("{e:#}");
                    let release = crate::install::release::release(program)?;
                    eprintln!("downloading {} instead", release.name());
                    download(rt, &release)
                }
            }
        }
        Route::Download { release, why } => {
            // The size is asked only of a download about to be offered or made.
            let bytes = if yes || interactive() {
                rt.block_on(crate::install::size(&release))
            } else {
                None
            };
            let what = crate::install::describe_download(&release, bytes);
            consent(program, yes, &what, &why, command)?;
            eprintln!("downloading {what}\n  ({why})");
            download(rt, &release)
        }
    }
}

fn download(rt: &tokio::runtime::Runtime, release: &Release) -> Result<PathBuf> {
    let show = std::io::stderr().is_terminal();
    let bin = crate::install::fetch(rt, release, show)?;
    eprintln!(
        "{}: SHA-256 verified, installed as {}",
        release.name(),
        escape::path(&bin)
    );
    Ok(bin)
}

/// Asks at a terminal, or takes `--yes`; otherwise an error saying what would happen.
fn consent(program: Program, yes: bool, what: &str, why: &str, command: &str) -> Result<()> {
    if yes {
        return Ok(());
    }
    if interactive() {
        eprint!(
            "No {} found ({}).\nGet {what}?\n  ({why}) [y/N] ",
            program.title(),
            looked_at(program)
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        if matches!(line.trim(), "y" | "Y" | "yes") {
            return Ok(());
        }
    }
    let alternatives = if program == Program::Prometheus {
        crate::install::instructions()
    } else {
        format!("or install {} yourself", program.title())
    };
    Err(Hint::attach(
        anyhow!(
            "no {} binary found (looked at {})",
            program.title(),
            looked_at(program)
        ),
        format!("`{command} --yes` gets {what}\n  ({why})\n  {alternatives}"),
    ))
}

/// Whether a question can be asked and answered.
fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

fn looked_at(program: Program) -> String {
    match program {
        Program::Prometheus => crate::install::search_description(),
        Program::Grafana => {
            "--grafana-bin, $RAYWATCH_GRAFANA, `grafana` on $PATH, raywatch's cache".into()
        }
        Program::Alertmanager => "raywatch's cache".into(),
    }
}
