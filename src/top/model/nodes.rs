//! One cluster's view of `raywatch top`: its nodes (with their GPUs), its charts and its
//! alerts, from the answers of [`crate::top::queries::nodes`],
//! [`crate::top::queries::charts`] and [`crate::top::queries::alerts`].

use std::collections::BTreeMap;

use serde::Serialize;

use super::{points, value};
use crate::prometheus::RangeSeries;
use crate::prometheus::Sample;
use crate::top::queries::FIELD;

/// One node of the cluster view.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct Node {
    pub instance: String,
    pub ip: String,
    /// "head" or "worker" (Ray's `RayNodeType`, or `IsHeadNode`).
    pub kind: Option<String>,
    pub cpu_percent: Option<f64>,
    pub cpus: Option<f64>,
    pub mem_used_bytes: Option<f64>,
    pub mem_total_bytes: Option<f64>,
    pub disk_used_bytes: Option<f64>,
    pub disk_total_bytes: Option<f64>,
    pub object_store_used_bytes: Option<f64>,
    pub object_store_total_bytes: Option<f64>,
    /// Per GPU: index, utilisation (%), memory used and total (bytes).
    pub gpus: Vec<Gpu>,
}

#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct Gpu {
    pub index: String,
    pub name: Option<String>,
    pub util_percent: Option<f64>,
    pub mem_used_bytes: Option<f64>,
    pub mem_total_bytes: Option<f64>,
}

/// One alert of the cluster, firing or pending (Prometheus' `ALERTS` series).
#[derive(Serialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClusterAlert {
    /// "firing" or "pending" (firing sorts first).
    pub state: String,
    pub name: String,
    pub severity: Option<String>,
}

/// The alerts of one cluster from an answer of [`crate::top::queries::alerts`]:
/// firing first, then by name; one per alert and state.
pub fn alerts(samples: &[Sample]) -> Vec<ClusterAlert> {
    let mut out: Vec<ClusterAlert> = samples
        .iter()
        .filter_map(|s| {
            Some(ClusterAlert {
                state: s.metric.get("alertstate")?.clone(),
                name: s.metric.get("alertname")?.clone(),
                severity: s.metric.get("severity").cloned(),
            })
        })
        .collect();
    out.sort_by(|a, b| (a.state != "firing", &a.name).cmp(&(b.state != "firing", &b.name)));
    out.dedup();
    out
}

/// The nodes of one cluster from an answer of [`crate::top::queries::nodes`], keyed by IP:
/// the head first, then by address.
pub fn nodes(samples: &[Sample]) -> Vec<Node> {
    let mut gathered = Gathered::default();
    for s in samples {
        if let (Some(field), Some(v)) = (s.metric.get(FIELD), value(&s.value)) {
            gathered.add(field, v, &s.metric);
        }
    }
    let mut out = gathered.finish();
    out.sort_by(|a, b| {
        (a.kind.as_deref() != Some("head"), &a.ip).cmp(&(b.kind.as_deref() != Some("head"), &b.ip))
    });
    out
}

/// An answer's values gathered by node (IP) and GPU (IP, index), before the
/// totals that take two series (used + free) are summed.
#[derive(Default)]
struct Gathered {
    nodes: BTreeMap<String, Node>,
    /// By Ray's `NodeAddress`: used and free.
    store: BTreeMap<String, (Option<f64>, Option<f64>)>,
    gpus: BTreeMap<(String, String), Gpu>,
    disk_free: BTreeMap<String, f64>,
    gram_free: BTreeMap<(String, String), f64>,
}

impl Gathered {
    fn add(&mut self, field: &str, v: f64, m: &BTreeMap<String, String>) {
        let get = |k: &str| m.get(k).cloned().unwrap_or_default();
        match field {
            "store_used" | "store_free" => {
                let e = self.store.entry(get("NodeAddress")).or_default();
                if field == "store_used" {
                    e.0 = Some(v);
                } else {
                    e.1 = Some(v);
                }
            }
            "gpu_util" | "gram_used_mib" | "gram_free_mib" => self.add_gpu(field, v, m),
            _ => self.add_node(field, v, m),
        }
    }

    fn add_gpu(&mut self, field: &str, v: f64, m: &BTreeMap<String, String>) {
        let get = |k: &str| m.get(k).cloned().unwrap_or_default();
        let k = (get("ip"), get("GpuIndex"));
        if field == "gram_free_mib" {
            self.gram_free.insert(k, v * 1048576.0);
            return;
        }
        let g = self.gpus.entry(k.clone()).or_insert_with(|| Gpu {
            index: k.1.clone(),
            name: m.get("GpuDeviceName").cloned(),
            ..Default::default()
        });
        if field == "gpu_util" {
            g.util_percent = Some(v);
        } else {
            g.mem_used_bytes = Some(v * 1048576.0);
        }
    }

    fn add_node(&mut self, field: &str, v: f64, m: &BTreeMap<String, String>) {
        let get = |k: &str| m.get(k).cloned().unwrap_or_default();
        let ip = get("ip");
        let n = self.nodes.entry(ip.clone()).or_insert_with(|| Node {
            ip: ip.clone(),
            instance: get("instance"),
            ..Default::default()
        });
        if n.kind.is_none() {
            n.kind = m.get("RayNodeType").cloned().or_else(|| {
                m.get("IsHeadNode")
                    .map(|h| if h == "true" { "head" } else { "worker" }.to_string())
            });
        }
        match field {
            "cpu" => n.cpu_percent = Some(v),
            "cpus" => n.cpus = Some(v),
            "mem_used" => n.mem_used_bytes = Some(v),
            "mem_total" => n.mem_total_bytes = Some(v),
            "disk_used" => n.disk_used_bytes = Some(v),
            "disk_free" => {
                self.disk_free.insert(ip, v);
            }
            _ => {}
        }
    }

    /// The nodes with their totals, and their GPUs (a GPU of no node known makes one).
    fn finish(self) -> Vec<Node> {
        let mut nodes = self.nodes;
        for (ip, n) in nodes.iter_mut() {
            if let (Some(u), Some(f)) = (n.disk_used_bytes, self.disk_free.get(ip)) {
                n.disk_total_bytes = Some(u + f);
            }
            if let Some((u, f)) = self.store.get(ip) {
                n.object_store_used_bytes = *u;
                n.object_store_total_bytes = match (u, f) {
                    (Some(u), Some(f)) => Some(u + f),
                    _ => None,
                };
            }
        }
        for ((ip, idx), mut g) in self.gpus {
            if let (Some(u), Some(f)) = (g.mem_used_bytes, self.gram_free.get(&(ip.clone(), idx))) {
                g.mem_total_bytes = Some(u + f);
            }
            nodes
                .entry(ip.clone())
                .or_insert_with(|| Node {
                    ip,
                    ..Default::default()
                })
                .gpus
                .push(g);
        }
        nodes.into_values().collect()
    }
}

/// The cluster view's charts: one series per name ("cpu", "gpu", "mem", "running", "pending").
pub fn charts(
    series: &[RangeSeries],
    start: f64,
    end: f64,
    step: f64,
) -> BTreeMap<String, Vec<Option<f64>>> {
    series
        .iter()
        .filter_map(|s| {
            let field = s.metric.get(FIELD)?;
            Some((field.clone(), points(&s.values, start, end, step)))
        })
        .collect()
}
