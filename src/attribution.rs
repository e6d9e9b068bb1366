//! Deciding which cluster owns an endpoint that several live clusters list.
//!
//! Two clusters on one machine both list Ray's fixed autoscaler and dashboard
//! metrics ports (44217, 44227), but only one process holds each port. raywatch
//! scrapes such an endpoint once and reads the `SessionName` on its series; when
//! that fails and the endpoint is local, it asks /proc which process holds the
//! port and reads the session from that process's command line.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::registry::Owners;

/// How long an answer is trusted while the set of claimants stays the same.
const RECHECK: Duration = Duration::from_secs(60);
/// Only the start of the exposition is read; Ray puts SessionName on every series.
const MAX_BYTES: usize = 4 << 20;

struct Entry {
    claimants: Vec<String>,
    owner: Option<String>,
    checked: Instant,
}

/// Cached answers, refreshed when the claimants change or the answer ages.
#[derive(Default)]
pub struct Attribution {
    cache: HashMap<String, Entry>,
    pending: HashMap<String, Vec<String>>,
    /// Bumped with every answer recorded.
    pub generation: u64,
    /// Endpoints answered since [`Attribution::take_changed`].
    changed: Vec<String>,
}

impl Attribution {
    /// Endpoints to (re)resolve, given the current contested set; forgets the rest.
    pub fn due(
        &mut self,
        contested: &std::collections::BTreeMap<String, Vec<String>>,
        now: Instant,
    ) -> Vec<(String, Vec<String>)> {
        self.cache.retain(|ep, _| contested.contains_key(ep));
        let mut due = Vec::new();
        for (ep, claimants) in contested {
            if self.pending.contains_key(ep) {
                continue;
            }
            let fresh = self.cache.get(ep).is_some_and(|e| {
                e.claimants == *claimants && now.duration_since(e.checked) < RECHECK
            });
            if !fresh {
                self.pending.insert(ep.clone(), claimants.clone());
                due.push((ep.clone(), claimants.clone()));
            }
        }
        due
    }

    /// Stores an answer from [`resolve`].
    pub fn record(&mut self, endpoint: String, owner: Option<String>, now: Instant) {
        if let Some(claimants) = self.pending.remove(&endpoint) {
            self.generation += 1;
            self.changed.push(endpoint.clone());
            self.cache.insert(
                endpoint,
                Entry {
                    claimants,
                    owner,
                    checked: now,
                },
            );
        }
    }

    /// The session found to own `endpoint`, if one was.
    pub fn owner(&self, endpoint: &str) -> Option<&str> {
        self.cache.get(endpoint).and_then(|e| e.owner.as_deref())
    }

    /// The endpoints answered since the last call.
    pub fn take_changed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.changed)
    }

    pub fn owners(&self) -> Owners {
        self.cache
            .iter()
            .map(|(k, e)| (k.clone(), e.owner.clone()))
            .collect()
    }
}

/// Finds the session that serves `endpoint`, among `claimants`.
pub async fn resolve(
    client: &reqwest::Client,
    endpoint: &str,
    claimants: &[String],
) -> Option<String> {
    if let Some(s) = scrape_session(client, endpoint).await {
        if claimants.contains(&s) {
            return Some(s);
        }
        tracing::warn!(
            "{endpoint} serves session {s}, which none of its claimants {claimants:?} is"
        );
        return None;
    }
    let port: u16 = endpoint.rsplit_once(':')?.1.parse().ok()?;
    let (pid, _) = crate::process::port_holder(port)?;
    let s = crate::process::ray_session_of(pid)?;
    claimants.contains(&s).then_some(s)
}

async fn scrape_session(client: &reqwest::Client, endpoint: &str) -> Option<String> {
    let mut resp = client
        .get(format!("http://{endpoint}/metrics"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .ok()?;
    let mut buf: Vec<u8> = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        buf.extend_from_slice(&chunk);
        if let Some(s) = session_in(&buf) {
            return Some(s);
        }
        if buf.len() > MAX_BYTES {
            break;
        }
    }
    None
}

/// The first `SessionName="…"` label value in Prometheus exposition text.
pub fn session_in(text: &[u8]) -> Option<String> {
    let needle = b"SessionName=\"";
    let start = text.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let len = text[start..].iter().position(|b| *b == b'"')?;
    let value = std::str::from_utf8(&text[start..start + len]).ok()?;
    Some(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_session_label() {
        let text = b"# HELP x\nray_x{Component=\"a\",SessionName=\"session_1_2\",ip=\"1\"} 1\n";
        assert_eq!(session_in(text).as_deref(), Some("session_1_2"));
        assert_eq!(session_in(b"up 1\n"), None);
        assert_eq!(session_in(b"x{SessionName=\"unterminated"), None);
    }

    #[test]
    fn rechecks_when_claimants_change() {
        let mut a = Attribution::default();
        let now = Instant::now();
        let mut contested = std::collections::BTreeMap::from([(
            "e:1".to_string(),
            vec!["s1".to_string(), "s2".to_string()],
        )]);
        assert_eq!(a.due(&contested, now).len(), 1);
        assert!(
            a.due(&contested, now).is_empty(),
            "pending is not asked twice"
        );
        a.record("e:1".into(), Some("s1".into()), now);
        assert!(a.due(&contested, now).is_empty());
        contested.insert("e:1".into(), vec!["s1".into(), "s3".into()]);
        assert_eq!(a.due(&contested, now).len(), 1);
    }
}
