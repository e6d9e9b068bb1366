//! The command line: the `main` entry, dispatch to one module per command, and what
//! the commands share (the runtime, the home lock, the daemon's status, the error printer).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hyper::Method;

use crate::api::{self, NotRunning};
use crate::escape;
use crate::home::Home;
use crate::status::StatusReport;

mod args;
mod attach;
mod bench;
mod down;
mod env;
mod grafana;
mod open;
mod query;
mod status;
mod up;

pub use args::{BenchCommand, Cli, Command, Global, GrafanaCommand, UpArgs};

/// Entry point: runs the command and turns errors into `error:` / `Caused by:` lines.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Messages carry paths and names from outside raywatch: their control
            // characters are shown escaped, the line breaks raywatch wrote are kept.
            eprintln!("error: {}", escape::lines(&e.to_string()));
            for cause in e.chain().skip(1) {
                eprintln!("  Caused by: {}", escape::lines(&cause.to_string()));
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let home = Home::resolve(cli.global.home)?;
    match cli.command {
        Command::Up(args) => up::up(&home, args),
        Command::Down { purge } => down::down(&home, purge),
        Command::Status { json } => status::status(&home, json),
        Command::Query { promql, json } => query::query(&home, &promql, json),
        Command::Attach { path, name } => attach::attach(&home, path, name),
        Command::Detach { name } => attach::detach(&home, name),
        Command::Env { temp_dir, name } => env::env(&home, temp_dir, name),
        Command::Open { name } => open::open(&home, &name),
        Command::Grafana(GrafanaCommand::Dir) => grafana::dir(&home),
        Command::Bench(command) => bench::bench(command),
        Command::Daemon { log_file } => {
            init_logging(log_file.then(|| home.daemon_log()));
            crate::daemon::run(home)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(file: Option<PathBuf>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RAYWATCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,notify=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match file {
        Some(path) => {
            let log = crate::logfile::SharedLog::open(path);
            builder
                .with_writer(move || log.clone())
                .with_ansi(false)
                .try_init()
        }
        None => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

/// Serialises `up` and `down` on one home: a second caller waits (up to a
/// minute) and is told who holds the lock.
fn lock_home(home: &Home, what: &str) -> Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::Write as _;
    let path = home.run_dir().join("cli.lock");
    {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home.run_dir());
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", escape::path(&path)))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let _ = lock.set_len(0);
                let _ = write!(lock, "{} raywatch {what}", std::process::id());
                return Ok(lock);
            }
            Err((f, _)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(_) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "another raywatch command ({}) has held {} for a minute\n\
                     hint: wait for it to finish, or stop that process",
                    if holder.is_empty() {
                        "pid unknown".into()
                    } else {
                        format!("pid {holder}")
                    },
                    escape::path(&path)
                );
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn fetch_status(home: &Home) -> Result<StatusReport> {
    api::call_json(&home.socket(), Method::GET, "/v1/status", None::<&()>).await
}

fn not_running(e: &anyhow::Error) -> bool {
    e.downcast_ref::<NotRunning>().is_some()
}

/// Adds the hint to start the stack to a "not running" error, after the error
/// itself (the error stays the `error:` line).
fn hint_up(e: anyhow::Error) -> anyhow::Error {
    if not_running(&e) {
        anyhow::anyhow!("{e}\nhint: start the stack with `raywatch up` first")
    } else {
        e
    }
}
