//! How big each target's scrapes are, against the sample limit: the report's
//! `samples_per_scrape` and `sample_limit_exceeded`, from Prometheus' own series.

use std::collections::HashMap;

use super::StatusReport;

/// What one scrape of each target carried, from Prometheus' own
/// `scrape_samples_scraped` series, keyed by (cluster, instance).
#[derive(Debug, Default, Clone)]
pub struct ScrapeSizes(pub HashMap<(String, String), f64>);

impl ScrapeSizes {
    /// The PromQL that [`ScrapeSizes::from_samples`] reads.
    pub fn promql() -> String {
        format!(
            "scrape_samples_scraped{{job=\"{}\"}}",
            crate::prometheus::RAY_JOB
        )
    }

    pub fn from_samples(samples: &[crate::prometheus::Sample]) -> ScrapeSizes {
        let mut map = HashMap::new();
        for s in samples {
            let (Some(c), Some(i)) = (s.metric.get("ray_io_cluster"), s.metric.get("instance"))
            else {
                continue;
            };
            if let Ok(v) = s.value.1.parse::<f64>() {
                map.insert((c.clone(), i.clone()), v);
            }
        }
        ScrapeSizes(map)
    }

    pub fn get(&self, cluster: &str, instance: &str) -> Option<f64> {
        self.0
            .get(&(cluster.to_string(), instance.to_string()))
            .copied()
    }
}

/// Fills in the samples per scrape of every target and cluster of a report,
/// and flags the targets the sample limit refuses.
pub fn annotate(
    report: &mut StatusReport,
    health: &HashMap<(String, String), f64>,
    sizes: &ScrapeSizes,
    limit: crate::guard::SampleLimit,
) {
    for c in &mut report.clusters {
        let mut total = None;
        for t in &mut c.targets {
            let n = sizes.get(&c.name, &t.address);
            t.samples_per_scrape = n;
            let up = health.get(&(c.name.clone(), t.address.clone())).copied();
            if crate::guard::over_limit(up, n, limit) {
                t.sample_limit_exceeded = n.map(|n| crate::guard::over_limit_note(n, limit));
            }
            if let Some(n) = n {
                *total.get_or_insert(0.0) += n;
            }
        }
        c.samples_per_scrape = total;
    }
}
