//! Who holds each endpoint a cluster lists: a target is scraped only when its listener is trusted.
//!
//! Any local user can bind a free loopback port, including one a Ray cluster
//! is about to list (its autoscaler or dashboard metrics port, before `ray
//! start`). Ray lists the port anyway, and Prometheus would scrape the
//! squatter's series under the victim's cluster. So before a local target is
//! published, and again every second while it is, raywatch looks up the
//! socket listening on it in the kernel's table: a listener owned by an
//! untrusted uid is withheld, whichever and however many clusters list it.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use crate::process::Listeners;

/// What holds a listed endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A socket of a trusted uid.
    Trusted,
    /// A socket of another user: never scraped.
    Foreign { uid: u32, user: String },
    /// Nothing listens (yet): nothing can be scraped from it; checked again every second.
    Nobody,
    /// Not an address of this machine: cannot be checked here (flagged in `status`).
    Remote,
}

/// The latest verdict for every endpoint listed by a live cluster.
#[derive(Default)]
pub struct Endpoints {
    verdicts: HashMap<String, Holder>,
    /// Bumped when the set of foreign endpoints changes.
    pub generation: u64,
}

impl Endpoints {
    /// Looks up every endpoint in one read of the socket tables.
    pub fn refresh<'a>(
        &mut self,
        endpoints: impl Iterator<Item = &'a String>,
        locals: &BTreeSet<IpAddr>,
        trusted: &dyn Fn(u32) -> bool,
    ) {
        let listeners = Listeners::read();
        let mut verdicts = HashMap::with_capacity(self.verdicts.len());
        for ep in endpoints {
            if verdicts.contains_key(ep) {
                continue;
            }
            verdicts.insert(ep.clone(), judge(ep, &listeners, locals, trusted));
        }
        let foreign = |m: &HashMap<String, Holder>| -> BTreeSet<String> {
            m.iter()
                .filter(|(_, h)| matches!(h, Holder::Foreign { .. }))
                .map(|(k, _)| k.clone())
                .collect()
        };
        if foreign(&verdicts) != foreign(&self.verdicts) {
            self.generation += 1;
        }
        self.verdicts = verdicts;
    }

    /// The foreign holder of `endpoint`, if it has one.
    pub fn foreign(&self, endpoint: &str) -> Option<(u32, &str)> {
        match self.verdicts.get(endpoint) {
            Some(Holder::Foreign { uid, user }) => Some((*uid, user.as_str())),
            _ => None,
        }
    }

    /// Whether `endpoint` was checked and may be scraped.
    pub fn admitted(&self, endpoint: &str) -> bool {
        matches!(
            self.verdicts.get(endpoint),
            Some(Holder::Trusted | Holder::Nobody | Holder::Remote)
        )
    }
}

/// The verdict for one `host:port`.
pub fn judge(
    endpoint: &str,
    listeners: &Listeners,
    locals: &BTreeSet<IpAddr>,
    trusted: &dyn Fn(u32) -> bool,
) -> Holder {
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return Holder::Remote;
    };
    let Ok(port) = port.parse::<u16>() else {
        return Holder::Remote;
    };
    if !crate::ports::is_local_host(host, locals) {
        return Holder::Remote;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let listener = match bare.parse::<IpAddr>() {
        Ok(ip) => listeners.holder(ip, port),
        Err(_) if bare == "localhost" => {
            listeners.holder(std::net::Ipv4Addr::LOCALHOST.into(), port)
        }
        // The machine's host name: whatever listens on the port.
        Err(_) => listeners.any_on(port),
    };
    match listener {
        None => Holder::Nobody,
        Some(l) if trusted(l.uid) => Holder::Trusted,
        Some(l) => Holder::Foreign {
            uid: l.uid,
            user: crate::process::user_name(l.uid),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_of_another_uid_is_foreign() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ep = format!("127.0.0.1:{}", l.local_addr().unwrap().port());
        let locals = crate::ports::local_addresses();
        let me = nix::unistd::geteuid().as_raw();
        let mut e = Endpoints::default();
        e.refresh([ep.clone()].iter(), &locals, &|u| u == me);
        assert!(e.admitted(&ep));
        assert_eq!(e.generation, 0);
        e.refresh([ep.clone()].iter(), &locals, &|u| u != me);
        assert_eq!(e.foreign(&ep).map(|(u, _)| u), Some(me));
        assert!(!e.admitted(&ep));
        assert_eq!(e.generation, 1);
        drop(l);
        e.refresh([ep.clone()].iter(), &locals, &|u| u != me);
        assert!(
            e.admitted(&ep),
            "nobody listens: nothing to scrape, admitted"
        );
        assert_eq!(
            judge("192.0.2.1:80", &Listeners::read(), &locals, &|_| true),
            Holder::Remote
        );
    }
}
