//! The columns of the clusters view: their titles, and sorting and filtering by them.

use super::Cluster;

/// A column of the clusters view, for sorting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Name,
    User,
    Host,
    State,
    Age,
    Nodes,
    Cpu,
    Mem,
    Gpus,
    GpuUtil,
    GpuMem,
    Store,
    Tasks,
    Failed,
    Down,
    Samples,
}

impl Column {
    pub const ALL: [Column; 16] = [
        Column::Name,
        Column::User,
        Column::Host,
        Column::State,
        Column::Age,
        Column::Nodes,
        Column::Cpu,
        Column::Mem,
        Column::Gpus,
        Column::GpuUtil,
        Column::GpuMem,
        Column::Store,
        Column::Tasks,
        Column::Failed,
        Column::Down,
        Column::Samples,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Name => "CLUSTER",
            Column::User => "USER",
            Column::Host => "HOST",
            Column::State => "STATE",
            Column::Age => "AGE",
            Column::Nodes => "NODES",
            Column::Cpu => "CPU%",
            Column::Mem => "MEM",
            Column::Gpus => "GPUS",
            Column::GpuUtil => "GPU%",
            Column::GpuMem => "GMEM",
            Column::Store => "OBJSTORE",
            Column::Tasks => "RUN/PEND",
            Column::Failed => "FAIL5m",
            Column::Down => "DOWN",
            Column::Samples => "SAMPLES",
        }
    }

    fn number(self, c: &Cluster) -> Option<f64> {
        match self {
            Column::Age => c.age_seconds,
            Column::Nodes => c.nodes_up.map(|n| n as f64),
            Column::Cpu => c.cpu_percent,
            Column::Mem => c.mem_used_bytes,
            Column::Gpus => c.gpus,
            Column::GpuUtil => c.gpu_util_percent,
            Column::GpuMem => c.gpu_mem_used_bytes,
            Column::Store => c.object_store_used_bytes,
            Column::Tasks => c.tasks_running.map(|n| n as f64),
            Column::Failed => c.tasks_failed_5m.map(|n| n as f64),
            Column::Down => c.targets_down.map(|n| n as f64),
            Column::Samples => c.samples_per_scrape,
            _ => None,
        }
    }

    /// Orders two clusters by this column (absent values last), then by name.
    pub fn compare(self, a: &Cluster, b: &Cluster) -> std::cmp::Ordering {
        let by = match self {
            Column::Name => a.name.cmp(&b.name),
            Column::User => a.user.cmp(&b.user),
            Column::Host => a.host.cmp(&b.host),
            Column::State => a.state.cmp(&b.state),
            _ => match (self.number(a), self.number(b)) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            },
        };
        by.then_with(|| a.key_ref().cmp(&b.key_ref()))
    }
}

/// The order of the clusters view by `column`: numbers biggest first, text A–Z,
/// absent values last; `reverse` flips it.
pub fn order(column: Column, reverse: bool, a: &Cluster, b: &Cluster) -> std::cmp::Ordering {
    let text = matches!(
        column,
        Column::Name | Column::User | Column::Host | Column::State
    );
    let o = match (text, column.number(a), column.number(b)) {
        (false, Some(x), Some(y)) => y.total_cmp(&x).then_with(|| a.key_ref().cmp(&b.key_ref())),
        _ => column.compare(a, b),
    };
    if reverse { o.reverse() } else { o }
}

/// Sorts in the [`order`] of `column`.
pub fn sort(clusters: &mut [Cluster], column: Column, reverse: bool) {
    clusters.sort_by(|a, b| order(column, reverse, a, b));
}

/// Whether a cluster matches the filter text (in its name, user or host; case-insensitive).
pub fn matches(c: &Cluster, filter: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let f = filter.to_lowercase();
    [Some(&c.name), Some(&c.user), c.host.as_ref()]
        .into_iter()
        .flatten()
        .any(|s| s.to_lowercase().contains(&f))
}
