//! Key layout.
//!
//! ```text
//! {prefix}r:{limit}:{{target}}   GCRA bucket: the TAT in ns since the epoch (string), PX until the TAT
//! {prefix}c:{limit}:{{target}}   concurrency slot: sorted set of lease ids scored by expiry (µs)
//! {prefix}l:{{lease id}}         lease record: the slot keys it holds, one per line, PX until expiry
//! {prefix}bans                   hash: target → encoded ban
//! {prefix}leases                 sorted set: live lease ids scored by expiry (µs), for the gauge
//! ```
//!
//! The `{target}` hash tag puts every key of one target in one Cluster slot,
//! so a decision's buckets and slots for one target are one atomic script.
//! Global limits share the tag `{global}`.

use sluice_core::Target;

#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// A limit name as it appears in a key: braces would move the hash tag.
fn clean(limit: &str) -> std::borrow::Cow<'_, str> {
    if limit.contains(['{', '}']) {
        limit.replace(['{', '}'], "_").into()
    } else {
        limit.into()
    }
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The hash tag of a target (what decides its Cluster slot).
    pub(crate) fn tag(target: &Target) -> String {
        target.to_string()
    }

    pub(crate) fn bucket(&self, limit: &str, tag: &str) -> String {
        format!("{}r:{}:{{{}}}", self.prefix, clean(limit), tag)
    }

    pub(crate) fn slot(&self, limit: &str, tag: &str) -> String {
        format!("{}c:{}:{{{}}}", self.prefix, clean(limit), tag)
    }

    pub(crate) fn lease(&self, id: u128) -> String {
        format!("{}l:{{{:032x}}}", self.prefix, id)
    }

    pub(crate) fn lease_index(&self) -> String {
        format!("{}leases", self.prefix)
    }

    pub(crate) fn bans(&self) -> String {
        format!("{}bans", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_target_one_tag() {
        let k = Keys::new("sluice:");
        let t: Target = "ip:203.0.113.7".parse().expect("target");
        let tag = Keys::tag(&t);
        assert_eq!(k.bucket("login", &tag), "sluice:r:login:{ip:203.0.113.7}");
        assert_eq!(k.slot("conn", &tag), "sluice:c:conn:{ip:203.0.113.7}");
        assert_eq!(k.bucket("a{b}", "global"), "sluice:r:a_b_:{global}");
        assert_eq!(k.lease(1), "sluice:l:{00000000000000000000000000000001}");
    }
}
