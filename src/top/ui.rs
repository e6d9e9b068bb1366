//! The terminal screen of `raywatch top`: the clusters view, one cluster's view, help, keys,
//! and a terminal that is restored on every way out (quit, error, signal, panic).
//!
//! A terminal that goes away (a dropped SSH connection, a killed tmux session) ends
//! `top` at once, restoring and printing nothing: keys are read on a thread of their
//! own (crossterm's reader spins on a hung-up terminal instead of failing), and the
//! screen's loop watches the terminal for a hangup and SIGHUP/SIGTERM for a stop.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;
use ratatui::Frame;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState};

use super::model::{self, Cluster, Column, Key};
use super::{Clusters, Detail};
use crate::escape;

/// Chart windows of the cluster view (`[` / `]`).
pub const WINDOWS: [Duration; 2] = [Duration::from_secs(15 * 60), Duration::from_secs(60 * 60)];

/// Which screen is shown.
#[derive(Debug, Clone, PartialEq)]
pub enum View {
    Clusters,
    Cluster(Key),
}

/// What a key asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// Fetch again now (the view or what it needs changed).
    Refresh,
}

/// Everything the screen shows, and the keys' state.
pub struct App {
    pub view: View,
    pub clusters: Vec<Cluster>,
    pub detail: Option<(Key, Detail)>,
    pub sort: Column,
    pub reverse: bool,
    pub filter: String,
    /// Typing a filter (after `/`).
    pub editing: bool,
    pub selected: Option<Key>,
    pub show_all: bool,
    pub help: bool,
    pub window: usize,
    pub error: Option<String>,
    pub source: String,
    pub color: bool,
    pub queries: u64,
    pub took: Duration,
    pub interval: Duration,
    pub dead_for: Duration,
    /// The first row shown of the clusters view (kept between frames, like a scroll position).
    offset: std::cell::Cell<usize>,
}

impl App {
    pub fn new(source: String, color: bool, interval: Duration, dead_for: Duration) -> App {
        App {
            view: View::Clusters,
            clusters: Vec::new(),
            detail: None,
            sort: Column::Name,
            reverse: false,
            filter: String::new(),
            editing: false,
            selected: None,
            show_all: false,
            help: false,
            window: 0,
            error: None,
            source,
            color,
            queries: 0,
            took: Duration::ZERO,
            interval,
            dead_for,
            offset: std::cell::Cell::new(0),
        }
    }

    pub fn set_clusters(&mut self, c: Clusters) {
        self.clusters = c.clusters;
        self.queries = c.queries;
        self.took = c.took;
        self.error = None;
    }

    /// The rows of the clusters view: filtered, sorted.
    pub fn visible(&self) -> Vec<&Cluster> {
        let mut v: Vec<&Cluster> = self
            .clusters
            .iter()
            .filter(|c| model::matches(c, &self.filter))
            .collect();
        v.sort_by(|a, b| model::order(self.sort, self.reverse, a, b));
        v
    }

    fn selected_index(&self, rows: &[&Cluster]) -> Option<usize> {
        if rows.is_empty() {
            return None;
        }
        let found = self.selected.as_ref().and_then(|(h, n, u)| {
            rows.iter()
                .position(|c| c.key_ref() == (h.as_str(), n.as_str(), u.as_str()))
        });
        Some(found.unwrap_or(0))
    }

    fn move_selection(&mut self, by: isize) {
        let rows = self.visible();
        let Some(i) = self.selected_index(&rows) else {
            return;
        };
        let j = (i as isize + by).clamp(0, rows.len() as isize - 1) as usize;
        self.selected = Some(rows[j].key());
    }

    /// Applies one key.
    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if self.editing {
            match key.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !c.is_control() => self.filter.push(c),
                _ => {}
            }
            return Action::None;
        }
        if self.help {
            self.help = false;
            return if key.code == KeyCode::Char('q') {
                Action::Quit
            } else {
                Action::None
            };
        }
        match (&self.view, key.code) {
            (_, KeyCode::Char('q')) => return Action::Quit,
            (_, KeyCode::Char('?')) => self.help = true,
            (_, KeyCode::Char('r')) => return Action::Refresh,
            (View::Clusters, KeyCode::Up | KeyCode::Char('k')) => self.move_selection(-1),
            (View::Clusters, KeyCode::Down | KeyCode::Char('j')) => self.move_selection(1),
            (View::Clusters, KeyCode::PageUp) => self.move_selection(-10),
            (View::Clusters, KeyCode::PageDown) => self.move_selection(10),
            (View::Clusters, KeyCode::Home | KeyCode::Char('g')) => {
                self.move_selection(-(self.clusters.len() as isize))
            }
            (View::Clusters, KeyCode::End | KeyCode::Char('G')) => {
                self.move_selection(self.clusters.len() as isize)
            }
            (View::Clusters, KeyCode::Char('/')) => {
                self.editing = true;
                self.filter.clear();
            }
            (View::Clusters, KeyCode::Esc) => self.filter.clear(),
            (View::Clusters, KeyCode::Char('s')) => {
                let i = Column::ALL
                    .iter()
                    .position(|c| *c == self.sort)
                    .unwrap_or(0);
                self.sort = Column::ALL[(i + 1) % Column::ALL.len()];
            }
            (View::Clusters, KeyCode::Char('S')) => self.reverse = !self.reverse,
            (View::Clusters, KeyCode::Char('h')) => {
                self.show_all = !self.show_all;
                return Action::Refresh;
            }
            (View::Clusters, KeyCode::Enter) => {
                let rows = self.visible();
                if let Some(i) = self.selected_index(&rows) {
                    let key = rows[i].key();
                    self.selected = Some(key.clone());
                    self.view = View::Cluster(key);
                    self.detail = None;
                    return Action::Refresh;
                }
            }
            (View::Cluster(_), KeyCode::Esc | KeyCode::Backspace | KeyCode::Left) => {
                self.view = View::Clusters;
                self.detail = None;
            }
            (View::Cluster(_), KeyCode::Char('[')) if self.window > 0 => {
                self.window -= 1;
                return Action::Refresh;
            }
            (View::Cluster(_), KeyCode::Char(']')) if self.window + 1 < WINDOWS.len() => {
                self.window += 1;
                return Action::Refresh;
            }
            _ => {}
        }
        Action::None
    }

    fn style(&self, color: Color) -> Style {
        if self.color {
            Style::default().fg(color)
        } else {
            Style::default().add_modifier(Modifier::BOLD)
        }
    }

    fn dim(&self) -> Style {
        if self.color {
            Style::default().fg(Color::DarkGray)
        } else {
            Style::default().add_modifier(Modifier::DIM)
        }
    }

    /// Draws the screen; `refreshed` is the age of the last refresh.
    pub fn render(&self, f: &mut Frame, refreshed: Option<Duration>) {
        let [top, body, foot] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(f.area());
        self.render_header(f, top, refreshed);
        match &self.view {
            View::Clusters => self.render_clusters(f, body),
            View::Cluster(key) => self.render_cluster(f, body, key),
        }
        let keys = match (&self.view, self.editing) {
            (_, true) => "type to filter  Enter keep  Esc clear".to_string(),
            (View::Clusters, _) => "q quit  ↑↓ move  Enter open  / filter  s sort  S reverse  h dead  r refresh  ? help".to_string(),
            (View::Cluster(_), _) => "q quit  Esc back  [ ] chart window  r refresh  ? help".to_string(),
        };
        f.render_widget(
            Paragraph::new(keys).style(Style::default().add_modifier(Modifier::REVERSED)),
            foot,
        );
        if self.help {
            self.render_help(f);
        }
    }

    fn render_header(&self, f: &mut Frame, area: Rect, refreshed: Option<Duration>) {
        let live = self.clusters.iter().filter(|c| c.is_live()).count();
        let age = refreshed.map_or("never".to_string(), |d| {
            format!("{:.1}s ago", d.as_secs_f64())
        });
        let mut spans = vec![
            Span::styled(
                "raywatch top",
                Style::default().add_modifier(Modifier::BOLD),
            ),
            Span::raw(format!(
                "  {}  {} clusters ({live} live)  refreshed {age} every {}s ({} queries, {} ms)",
                escape::text(&self.source),
                self.clusters.len(),
                self.interval.as_secs_f64(),
                self.queries,
                self.took.as_millis()
            )),
        ];
        if self.show_all {
            spans.push(Span::raw("  [all remembered]"));
        }
        let mut second = vec![Span::raw(format!(
            "sort: {} {}",
            self.sort.title(),
            if self.reverse { "▲" } else { "▼" }
        ))];
        if !self.filter.is_empty() || self.editing {
            second.push(Span::raw(format!(
                "  filter: {}{}",
                escape::text(&self.filter),
                if self.editing { "▏" } else { "" }
            )));
        }
        if let Some(e) = &self.error {
            second.push(Span::styled(
                format!("  {}", escape::text(e)),
                self.style(Color::Red),
            ));
        }
        f.render_widget(
            Paragraph::new(vec![Line::from(spans), Line::from(second)]),
            area,
        );
    }

    fn render_clusters(&self, f: &mut Frame, area: Rect) {
        let all = self.visible();
        // Only the rows that fit are built (a thousand clusters cost a screenful).
        let height = area.height.saturating_sub(1).max(1) as usize;
        let selected = self.selected_index(&all);
        let mut offset = self.offset.get().min(all.len().saturating_sub(1));
        if let Some(i) = selected {
            if i < offset {
                offset = i;
            } else if i >= offset + height {
                offset = i + 1 - height;
            }
        }
        self.offset.set(offset);
        let rows = &all[offset.min(all.len())..(offset + height).min(all.len())];
        let mut titles: Vec<String> = Column::ALL
            .iter()
            .map(|c| {
                if *c == self.sort {
                    format!("{}{}", c.title(), if self.reverse { "▲" } else { "▼" })
                } else {
                    c.title().to_string()
                }
            })
            .collect();
        titles.push("CPU/GPU 15m".into());
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|c| {
                let mut r = model::cells(c);
                r.push(model::spark(&c.spark));
                r
            })
            .collect();
        let widths: Vec<Constraint> = (0..titles.len())
            .map(|i| {
                let w = cells
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([titles[i].chars().count()])
                    .max()
                    .unwrap_or(4)
                    .min(if i == 0 { 32 } else { 31 });
                Constraint::Length(w as u16)
            })
            .collect();
        let table_rows: Vec<Row> = rows
            .iter()
            .zip(cells)
            .map(|(c, r)| {
                let row_style = if c.is_live() {
                    Style::default()
                } else {
                    self.dim()
                };
                let cells: Vec<Cell> = r
                    .into_iter()
                    .enumerate()
                    .map(|(i, text)| {
                        let col = Column::ALL.get(i).copied();
                        let trouble = c.is_live()
                            && match col {
                                Some(Column::Down) => c.targets_down.unwrap_or(0) > 0,
                                Some(Column::Tasks) => c.pending_growing(),
                                Some(Column::Store) => c.store_full(),
                                _ => false,
                            };
                        let cell = Cell::from(text);
                        if trouble {
                            cell.style(self.style(Color::Red))
                        } else {
                            cell
                        }
                    })
                    .collect();
                Row::new(cells).style(row_style)
            })
            .collect();
        let header = Row::new(titles).style(Style::default().add_modifier(Modifier::BOLD));
        let table = Table::new(table_rows, widths)
            .header(header)
            .column_spacing(1)
            .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
        let mut state = TableState::default().with_selected(selected.map(|i| i - offset));
        f.render_stateful_widget(table, area, &mut state);
        if all.is_empty() {
            let msg = if self.clusters.is_empty() {
                "no Ray cluster yet: start one (see `raywatch env`)"
            } else {
                "no cluster matches the filter (Esc clears it)"
            };
            let [_, line, _] = Layout::vertical([
                Constraint::Length(2),
                Constraint::Length(1),
                Constraint::Min(0),
            ])
            .areas(area);
            f.render_widget(Paragraph::new(msg), line);
        }
    }

    fn render_cluster(&self, f: &mut Frame, area: Rect, key: &Key) {
        let cluster = self.clusters.iter().find(|c| &c.key() == key);
        let [info, nodes, charts, link] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Min(3),
            Constraint::Length(6),
            Constraint::Length(1),
        ])
        .areas(area);
        let (host, name, user) = key;
        let mut head = vec![Span::styled(
            format!(
                "{}{}",
                escape::text(name),
                if host.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", escape::text(host))
                }
            ),
            Style::default().add_modifier(Modifier::BOLD),
        )];
        head.push(Span::raw(format!("  user {}", escape::text(user))));
        if let Some(c) = cluster {
            let cells = model::cells(c);
            let pick =
                |col: Column| cells[Column::ALL.iter().position(|x| *x == col).unwrap()].clone();
            head.push(Span::raw(format!(
                "  {}  age {}  nodes {}  tasks run/pend {}  failed 5m {}  targets down {}",
                pick(Column::State),
                pick(Column::Age),
                pick(Column::Nodes),
                pick(Column::Tasks),
                pick(Column::Failed),
                pick(Column::Down)
            )));
        } else {
            head.push(Span::styled("  (no longer listed)", self.dim()));
        }
        f.render_widget(Paragraph::new(Line::from(head)), info);
        let detail = self
            .detail
            .as_ref()
            .filter(|(k, _)| k == key)
            .map(|(_, d)| d);
        let Some(detail) = detail else {
            f.render_widget(Paragraph::new("loading…"), nodes);
            return;
        };
        let header = Row::new([
            "INSTANCE",
            "TYPE",
            "CPU%",
            "CPUS",
            "MEM",
            "GPU (util% mem)",
            "OBJSTORE",
            "DISK",
        ])
        .style(Style::default().add_modifier(Modifier::BOLD));
        let rows: Vec<Row> = detail
            .nodes
            .iter()
            .map(|n| {
                let gpus = if n.gpus.is_empty() {
                    model::DASH.to_string()
                } else {
                    n.gpus
                        .iter()
                        .map(|g| {
                            format!(
                                "{}:{}% {}",
                                escape::text(&g.index),
                                model::percent(g.util_percent),
                                model::used_of(g.mem_used_bytes, g.mem_total_bytes)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                Row::new([
                    escape::text(if n.instance.is_empty() {
                        &n.ip
                    } else {
                        &n.instance
                    })
                    .into_owned(),
                    n.kind
                        .as_deref()
                        .map_or(model::DASH.into(), |k| escape::text(k).into_owned()),
                    model::percent(n.cpu_percent),
                    n.cpus.map_or(model::DASH.into(), |c| format!("{c:.0}")),
                    model::used_of(n.mem_used_bytes, n.mem_total_bytes),
                    gpus,
                    model::used_of(n.object_store_used_bytes, n.object_store_total_bytes),
                    model::used_of(n.disk_used_bytes, n.disk_total_bytes),
                ])
            })
            .collect();
        let widths = [
            Constraint::Length(22),
            Constraint::Length(7),
            Constraint::Length(5),
            Constraint::Length(5),
            Constraint::Length(13),
            Constraint::Min(16),
            Constraint::Length(13),
            Constraint::Length(13),
        ];
        f.render_widget(Table::new(rows, widths).header(header), nodes);
        let window = format!("{}m", detail.window.as_secs() / 60);
        let parts = Layout::horizontal([Constraint::Ratio(1, 4); 4]).split(charts);
        for (i, (title, series, colour)) in [
            ("CPU %", "cpu", Color::Green),
            ("GPU %", "gpu", Color::Magenta),
            ("memory %", "mem", Color::Blue),
            ("tasks running", "running", Color::Cyan),
        ]
        .into_iter()
        .enumerate()
        {
            let points = detail.charts.get(series).cloned().unwrap_or_default();
            let last = points.iter().rev().flatten().next().copied();
            let mut label = format!(
                "{title} {window} now {}",
                last.map_or(model::DASH.to_string(), |v| format!("{v:.0}"))
            );
            if series == "running" {
                let pending = detail
                    .charts
                    .get("pending")
                    .and_then(|p| p.iter().rev().flatten().next().copied());
                label = format!(
                    "tasks {window} run {} pend {}",
                    last.map_or(model::DASH.to_string(), |v| format!("{v:.0}")),
                    pending.map_or(model::DASH.to_string(), |v| format!("{v:.0}"))
                );
            }
            let data: Vec<Option<u64>> = points
                .iter()
                .map(|p| p.map(|v| v.max(0.0).round() as u64))
                .collect();
            let max = if series == "running" {
                data.iter().flatten().copied().max().unwrap_or(1).max(1)
            } else {
                100
            };
            let spark = Sparkline::default()
                .block(Block::bordered().title(label))
                .data(&data)
                .max(max)
                .style(self.style(colour));
            f.render_widget(spark, parts[i]);
        }
        let url = match &detail.grafana_url {
            Some(u) => format!("Grafana: {}", escape::text(u)),
            None => "Grafana: not running for this stack (raywatch grafana dir)".to_string(),
        };
        f.render_widget(Paragraph::new(url), link);
    }

    fn render_help(&self, f: &mut Frame) {
        let text = [
            "raywatch top — keys",
            "",
            "clusters view",
            "  ↑/k ↓/j PgUp PgDn g G   move",
            "  Enter                   open the cluster (nodes, charts)",
            "  /                       filter by name, user or host (Enter keeps, Esc clears)",
            "  s                       sort by the next column",
            "  S                       reverse the sort",
            "  h                       show every remembered cluster (last 24 h), not only",
            "                          the live ones and those dead for under 10 minutes",
            "  r                       refresh now",
            "cluster view",
            "  Esc                     back to the clusters",
            "  [ ]                     chart window 15 / 60 minutes",
            "",
            "  q  quit     ?  this help (any key closes it)",
            "",
            "red: targets down, pending tasks growing, object store over 80 %",
            "grey: a dead cluster",
            "–: no such series in Prometheus (never shown as 0)",
        ];
        let area = f.area();
        let w = 86.min(area.width);
        let h = (text.len() as u16 + 2).min(area.height);
        let r = Rect::new(
            area.x + (area.width - w) / 2,
            area.y + (area.height - h) / 2,
            w,
            h,
        );
        f.render_widget(Clear, r);
        f.render_widget(
            Paragraph::new(text.join("\n")).block(Block::bordered().title("help")),
            r,
        );
    }
}

/// Whether colours are wanted: not when `NO_COLOR` is set to anything non-empty.
pub fn colour_wanted() -> bool {
    crate::env::no_color().is_none()
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Whether the terminal on stdin or stdout has hung up or failed (its pty closed:
/// the SSH connection dropped, the tmux session killed): then there is nothing
/// to draw on, read from or restore.
pub fn terminal_gone() -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let (stdin, stdout) = (std::io::stdin(), std::io::stdout());
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

/// Puts the terminal back: normal screen, cooked mode, cursor shown; nothing
/// when the terminal is gone.
pub fn restore_terminal() {
    if terminal_gone() {
        return;
    }
    let _ = ratatui::crossterm::terminal::disable_raw_mode();
    let mut out = std::io::stdout();
    let _ = ratatui::crossterm::execute!(
        out,
        ratatui::crossterm::terminal::LeaveAlternateScreen,
        ratatui::crossterm::cursor::Show
    );
    let _ = out.flush();
}

/// Restores the terminal when dropped (also while a panic unwinds).
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// A request to the fetching thread.
enum Request {
    Clusters { show_all: bool },
    Cluster { key: Key, window: Duration },
}

enum Reply {
    Clusters(Result<Clusters>),
    Cluster(Key, Result<Detail>),
}

/// Runs the full-screen UI until `q` (or a signal). `first` is the first refresh,
/// taken before the screen changed (so a stack that is down is a plain error).
pub fn run(
    api: crate::prometheus::Counted,
    source: super::Source,
    home: Option<crate::home::Home>,
    first: Clusters,
    interval: Duration,
    dead_for: Duration,
) -> Result<()> {
    // One malloc arena for both threads: a refresh is decoded on the fetching thread
    // and freed on this one, and with an arena each the two peaks add up.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter (glibc takes its own lock).
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
    let from = match source {
        super::Source::Recorded => format!("{}, recorded values", api.api.describe()),
        super::Source::Live => api.api.describe(),
    };
    let mut app = App::new(from, colour_wanted(), interval, dead_for);
    app.set_clusters(first);
    let (req_tx, req_rx) = mpsc::channel::<Request>();
    let (rep_tx, rep_rx) = mpsc::channel::<Reply>();
    std::thread::Builder::new()
        .name("top-fetch".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            while let Ok(mut req) = req_rx.recv() {
                // Only the newest request matters.
                while let Ok(newer) = req_rx.try_recv() {
                    req = newer;
                }
                let reply = match req {
                    Request::Clusters { show_all } => Reply::Clusters(
                        rt.block_on(super::fetch_clusters(&api, source, dead_for, show_all)),
                    ),
                    Request::Cluster { key, window } => {
                        let c = rt.block_on(super::fetch_clusters(&api, source, dead_for, false));
                        let d =
                            rt.block_on(super::fetch_cluster(&api, &key, window, home.as_ref()));
                        let _ = rep_tx.send(Reply::Clusters(c));
                        Reply::Cluster(key, d)
                    }
                };
                if rep_tx.send(reply).is_err() {
                    return;
                }
            }
        })?;

    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_signal),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            let _ = nix::sys::signal::sigaction(sig, &action);
        }
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));

    ratatui::crossterm::terminal::enable_raw_mode()?;
    let _guard = Guard;
    ratatui::crossterm::execute!(
        std::io::stdout(),
        ratatui::crossterm::terminal::EnterAlternateScreen,
        ratatui::crossterm::cursor::Hide
    )?;
    let mut terminal =
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
    terminal.clear()?;

    let mut refreshed = Instant::now();
    let mut next = Instant::now() + interval;
    let mut in_flight = false;
    let request = |app: &App| match &app.view {
        View::Clusters => Request::Clusters {
            show_all: app.show_all,
        },
        View::Cluster(key) => Request::Cluster {
            key: key.clone(),
            window: WINDOWS[app.window],
        },
    };
    // Keys on a thread of their own: on a terminal that hung up, crossterm's
    // reader loops forever instead of failing, and this loop must still see it.
    let (key_tx, key_rx) = mpsc::channel::<std::io::Result<Event>>();
    std::thread::Builder::new()
        .name("top-keys".into())
        .spawn(move || {
            loop {
                let ev = event::read();
                let failed = ev.is_err();
                if key_tx.send(ev).is_err() || failed {
                    return;
                }
            }
        })?;
    let mut dirty = true;
    let mut last_drawn = Instant::now();
    let outcome: Result<()> = 'screen: {
        while !STOP.load(Ordering::Relaxed) && !terminal_gone() {
            if dirty || last_drawn.elapsed() >= Duration::from_millis(500) {
                if let Err(e) = terminal.draw(|f| app.render(f, Some(refreshed.elapsed()))) {
                    break 'screen Err(e.into());
                }
                last_drawn = Instant::now();
                dirty = false;
            }
            if !in_flight && Instant::now() >= next {
                req_tx.send(request(&app))?;
                in_flight = true;
            }
            let event = match key_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(event)) => Some(event),
                Ok(Err(e)) => break 'screen Err(e.into()),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break 'screen Err(anyhow::anyhow!("the terminal's input ended"));
                }
            };
            if let Some(event) = event {
                match event {
                    Event::Key(k) => {
                        dirty = true;
                        match app.on_key(k) {
                            Action::Quit => break,
                            Action::Refresh => {
                                req_tx.send(request(&app))?;
                                in_flight = true;
                            }
                            Action::None => {}
                        }
                    }
                    Event::Resize(..) => {
                        if let Err(e) = terminal.autoresize() {
                            break 'screen Err(e.into());
                        }
                        dirty = true;
                    }
                    _ => {}
                }
            }
            while let Ok(reply) = rep_rx.try_recv() {
                dirty = true;
                match reply {
                    Reply::Clusters(Ok(c)) => {
                        app.set_clusters(c);
                        refreshed = Instant::now();
                        if app.view == View::Clusters {
                            in_flight = false;
                            next = Instant::now() + interval;
                        }
                    }
                    Reply::Clusters(Err(e)) => {
                        app.error = Some(format!("refresh failed: {e:#}"));
                        if app.view == View::Clusters {
                            in_flight = false;
                            next = Instant::now() + interval;
                        }
                    }
                    Reply::Cluster(key, d) => {
                        in_flight = false;
                        next = Instant::now() + interval;
                        match d {
                            Ok(d) => app.detail = Some((key, d)),
                            Err(e) => app.error = Some(format!("refresh failed: {e:#}")),
                        }
                    }
                }
            }
        }
        Ok(())
    };
    if terminal_gone() {
        // Nothing to restore, and nobody to tell: ratatui's drop would write to
        // the dead terminal and report the failure on it.
        std::mem::forget(terminal);
        return Ok(());
    }
    drop(terminal);
    outcome
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::top::model::State;

    /// A fixed data set: a busy cluster in trouble, a calm one, a dead one, a GPU one elsewhere.
    fn data() -> Vec<Cluster> {
        let gib = 1024.0 * 1024.0 * 1024.0;
        vec![
            Cluster {
                name: "alice-ray_train".into(),
                user: "alice".into(),
                state: Some(State::Live),
                age_seconds: Some(7380.0),
                nodes_up: Some(2),
                nodes_total: Some(3),
                cpu_percent: Some(87.4),
                mem_used_bytes: Some(12.0 * gib),
                mem_total_bytes: Some(64.0 * gib),
                object_store_used_bytes: Some(9.0 * gib),
                object_store_total_bytes: Some(10.0 * gib),
                tasks_running: Some(8),
                tasks_pending: Some(40),
                tasks_pending_before: Some(12),
                tasks_finished: Some(1200),
                tasks_failed_5m: Some(3),
                targets: Some(5),
                targets_down: Some(1),
                samples_per_scrape: Some(2410.0),
                spark_kind: Some("cpu".into()),
                spark: vec![Some(10.0), Some(50.0), None, Some(90.0), Some(100.0)],
                ..Default::default()
            },
            Cluster {
                name: "bob-ray".into(),
                user: "bob".into(),
                state: Some(State::Live),
                age_seconds: Some(45.0),
                nodes_up: Some(1),
                nodes_total: Some(1),
                cpu_percent: Some(3.0),
                targets: Some(3),
                targets_down: Some(0),
                samples_per_scrape: Some(900.0),
                ..Default::default()
            },
            Cluster {
                name: "carol-ray_old".into(),
                user: "carol".into(),
                state: Some(State::Dead),
                last_seen_unix: Some(1.0),
                ..Default::default()
            },
            Cluster {
                name: "dave-gpu".into(),
                user: "dave".into(),
                host: Some("gpu07".into()),
                state: Some(State::Live),
                gpus: Some(4.0),
                gpus_used: Some(2.0),
                gpu_util_percent: Some(66.0),
                gpu_mem_used_bytes: Some(30.0 * gib),
                gpu_mem_total_bytes: Some(96.0 * gib),
                targets: Some(2),
                targets_down: Some(0),
                ..Default::default()
            },
        ]
    }

    fn app(color: bool) -> App {
        let mut app = App::new(
            "this stack's Prometheus at http://127.0.0.1:9090".into(),
            color,
            Duration::from_secs(2),
            Duration::from_secs(600),
        );
        app.set_clusters(Clusters {
            clusters: data(),
            time_unix: 0.0,
            queries: 2,
            took: Duration::from_millis(12),
        });
        app
    }

    fn screen(app: &App, w: u16, h: u16) -> (String, ratatui::buffer::Buffer) {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| app.render(f, Some(Duration::from_millis(1500))))
            .unwrap();
        let buf = t.backend().buffer().clone();
        let text = (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n");
        (text, buf)
    }

    fn row_of(text: &str, needle: &str) -> u16 {
        text.lines().position(|l| l.contains(needle)).unwrap() as u16
    }

    #[test]
    fn the_clusters_view_renders_a_fixed_data_set() {
        let (text, buf) = screen(&app(true), 170, 12);
        insta::assert_snapshot!(text);
        // Dead rows are grey; trouble cells red.
        let dead = row_of(&text, "carol-ray_old");
        assert_eq!(buf[(0, dead)].fg, Color::DarkGray);
        let train = row_of(&text, "alice-ray_train");
        let line = text.lines().nth(train as usize).unwrap();
        let x = |needle: &str| line[..line.find(needle).unwrap()].chars().count() as u16;
        assert_eq!(
            buf[(x(" 1 ") + 1, train)].fg,
            Color::Red,
            "targets down: {line}"
        );
        assert_eq!(
            buf[(x("9.0G/10.0G"), train)].fg,
            Color::Red,
            "store full: {line}"
        );
        assert_eq!(
            buf[(x("8/40"), train)].fg,
            Color::Red,
            "pending growing: {line}"
        );
        assert_eq!(buf[(x("87"), train)].fg, Color::Reset, "{line}");
        assert_eq!(buf[(0, row_of(&text, "bob-ray"))].fg, Color::Reset);
    }

    #[test]
    fn no_color_uses_no_colour() {
        let (_, buf) = screen(&app(false), 170, 12);
        assert!(
            buf.content()
                .iter()
                .all(|c| c.fg == Color::Reset && c.bg == Color::Reset)
        );
    }

    #[test]
    fn keys_filter_sort_open_and_quit() {
        let mut app = app(true);
        let key = |c: KeyCode| KeyEvent::new(c, KeyModifiers::NONE);
        app.on_key(key(KeyCode::Char('/')));
        for c in "gpu".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.visible().len(), 1);
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::Refresh);
        assert!(matches!(&app.view, View::Cluster(k) if k.1 == "dave-gpu"));
        let (text, _) = screen(&app, 120, 20);
        assert!(
            text.contains("dave-gpu on gpu07") && text.contains("loading"),
            "{text}"
        );
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.view, View::Clusters);
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.visible().len(), 4);
        app.on_key(key(KeyCode::Char('s')));
        assert_eq!(app.sort, Column::User);
        app.on_key(key(KeyCode::Char('S')));
        assert_eq!(app.visible()[0].user, "dave");
        assert_eq!(app.on_key(key(KeyCode::Char('h'))), Action::Refresh);
        assert!(app.show_all);
        app.on_key(key(KeyCode::Char('?')));
        assert!(app.help);
        let (text, _) = screen(&app, 120, 30);
        assert!(
            text.contains("help") && text.contains("reverse the sort"),
            "{text}"
        );
        assert_eq!(app.on_key(key(KeyCode::Char('x'))), Action::None);
        assert!(!app.help);
        assert_eq!(app.on_key(key(KeyCode::Char('q'))), Action::Quit);
    }

    #[test]
    fn only_a_screenful_of_many_clusters_is_drawn_and_the_selection_stays_on_screen() {
        let mut app = app(true);
        let many: Vec<Cluster> = (0..1000)
            .map(|i| Cluster {
                name: format!("c{i:04}"),
                user: "u".into(),
                state: Some(State::Live),
                ..Default::default()
            })
            .collect();
        app.clusters = many;
        let key = |c: KeyCode| KeyEvent::new(c, KeyModifiers::NONE);
        app.on_key(key(KeyCode::Char('G')));
        let (text, _) = screen(&app, 120, 20);
        assert!(text.contains("c0999") && !text.contains("c0000"), "{text}");
        app.on_key(key(KeyCode::Char('g')));
        let (text, _) = screen(&app, 120, 20);
        assert!(text.contains("c0000") && !text.contains("c0999"), "{text}");
    }

    #[test]
    fn a_tiny_terminal_does_not_panic() {
        for (w, h) in [(1, 1), (10, 3), (40, 6)] {
            screen(&app(true), w, h);
        }
    }
}
