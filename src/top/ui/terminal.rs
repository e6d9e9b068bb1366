//! The terminal under `raywatch top`: taken with ratatui (raw mode, alternate screen, a panic
//! hook that puts it back), restored on every way out unless it is gone, a stop asked by
//! SIGHUP/SIGTERM, and keys read on a thread of their own.
//!
//! A terminal that goes away (a dropped SSH connection, a killed tmux session) ends `top`
//! at once, restoring and printing nothing: crossterm's reader spins on a hung-up terminal
//! instead of failing, so the screen's loop polls [`terminal_gone`] rather than wait on keys.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;

use anyhow::Result;
use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self, Event};

/// Whether the terminal on stdin or stdout has hung up or failed (its pty closed:
/// the SSH connection dropped, the tmux session killed): then there is nothing
/// to draw on, read from or restore.
pub fn terminal_gone() -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let (stdin, stdout) = (io::stdin(), io::stdout());
    let mut fds = [
        PollFd::new(stdin.as_fd(), PollFlags::empty()),
        PollFd::new(stdout.as_fd(), PollFlags::empty()),
    ];
    if poll(&mut fds, PollTimeout::ZERO).is_err() {
        return false;
    }
    let bad = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
    fds.iter()
        .any(|fd| fd.revents().is_some_and(|r| r.intersects(bad)))
}

/// A flag SIGTERM and SIGHUP set (instead of ending the process), for the loop to stop.
pub(super) fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    Ok(stop)
}

/// The full screen: ratatui's terminal, and the terminal put back when dropped.
pub(super) struct Screen {
    // Dropped first: ratatui shows the cursor again, then `Restore` leaves the screen.
    terminal: DefaultTerminal,
    _restore: Restore,
}

impl Screen {
    /// Raw mode, the alternate screen (cleared), the cursor hidden; ratatui's panic
    /// hook puts the terminal back before a panic's message.
    pub(super) fn enter() -> Result<Screen> {
        let restore = Restore;
        let mut terminal = ratatui::try_init()?;
        terminal.hide_cursor()?;
        terminal.clear()?;
        Ok(Screen {
            terminal,
            _restore: restore,
        })
    }

    pub(super) fn terminal(&mut self) -> &mut DefaultTerminal {
        &mut self.terminal
    }

    /// Puts the terminal back and returns `outcome`; on a terminal that is gone,
    /// touches nothing and reports nothing (there is nobody to tell).
    pub(super) fn leave(self, outcome: Result<()>) -> Result<()> {
        let Screen { terminal, _restore } = self;
        if terminal_gone() {
            // ratatui's drop would write to the dead terminal and report the failure on it.
            std::mem::forget(terminal);
            return Ok(());
        }
        drop(terminal);
        outcome
    }
}

/// Puts the terminal back when dropped (also while a panic unwinds): cooked mode, the
/// normal screen, the cursor shown; nothing when the terminal is gone.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        if terminal_gone() {
            return;
        }
        let _ = ratatui::try_restore();
        let _ = ratatui::crossterm::execute!(io::stdout(), ratatui::crossterm::cursor::Show);
    }
}

/// The terminal's events, read on a thread of their own: on a terminal that hung up,
/// crossterm's reader loops forever instead of failing, and the loop must still see it.
pub(super) fn read_events() -> io::Result<mpsc::Receiver<io::Result<Event>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("top-keys".into())
        .spawn(move || {
            loop {
                let ev = event::read();
                let failed = ev.is_err();
                if tx.send(ev).is_err() || failed {
                    return;
                }
            }
        })?;
    Ok(rx)
}
