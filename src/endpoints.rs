//! Who holds each endpoint a cluster lists: a target is scraped only when its listener is trusted.
//!
//! Any local user can bind a free loopback port, including one a Ray cluster
//! is about to list (its autoscaler or dashboard metrics port, before `ray
//! start`) or one it lists before its own process binds it (Ray's metrics
//! agents start seconds after the discovery file names them). Ray lists the
//! port anyway, and Prometheus would scrape the squatter's series under the
//! victim's cluster. So a local target is published only while the socket
//! listening on it, looked up in the kernel's table every second, belongs to a
//! trusted uid: one of another uid is withheld, whichever and however many
//! clusters list it, and one nobody listens on yet waits for its listener.
//! Only targets on other hosts, which cannot be checked here, are published
//! unchecked.
//!
//! The per-second look is cheap: one read of the listening sockets (netlink,
//! see [`Listeners::read`]) compared with the previous one; only endpoints on a
//! port whose listeners changed are judged again.

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
    /// Nothing listens (yet): not published, checked again every second (a
    /// late listener of a trusted uid is published within that second).
    Nobody,
    /// Not an address of this machine: cannot be checked here (flagged in `status`).
    Remote,
}

/// The latest verdict for every endpoint listed by a live cluster.
#[derive(Default)]
pub struct Endpoints {
    verdicts: HashMap<String, Holder>,
    /// The listening sockets the verdicts were last checked against (None:
    /// judge every endpoint again at the next [`Endpoints::update`]).
    table: Option<Listeners>,
    /// Bumped when the set of foreign endpoints changes.
    pub generation: u64,
}

fn port_of(endpoint: &str) -> Option<u16> {
    endpoint.rsplit_once(':')?.1.parse().ok()
}

impl Endpoints {
    /// Makes the next [`Endpoints::update`] judge every endpoint again (the
    /// trusted uids or this machine's addresses may have changed).
    pub fn invalidate(&mut self) {
        self.table = None;
    }

    /// Keeps the verdicts current as the listed endpoints change; returns the
    /// endpoints whose verdict changed (or that got their first one).
    ///
    /// Of the `touched` endpoints (whose claimants changed), those no longer
    /// `listed` are forgotten and those without a verdict are judged against a
    /// fresh read of the socket table. With `recheck` (every second), or after
    /// [`Endpoints::invalidate`], the table is read and compared with the one
    /// of the last check: the endpoints on ports whose listeners changed are
    /// judged again (all of them after an invalidation).
    pub fn update<'a>(
        &mut self,
        touched: impl IntoIterator<Item = &'a String>,
        listed: &dyn Fn(&str) -> bool,
        recheck: bool,
        locals: &BTreeSet<IpAddr>,
        trusted: &dyn Fn(u32) -> bool,
    ) -> Vec<String> {
        let foreign = |h: Option<&Holder>| matches!(h, Some(Holder::Foreign { .. }));
        let mut changed = Vec::new();
        let mut foreign_changed = false;
        let mut fresh: Option<Listeners> = None;
        for ep in touched {
            if !listed(ep) {
                foreign_changed |= foreign(self.verdicts.remove(ep.as_str()).as_ref());
                continue;
            }
            if !self.verdicts.contains_key(ep.as_str()) {
                let table = fresh.get_or_insert_with(Listeners::read);
                let verdict = judge(ep, table, locals, trusted);
                foreign_changed |= foreign(Some(&verdict));
                self.verdicts.insert(ep.clone(), verdict);
                changed.push(ep.clone());
            }
        }
        if recheck || self.table.is_none() {
            let table = fresh.take().unwrap_or_else(Listeners::read);
            let ports = self.table.as_ref().map(|old| table.changed_ports(old));
            if ports.as_ref().is_none_or(|p| !p.is_empty()) {
                for (ep, verdict) in self.verdicts.iter_mut() {
                    if let Some(ports) = &ports
                        && !port_of(ep).is_some_and(|p| ports.contains(&p))
                    {
                        continue;
                    }
                    let now = judge(ep, &table, locals, trusted);
                    if now != *verdict {
                        foreign_changed |= foreign(Some(verdict)) != foreign(Some(&now));
                        *verdict = now;
                        changed.push(ep.clone());
                    }
                }
            }
            self.table = Some(table);
        }
        if foreign_changed {
            self.generation += 1;
        }
        changed
    }

    /// Looks up every endpoint in one read of the socket tables.
    #[cfg(test)]
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

    /// Whether `endpoint` was checked and may be scraped: a trusted uid
    /// listens on it, or it is on another host.
    pub fn admitted(&self, endpoint: &str) -> bool {
        matches!(
            self.verdicts.get(endpoint),
            Some(Holder::Trusted | Holder::Remote)
        )
    }

    /// Whether nothing listened on `endpoint` at its last check.
    pub fn waiting(&self, endpoint: &str) -> bool {
        matches!(self.verdicts.get(endpoint), Some(Holder::Nobody))
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
            !e.admitted(&ep) && e.waiting(&ep),
            "nobody listens: withheld until a trusted uid does"
        );
        assert_eq!(
            judge("192.0.2.1:80", &Listeners::read(), &locals, &|_| true),
            Holder::Remote
        );
    }

    #[test]
    fn updates_judge_new_endpoints_and_only_ports_whose_listener_changed() {
        let locals = crate::ports::local_addresses();
        let me = nix::unistd::geteuid().as_raw();
        let others = |u: u32| u != me;
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ep =
            |l: &std::net::TcpListener| format!("127.0.0.1:{}", l.local_addr().unwrap().port());
        let (ea, eb) = (ep(&a), ep(&b));
        let listed: std::collections::BTreeSet<String> = [ea.clone(), eb.clone()].into();
        let is_listed = |e: &str| listed.contains(e);
        let mut e = Endpoints::default();
        // Our own listeners, judged against "everyone but me is trusted": foreign.
        let changed = e.update(&listed, &is_listed, false, &locals, &others);
        assert_eq!(changed.len(), 2);
        assert!(!e.admitted(&ea) && !e.admitted(&eb));
        assert_eq!(e.generation, 1);
        // Nothing changed: nothing judged again.
        assert!(e.update([], &is_listed, true, &locals, &others).is_empty());
        // One listener goes: only its endpoint changes verdict.
        drop(a);
        assert_eq!(
            e.update([], &is_listed, true, &locals, &others),
            vec![ea.clone()]
        );
        assert!(
            !e.admitted(&ea) && e.waiting(&ea),
            "nobody listens: waiting"
        );
        assert!(!e.admitted(&eb));
        // An endpoint no longer listed is forgotten.
        let none = |_: &str| false;
        e.update([&eb], &none, false, &locals, &others);
        assert!(!e.admitted(&eb) && e.foreign(&eb).is_none());
        drop(b);
    }

    #[test]
    fn a_late_listener_of_a_trusted_uid_is_admitted_at_the_next_check() {
        let locals = crate::ports::local_addresses();
        let me = nix::unistd::geteuid().as_raw();
        let mine = |u: u32| u == me;
        let port = crate::ports::free_port().unwrap();
        let ep = format!("127.0.0.1:{port}");
        let listed: std::collections::BTreeSet<String> = [ep.clone()].into();
        let is_listed = |e: &str| listed.contains(e);
        let mut e = Endpoints::default();
        assert_eq!(
            e.update(&listed, &is_listed, false, &locals, &mine),
            vec![ep.clone()]
        );
        assert!(e.waiting(&ep) && !e.admitted(&ep));
        let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        assert_eq!(
            e.update([], &is_listed, true, &locals, &mine),
            vec![ep.clone()]
        );
        assert!(e.admitted(&ep) && !e.waiting(&ep));
        drop(l);
    }
}
