//! Drawing one cluster's view of `raywatch top`: its summary line, its alerts, its nodes,
//! four charts over the chosen window and its Grafana link.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, RenderDirection, Row, Sparkline, Table};

use super::App;
use crate::escape;
use crate::top::Detail;
use crate::top::model::{self, Cluster, Column, Key, Node};

/// The cluster's alerts in one line: firing ones in red, pending in yellow.
fn alert_line(alerts: &[model::ClusterAlert]) -> Line<'static> {
    if alerts.is_empty() {
        return Line::from(Span::styled(
            "alerts: none",
            Style::default().add_modifier(Modifier::DIM),
        ));
    }
    let mut spans = vec![Span::raw("alerts:")];
    for a in alerts {
        let colour = if a.state == "firing" {
            Color::Red
        } else {
            Color::Yellow
        };
        let severity = a
            .severity
            .as_deref()
            .map(|s| format!(", {}", escape::text(s)))
            .unwrap_or_default();
        spans.push(Span::raw("  "));
        spans.push(Span::styled(
            format!(
                "{} ({}{severity})",
                escape::text(&a.name),
                escape::text(&a.state)
            ),
            Style::default().fg(colour).add_modifier(Modifier::BOLD),
        ));
    }
    spans.push(Span::raw("  (raywatch alerts)"));
    Line::from(spans)
}

/// The charts: title, series name, colour.
const CHARTS: [(&str, &str, Color); 4] = [
    ("CPU %", "cpu", Color::Green),
    ("GPU %", "gpu", Color::Magenta),
    ("memory %", "mem", Color::Blue),
    ("tasks running", "running", Color::Cyan),
];

impl App {
    pub(super) fn render_cluster(&self, f: &mut Frame, area: Rect, key: &Key) {
        let cluster = self.clusters.iter().find(|c| &c.key() == key);
        let [info, alerts, nodes, charts, link] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(6),
            Constraint::Length(1),
        ])
        .areas(area);
        f.render_widget(Paragraph::new(self.cluster_head(key, cluster)), info);
        let detail = self
            .detail
            .as_ref()
            .filter(|(k, _)| k == key)
            .map(|(_, d)| d);
        let Some(detail) = detail else {
            f.render_widget(Paragraph::new("loading…"), nodes);
            return;
        };
        f.render_widget(Paragraph::new(alert_line(&detail.alerts)), alerts);
        f.render_widget(node_table(&detail.nodes), nodes);
        let parts = Layout::horizontal([Constraint::Ratio(1, 4); 4]).split(charts);
        for (chart, part) in CHARTS.into_iter().zip(parts.iter()) {
            f.render_widget(self.chart(detail, chart), *part);
        }
        let url = match &detail.grafana_url {
            Some(u) => format!("Grafana: {}", escape::text(u)),
            None => "Grafana: not running for this stack (raywatch grafana dir)".to_string(),
        };
        f.render_widget(Paragraph::new(url), link);
    }

    /// The view's first line: name, host, user and the cluster's row in words.
    fn cluster_head(&self, key: &Key, cluster: Option<&Cluster>) -> Line<'static> {
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
        Line::from(head)
    }

    /// One chart of [`CHARTS`] over the detail's window, titled with its latest value.
    fn chart(
        &self,
        detail: &Detail,
        (title, series, colour): (&str, &str, Color),
    ) -> Sparkline<'static> {
        let window = format!("{}m", detail.window.as_secs() / 60);
        let latest = |name: &str| {
            detail
                .charts
                .get(name)
                .and_then(|p| p.iter().rev().flatten().next().copied())
        };
        let shown = |v: Option<f64>| v.map_or(model::DASH.to_string(), |v| format!("{v:.0}"));
        let label = if series == "running" {
            format!(
                "tasks {window} run {} pend {}",
                shown(latest("running")),
                shown(latest("pending"))
            )
        } else {
            format!("{title} {window} now {}", shown(latest(series)))
        };
        let points = detail.charts.get(series).cloned().unwrap_or_default();
        let data = newest_first(&points);
        let max = if series == "running" {
            data.iter().flatten().copied().max().unwrap_or(1).max(1)
        } else {
            100
        };
        // Newest first, drawn from the right edge: a chart narrower than its
        // points shows the newest ones (left to right it would show the oldest).
        Sparkline::default()
            .block(Block::bordered().title(label))
            .direction(RenderDirection::RightToLeft)
            .data(&data)
            .max(max)
            .style(self.style(colour))
    }
}

/// A chart's points (oldest first) as the sparkline's bars, newest first.
fn newest_first(points: &[Option<f64>]) -> Vec<Option<u64>> {
    points
        .iter()
        .rev()
        .map(|p| p.map(|v| v.max(0.0).round() as u64))
        .collect()
}

/// The nodes of the cluster view, one row each.
fn node_table(nodes: &[Node]) -> Table<'static> {
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
    Table::new(nodes.iter().map(node_row), widths).header(header)
}

fn node_row(n: &Node) -> Row<'static> {
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
    let instance = if n.instance.is_empty() {
        &n.ip
    } else {
        &n.instance
    };
    Row::new([
        escape::text(instance).into_owned(),
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
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::super::View;
    use super::*;
    use crate::top::model::State;

    /// The cluster view of a cluster whose CPU and memory charts hold `points`
    /// (61, oldest first, as `top` fetches them), drawn `w` x 16.
    fn screen(points: Vec<Option<f64>>, w: u16) -> Vec<String> {
        screen_with(points, w, Vec::new())
    }

    /// [`screen`], the cluster having `alerts`.
    fn screen_with(
        points: Vec<Option<f64>>,
        w: u16,
        alerts: Vec<model::ClusterAlert>,
    ) -> Vec<String> {
        let mut app = App::new("test".into(), false, Duration::from_secs(2), Duration::ZERO);
        let cluster = Cluster {
            name: "alice-ray".into(),
            user: "alice".into(),
            state: Some(State::Live),
            nodes_up: Some(1),
            nodes_total: Some(1),
            ..Default::default()
        };
        let key = cluster.key();
        app.clusters = vec![cluster];
        app.view = View::Cluster(key.clone());
        let charts: BTreeMap<String, Vec<Option<f64>>> = [
            ("cpu".to_string(), points.clone()),
            ("mem".to_string(), points),
        ]
        .into();
        let node = Node {
            instance: "10.213.0.1:8080".into(),
            ip: "10.213.0.1".into(),
            kind: Some("head".into()),
            ..Default::default()
        };
        app.detail = Some((
            key,
            Detail {
                nodes: vec![node],
                alerts,
                charts,
                window: Duration::from_secs(15 * 60),
                grafana_url: None,
            },
        ));
        let mut t = Terminal::new(TestBackend::new(w, 16)).unwrap();
        t.draw(|f| app.render(f, None)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..16)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect())
            .collect()
    }

    /// The CPU chart's bars (the first chart, inside its border), row by row.
    fn cpu_chart(lines: &[String], w: u16) -> Vec<String> {
        let title = lines.iter().position(|l| l.contains("CPU %")).unwrap();
        let inner = (w / 4 - 2) as usize;
        lines[title + 1..title + 5]
            .iter()
            .map(|l| l.chars().skip(1).take(inner).collect())
            .collect()
    }

    #[test]
    fn a_young_clusters_charts_show_its_few_points_at_the_right_edge() {
        // Two minutes old in a 15-minute window: only the newest 8 of 61 points.
        let points: Vec<Option<f64>> = (0..61).map(|i| (i >= 53).then_some(80.0)).collect();
        let lines = screen(points, 120);
        insta::assert_snapshot!(lines.join("\n"));
        let chart = cpu_chart(&lines, 120);
        let bottom: Vec<char> = chart[3].chars().collect();
        assert_eq!(bottom.len(), 28);
        assert!(
            bottom[20..].iter().all(|c| *c == '█') && bottom[..20].iter().all(|c| *c == ' '),
            "the newest 8 points fill the right edge, nothing else: {chart:#?}"
        );
    }

    #[test]
    fn an_old_clusters_charts_show_the_newest_points_not_the_oldest() {
        // Idle for its first 40 points, then busy: the chart (28 wide) shows the busy end.
        let points: Vec<Option<f64>> = (0..61)
            .map(|i| Some(if i < 40 { 0.0 } else { 100.0 }))
            .collect();
        let lines = screen(points, 120);
        insta::assert_snapshot!(lines.join("\n"));
        let chart = cpu_chart(&lines, 120);
        let top: Vec<char> = chart[0].chars().collect();
        assert!(
            top[7..].iter().all(|c| *c == '█') && top[..7].iter().all(|c| *c == ' '),
            "the newest 21 points are 100 %, the 7 before them 0 %: {chart:#?}"
        );
    }

    #[test]
    fn the_clusters_alerts_are_listed_firing_first_and_escaped() {
        let sample = |name: &str, state: &str| crate::prometheus::Sample {
            metric: [
                ("alertname", name),
                ("alertstate", state),
                ("severity", "warning"),
                ("ray_io_cluster", "alice-ray"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            value: (0.0, "1".into()),
        };
        let alerts = model::alerts(&[
            sample("RayTargetDown", "pending"),
            sample("RayGpusIdle", "firing"),
            sample("Evil\x1b[2J", "firing"),
        ]);
        assert_eq!(
            alerts.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
            ["Evil\x1b[2J", "RayGpusIdle", "RayTargetDown"]
        );
        let lines = screen_with(vec![None; 61], 160, alerts);
        let line = lines.iter().find(|l| l.starts_with("alerts:")).unwrap();
        assert!(
            line.contains("RayGpusIdle (firing, warning)")
                && line.contains("RayTargetDown (pending, warning)"),
            "{line}"
        );
        assert!(!lines.concat().contains('\x1b'), "{lines:#?}");
        let none = screen(vec![None; 61], 160);
        assert!(
            none.iter().any(|l| l.starts_with("alerts: none")),
            "{none:#?}"
        );
    }
}
