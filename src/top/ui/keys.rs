//! The keys of `raywatch top`: the filter being typed, help, the clusters view and one cluster's view.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{Action, App, View, WINDOWS};
use crate::top::model::Column;

impl App {
    /// Applies one key.
    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if self.editing {
            self.on_filter_key(key.code);
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
        match key.code {
            KeyCode::Char('q') => Action::Quit,
            KeyCode::Char('?') => {
                self.help = true;
                Action::None
            }
            KeyCode::Char('r') => Action::Refresh,
            code => match self.view {
                View::Clusters => self.on_clusters_key(code),
                View::Cluster(_) => self.on_cluster_key(code),
            },
        }
    }

    /// A key while the filter is typed (after `/`).
    fn on_filter_key(&mut self, code: KeyCode) {
        match code {
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
    }

    /// A key of the clusters view.
    fn on_clusters_key(&mut self, code: KeyCode) -> Action {
        let all = self.clusters.len() as isize;
        match code {
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::PageUp => self.move_selection(-10),
            KeyCode::PageDown => self.move_selection(10),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(-all),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(all),
            KeyCode::Char('/') => {
                self.editing = true;
                self.filter.clear();
            }
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Char('s') => {
                let i = Column::ALL
                    .iter()
                    .position(|c| *c == self.sort)
                    .unwrap_or(0);
                self.sort = Column::ALL[(i + 1) % Column::ALL.len()];
            }
            KeyCode::Char('S') => self.reverse = !self.reverse,
            KeyCode::Char('h') => {
                self.show_all = !self.show_all;
                return Action::Refresh;
            }
            KeyCode::Enter => return self.open_selected(),
            _ => {}
        }
        Action::None
    }

    /// Opens the selected cluster's view (Enter); nothing when no row is shown.
    fn open_selected(&mut self) -> Action {
        let rows = self.visible();
        let Some(i) = self.selected_index(&rows) else {
            return Action::None;
        };
        let key = rows[i].key();
        self.selected = Some(key.clone());
        self.view = View::Cluster(key);
        self.detail = None;
        Action::Refresh
    }

    /// A key of one cluster's view.
    fn on_cluster_key(&mut self, code: KeyCode) -> Action {
        match code {
            KeyCode::Esc | KeyCode::Backspace | KeyCode::Left => {
                self.view = View::Clusters;
                self.detail = None;
                Action::None
            }
            KeyCode::Char('[') if self.window > 0 => {
                self.window -= 1;
                Action::Refresh
            }
            KeyCode::Char(']') if self.window + 1 < WINDOWS.len() => {
                self.window += 1;
                Action::Refresh
            }
            _ => Action::None,
        }
    }
}
