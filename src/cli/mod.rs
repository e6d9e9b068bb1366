//! The command line: the `main` entry, dispatch to one module per command, and what
//! the commands share (the runtime, the home lock, calls to the daemon, logging).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::Parser;

use crate::api::{self, NotRunning};
use crate::escape;
use crate::home::Home;
use crate::status::StatusReport;

mod alerts;
mod args;
mod attach;
mod completions;
mod doctor;
mod down;
mod env;
mod error;
mod export;
mod fleet;
mod grafana;
mod history;
mod install;
mod notify;
mod open;
mod query;
mod receivers;
mod status;
mod top;
mod up;
mod user_rules;

pub use crate::error::{Hint, HintExt};
pub use args::{
    AlertsCommand, Cli, Command, CompletionShell, Global, GrafanaCommand, NotifyCommand, TopArgs,
    UpArgs,
};
pub use error::Exit;

/// Entry point: runs the command; an error is printed as `error:`, `Caused by:`
/// and `hint:` lines, and its kind becomes the exit code ([`Exit`]).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are no errors; a command line clap rejects is the user's.
            let _ = e.print();
            return if e.exit_code() == 0 {
                Exit::Success
            } else {
                Exit::Failure
            }
            .into();
        }
    };
    let exit = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli))) {
        Ok(Ok(exit)) => exit,
        Ok(Err(e)) => {
            eprint!("{}", error::render(&e));
            Exit::of(&e)
        }
        Err(_) => {
            // The panic hook has printed the message and where it happened.
            eprint!(
                "{}",
                error::render(&Hint::attach(
                    anyhow!("raywatch stopped on an internal error (the panic above)"),
                    "this is a bug in raywatch: please report it with the lines above"
                ))
            );
            Exit::Internal
        }
    };
    exit.into()
}

fn run(cli: Cli) -> Result<Exit> {
    // Resolved by the commands that use it: `completions` works
    // where $HOME is unset (packaging, containers).
    let home = || Home::resolve(cli.global.home.clone());
    match cli.command {
        Command::Up(args) => up::up(&home()?, *args),
        Command::Down { purge } => down::down(&home()?, purge),
        Command::Status { json } => status::status(&home()?, json),
        Command::Query { promql, json } => query::query(&home()?, &promql, json),
        Command::Top(args) => top::top(home, args),
        Command::Attach { path, name } => attach::attach(&home()?, path, name),
        Command::Detach { name } => attach::detach(&home()?, name),
        Command::Env {
            temp_dir,
            name,
            no_ray_auth,
        } => env::env(&home()?, temp_dir, name, !no_ray_auth),
        Command::Open { name } => open::open(&home()?, &name),
        Command::History { since, json } => history::history(&home()?, since, json),
        Command::Alerts {
            json: _,
            what: Some(AlertsCommand::Rules),
        } => alerts::rules(&home()?),
        Command::Alerts {
            json: _,
            what:
                Some(AlertsCommand::Silence {
                    name,
                    duration,
                    comment,
                }),
        } => alerts::silence(&home()?, &name, duration, comment),
        Command::Alerts { json, what: None } => alerts::alerts(&home()?, json),
        Command::Notify {
            what: NotifyCommand::Test { json, timeout },
        } => notify::test(&home()?, json, timeout),
        Command::Export {
            name,
            out,
            from,
            to,
            session,
        } => export::export(&home()?, &name, session.as_deref(), from, to, &out),
        Command::Doctor { json, roots } => doctor::doctor(&home()?, json, roots),
        Command::Grafana(GrafanaCommand::Dir) => grafana::dir(&home()?),
        Command::Completions { shell } => completions::completions(shell),
        Command::Install { program, yes } => install::install(program, yes),
        Command::FleetConfig {
            hosts,
            token_file,
            tls,
        } => fleet::fleet_config(&hosts, &token_file, tls),
        Command::Daemon { log_file } => {
            let home = home()?;
            init_logging(log_file.then(|| home.daemon_log()));
            crate::daemon::run(home)?;
            Ok(Exit::Success)
        }
    }
}

fn init_logging(file: Option<PathBuf>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(crate::env::LOG_FILTER)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
                let holder = fs_err::read_to_string(&path).unwrap_or_default();
                return Err(Hint::attach(
                    anyhow!(
                        "another raywatch command ({}) has held {} for a minute",
                        if holder.is_empty() {
                            "pid unknown".into()
                        } else {
                            format!("pid {holder}")
                        },
                        escape::path(&path)
                    ),
                    "wait for it to finish, or stop that process",
                ));
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// The daemon's status report; see [`call_daemon`].
async fn fetch_status(home: &Home) -> Result<StatusReport> {
    call_daemon(home, &api::StatusRequest).await
}

/// One request to the daemon's control API, its JSON answer decoded. A daemon
/// that does not answer is "raywatch is not running" (exit 3, with the hint to
/// start it); its refusals keep their kind ([`crate::api::Refusal`]).
async fn call_daemon<R: api::Request>(home: &Home, req: &R) -> Result<R::Response> {
    api::request(&home.socket(), req)
        .await
        .map_err(|e| stack_down(home, e))
}

/// `e`, or "raywatch is not running" when the daemon does not answer: for a
/// command that talks to Prometheus directly, whose own error (a missing
/// password file, a refused connection) would hide that the stack is down.
async fn unless_stack_down(home: &Home, e: anyhow::Error) -> anyhow::Error {
    match api::call(&home.socket(), api::Route::Status, None).await {
        Err(down) if not_running(&down) => stack_down(home, down),
        _ => e,
    }
}

/// Whether `e` says that nothing answered on the control socket.
fn not_running(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<NotRunning>())
}

/// Names the home in a "nothing answers" error and adds the hint to start
/// the stack; any other error is returned as it is.
fn stack_down(home: &Home, e: anyhow::Error) -> anyhow::Error {
    if !not_running(&e) {
        return e;
    }
    Hint::attach(
        e.context(format!(
            "raywatch is not running for {}",
            escape::path(home.root())
        )),
        "start the stack with `raywatch up`",
    )
}
