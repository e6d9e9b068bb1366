//! Drawing the screen of `raywatch top`: the header, the clusters view (only the rows that
//! fit), the key line and the help; one cluster's view is in [`super::cluster`].

use std::time::Duration;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, TableState};

use super::{App, View};
use crate::escape;
use crate::top::model::{self, Cluster, Column};

/// The help screen (`?`).
const HELP: [&str; 20] = [
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

impl App {
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
        let offset = self.scroll(selected, all.len(), height);
        let rows = &all[offset.min(all.len())..(offset + height).min(all.len())];
        let titles = self.titles();
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|c| {
                let mut r = model::cells(c);
                r.push(model::spark(&c.spark));
                r
            })
            .collect();
        let widths = widths(&titles, &cells);
        let table_rows: Vec<Row> = rows
            .iter()
            .zip(cells)
            .map(|(c, r)| self.cluster_row(c, r))
            .collect();
        let header = Row::new(titles).style(Style::default().add_modifier(Modifier::BOLD));
        let table = Table::new(table_rows, widths)
            .header(header)
            .column_spacing(1)
            .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED));
        let mut state = TableState::default().with_selected(selected.map(|i| i - offset));
        f.render_stateful_widget(table, area, &mut state);
        if all.is_empty() {
            self.render_no_rows(f, area);
        }
    }

    /// The first row shown of `len` when `height` fit, moved as little as keeps
    /// the `selected` row on screen (and kept for the next frame).
    fn scroll(&self, selected: Option<usize>, len: usize, height: usize) -> usize {
        let mut offset = self.offset.get().min(len.saturating_sub(1));
        if let Some(i) = selected {
            if i < offset {
                offset = i;
            } else if i >= offset + height {
                offset = i + 1 - height;
            }
        }
        self.offset.set(offset);
        offset
    }

    /// The column titles of the clusters view, the sorted one marked.
    fn titles(&self) -> Vec<String> {
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
        titles
    }

    /// One row of the clusters view: dim when dead, trouble cells red.
    fn cluster_row(&self, c: &Cluster, texts: Vec<String>) -> Row<'static> {
        let row_style = if c.is_live() {
            Style::default()
        } else {
            self.dim()
        };
        let cells: Vec<Cell> = texts
            .into_iter()
            .enumerate()
            .map(|(i, text)| {
                let cell = Cell::from(text);
                if c.is_live() && trouble(c, Column::ALL.get(i).copied()) {
                    cell.style(self.style(Color::Red))
                } else {
                    cell
                }
            })
            .collect();
        Row::new(cells).style(row_style)
    }

    /// Says why the clusters view has no row.
    fn render_no_rows(&self, f: &mut Frame, area: Rect) {
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

    fn render_help(&self, f: &mut Frame) {
        let area = f.area();
        let w = 86.min(area.width);
        let h = (HELP.len() as u16 + 2).min(area.height);
        let r = Rect::new(
            area.x + (area.width - w) / 2,
            area.y + (area.height - h) / 2,
            w,
            h,
        );
        f.render_widget(Clear, r);
        f.render_widget(
            Paragraph::new(HELP.join("\n")).block(Block::bordered().title("help")),
            r,
        );
    }
}

/// Whether a live cluster's cell of `column` shows trouble: alerts firing,
/// targets down, pending tasks growing, the object store nearly full.
fn trouble(c: &Cluster, column: Option<Column>) -> bool {
    match column {
        Some(Column::Down) => c.targets_down.unwrap_or(0) > 0,
        Some(Column::State) => c.alerts_firing.unwrap_or(0) > 0,
        Some(Column::Tasks) => c.pending_growing(),
        Some(Column::Store) => c.store_full(),
        _ => false,
    }
}

/// Each column as wide as its widest text (the title included), at most 32
/// for the name and 31 for the others.
fn widths(titles: &[String], cells: &[Vec<String>]) -> Vec<Constraint> {
    (0..titles.len())
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
        .collect()
}
