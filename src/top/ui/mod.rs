//! The terminal screen of `raywatch top`: the state of what is shown and the keys' state
//! ([`App`]); [`keys`] applies keys, [`render`] and [`cluster`] draw the two views,
//! [`fetch`] refreshes on a thread of its own, [`run`] is the screen's loop, and
//! [`terminal`] restores the terminal on every way out (quit, error, signal, panic) and
//! ends `top` at once, printing nothing, when the terminal goes away.

mod cluster;
mod fetch;
mod keys;
mod render;
mod run;
mod terminal;

use std::time::Duration;

use ratatui::style::{Color, Modifier, Style};

use super::model::{self, Cluster, Column, Key};
use super::{Clusters, Detail};

pub use run::run;

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
}

/// Whether colours are wanted: not when `NO_COLOR` is set to anything non-empty.
pub fn colour_wanted() -> bool {
    crate::env::no_color().is_none()
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

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
