//! `raywatch completions`: the shell completion script for bash, zsh or fish (clap_complete), on stdout.

use anyhow::Result;
use clap::CommandFactory;
use clap_complete::Shell;

use super::Exit;
use super::args::{Cli, CompletionShell};

pub(super) fn completions(shell: CompletionShell) -> Result<Exit> {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "raywatch", &mut script);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &script)?;
    Ok(Exit::Success)
}
