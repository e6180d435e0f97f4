//! How targets appear in logs and admin output.
//!
//! By default a client address never appears raw: it is shown as a keyed
//! hash (`ip#3f2a9c1d5e7b8a90`), stable for the life of the process, so an
//! operator can follow one client across log lines and act on it (`sluice
//! ban ip#…` resolves the hash through recent activity and the ban list)
//! without the log holding personal data. `privacy.log_ips = true` shows
//! addresses as they are.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use sluice_core::Target;

/// Renders targets for humans, hashing addresses unless told otherwise.
#[derive(Debug, Clone)]
pub struct Privacy {
    log_ips: bool,
    // std's RandomState is SipHash-1-3 with a random 128-bit key: a keyed
    // hash nobody outside the process can invert by enumerating addresses.
    key: RandomState,
}

impl Privacy {
    /// Hash addresses (`log_ips = false`) or show them.
    pub fn new(log_ips: bool) -> Self {
        Self {
            log_ips,
            key: RandomState::new(),
        }
    }

    /// The same key with a different `log_ips` (reload keeps hashes stable).
    pub fn with_log_ips(&self, log_ips: bool) -> Self {
        Self {
            log_ips,
            key: self.key.clone(),
        }
    }

    /// Whether addresses are shown raw.
    pub fn log_ips(&self) -> bool {
        self.log_ips
    }

    /// The keyed hash label of an IP target (`ip#…`).
    pub fn hashed(&self, t: &Target) -> String {
        format!("ip#{:016x}", self.key.hash_one(t))
    }

    /// A target as logs and admin output show it.
    pub fn show(&self, t: &Target) -> String {
        match t {
            Target::Ip(_) if !self.log_ips => self.hashed(t),
            t => t.to_string(),
        }
    }

    /// Whether `label` is the hashed form of `t`.
    pub fn matches(&self, label: &str, t: &Target) -> bool {
        matches!(t, Target::Ip(_)) && self.hashed(t) == label
    }
}
