//! The screen's loop of `raywatch top`: draw when something changed (and twice a second for
//! the age shown), ask a refresh every interval, apply keys and replies, until `q`, a signal
//! or a terminal that is gone.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;
use ratatui::DefaultTerminal;
use ratatui::crossterm::event::Event;

use super::fetch::{self, Fetcher, Reply, Request};
use super::terminal::{self, Screen, terminal_gone};
use super::{Action, App, View, colour_wanted};
use crate::home::Home;
use crate::prometheus::Counted;
use crate::top::{Clusters, Source};

/// Runs the full-screen UI until `q` (or a signal). `first` is the first refresh,
/// taken before the screen changed (so a stack that is down is a plain error).
pub fn run(
    api: Counted,
    source: Source,
    home: Option<Home>,
    first: Clusters,
    interval: Duration,
    dead_for: Duration,
) -> Result<()> {
    one_malloc_arena();
    let from = match source {
        Source::Recorded => format!("{}, recorded values", api.api.describe()),
        Source::Live => api.api.describe(),
    };
    let mut app = App::new(from, colour_wanted(), interval, dead_for);
    app.set_clusters(first);
    let fetcher = fetch::spawn(api, source, home, dead_for)?;
    let stop = terminal::stop_on_signals()?;
    let mut screen = Screen::enter()?;
    let events = terminal::read_events()?;
    let now = Instant::now();
    let mut state = Loop {
        app,
        fetcher,
        events,
        interval,
        refreshed: now,
        next: now + interval,
        in_flight: false,
        dirty: true,
        last_drawn: now,
    };
    let outcome = state.run(screen.terminal(), &stop);
    screen.leave(outcome)
}

/// One malloc arena for both threads: a refresh is decoded on the fetching thread
/// and freed on this one, and with an arena each the two peaks add up.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter (glibc takes its own lock).
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

/// The loop's state.
struct Loop {
    app: App,
    fetcher: Fetcher,
    events: mpsc::Receiver<io::Result<Event>>,
    interval: Duration,
    /// When the last refresh arrived.
    refreshed: Instant,
    /// When the next refresh is due (none is asked while one is in flight).
    next: Instant,
    in_flight: bool,
    /// Something changed since the last frame.
    dirty: bool,
    last_drawn: Instant,
}

impl Loop {
    fn run(&mut self, terminal: &mut DefaultTerminal, stop: &AtomicBool) -> Result<()> {
        while !stop.load(Ordering::Relaxed) && !terminal_gone() {
            if self.dirty || self.last_drawn.elapsed() >= Duration::from_millis(500) {
                let (app, refreshed) = (&self.app, self.refreshed);
                terminal.draw(|f| app.render(f, Some(refreshed.elapsed())))?;
                self.last_drawn = Instant::now();
                self.dirty = false;
            }
            if !self.in_flight && Instant::now() >= self.next {
                self.refresh()?;
            }
            match self.next_event()? {
                Some(Event::Key(k)) => {
                    self.dirty = true;
                    match self.app.on_key(k) {
                        Action::Quit => break,
                        Action::Refresh => self.refresh()?,
                        Action::None => {}
                    }
                }
                Some(Event::Resize(..)) => {
                    terminal.autoresize()?;
                    self.dirty = true;
                }
                _ => {}
            }
            while let Ok(reply) = self.fetcher.replies.try_recv() {
                self.dirty = true;
                self.on_reply(reply);
            }
        }
        Ok(())
    }

    /// Asks the fetching thread for what the view shows.
    fn refresh(&mut self) -> Result<()> {
        self.fetcher.requests.send(Request::for_view(&self.app))?;
        self.in_flight = true;
        Ok(())
    }

    /// The next event of the terminal, waiting a tenth of a second at most.
    fn next_event(&self) -> Result<Option<Event>> {
        match self.events.recv_timeout(Duration::from_millis(100)) {
            Ok(Ok(event)) => Ok(Some(event)),
            Ok(Err(e)) => Err(e.into()),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(anyhow::anyhow!("the terminal's input ended"))
            }
        }
    }

    fn on_reply(&mut self, reply: Reply) {
        match reply {
            Reply::Clusters(c) => {
                match c {
                    Ok(c) => {
                        self.app.set_clusters(c);
                        self.refreshed = Instant::now();
                    }
                    Err(e) => self.app.error = Some(format!("refresh failed: {e:#}")),
                }
                // In the cluster view, the refresh ends with its detail.
                if self.app.view == View::Clusters {
                    self.settled();
                }
            }
            Reply::Cluster(key, d) => {
                self.settled();
                match d {
                    Ok(d) => self.app.detail = Some((key, d)),
                    Err(e) => self.app.error = Some(format!("refresh failed: {e:#}")),
                }
            }
        }
    }

    /// A refresh arrived: the next is due an interval from now.
    fn settled(&mut self) {
        self.in_flight = false;
        self.next = Instant::now() + self.interval;
    }
}
