//! Whom the daemon trusts, and what it knows of this machine ([`Trust`]): the
//! owners whose files are read and whose listeners are scraped, this machine's
//! addresses, and the refusals of Ray's files already logged.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::config::StackConfig;
use crate::discovery::Found;

/// The trusted owners (`up --trust-uid` and this user), this machine's addresses
/// (refreshed by full scans), and the warnings about files in Ray's folders
/// already logged (each is logged once).
#[derive(Debug)]
pub struct Trust {
    uids: BTreeSet<u32>,
    locals: BTreeSet<IpAddr>,
    warned: BTreeSet<String>,
}

/// The owners whose discovery files are followed: the trusted uids and this user.
fn trusted_uids(settings: &StackConfig) -> BTreeSet<u32> {
    let mut trusted: BTreeSet<u32> = settings.trust_uids.iter().copied().collect();
    trusted.insert(nix::unistd::geteuid().as_raw());
    trusted
}

impl Trust {
    /// The owners `settings` trusts; this machine's addresses as they are now.
    pub fn new(settings: &StackConfig) -> Trust {
        Trust {
            uids: trusted_uids(settings),
            locals: crate::ports::local_addresses(),
            warned: BTreeSet::new(),
        }
    }

    /// Follows changed settings: the trusted owners.
    pub fn follow_settings(&mut self, settings: &StackConfig) {
        self.uids = trusted_uids(settings);
    }

    /// Whether a uid is trusted.
    pub fn trusted(&self) -> impl Fn(u32) -> bool + '_ {
        |uid| self.uids.contains(&uid)
    }

    /// This machine's addresses, as last read.
    pub fn locals(&self) -> &BTreeSet<IpAddr> {
        &self.locals
    }

    /// Reads this machine's addresses again.
    pub fn refresh_locals(&mut self) {
        self.locals = crate::ports::local_addresses();
    }

    /// The GCS port Ray recorded for the cluster found at `found`, read from
    /// files of trusted owners only (a refusal is logged once).
    pub fn gcs_port(&mut self, found: &Found) -> Option<u16> {
        let uids = &self.uids;
        super::probe::gcs_port(found, &|uid| uids.contains(&uid), &mut self.warned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_user_is_always_trusted_and_the_settings_add_others() {
        let me = nix::unistd::geteuid().as_raw();
        let mut settings = StackConfig::default();
        let mut trust = Trust::new(&settings);
        let other = me.wrapping_add(4242);
        assert!(trust.trusted()(me));
        assert!(!trust.trusted()(other));
        settings.trust_uids = vec![other];
        trust.follow_settings(&settings);
        assert!(trust.trusted()(me) && trust.trusted()(other));
        settings.trust_uids.clear();
        trust.follow_settings(&settings);
        assert!(
            !trust.trusted()(other),
            "a uid no longer trusted is dropped"
        );
    }
}
