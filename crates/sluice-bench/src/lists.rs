//! The blocklist section: the same decision with and without 100k domains,
//! 50k CIDRs and 10k SHA-256 digests loaded (three sources), interleaved in
//! one run, and the bytes the sets hold per entry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Instant;

use sluice_core::blocklist::{Blocklists, DomainMatch, Except, ListAction, SourceBuilder};
use sluice_core::{CoarseClock, Engine, MemoryStore, Request, Target};

use crate::contenders::{ip_of, per_sec, policy, Rng, Seqs, ACTION, GLOBAL_PER_SEC, TARGET_PER_SEC};
use crate::harness::Contender;

/// List sizes of the run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Domains (a `subdomains` source, as the JabberSPAM list is used).
    pub domains: u32,
    /// CIDRs (90% IPv4, 10% IPv6), none covering a bench key's address.
    pub cidrs: u32,
    /// SHA-256 digests of names no key uses.
    pub hashes: u32,
}

/// The three sources, built as a refresh builds them.
pub fn build(sizes: Sizes, seed: u64) -> Blocklists {
    let mut rng = Rng::new(seed ^ 0xB10C);
    let mut d = SourceBuilder::new("domains", ListAction::Deny).domain_match(DomainMatch::Subdomains);
    for i in 0..sizes.domains {
        let _ = d.add_domain(&format!("spam{i}-{:x}.example", rng.next_u64() & 0xFFFF), None);
    }
    let mut c = SourceBuilder::new("cidrs", ListAction::Deny);
    for i in 0..sizes.cidrs {
        if i % 10 == 9 {
            let a = Ipv6Addr::from((0x2a00u128 << 112) | (u128::from(rng.next_u64()) << 48));
            c.add_network(
                ipnet::IpNet::new(IpAddr::V6(a), 48)
                    .expect("a /48 is valid")
                    .trunc(),
                Some("SBL"),
            );
        } else {
            // Anywhere but 10.0.0.0/8, where the bench keys live.
            let mut a = rng.next_u64() as u32;
            if a >> 24 == 10 {
                a ^= 0x8000_0000;
            }
            let len = 20 + (rng.below(13) as u8);
            c.add_network(
                ipnet::IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), len)
                    .expect("a /20–/32 is valid")
                    .trunc(),
                None,
            );
        }
    }
    let mut h = SourceBuilder::new("hashes", ListAction::Deny);
    for i in 0..sizes.hashes {
        h.add_digest(
            sluice_core::blocklist::sha256(&format!("@spam{i}:hashed.example")),
            None,
        );
    }
    let sources = [d, c, h].into_iter().map(|b| Arc::new(b.build())).collect();
    Blocklists::new(sources, Except::default())
}

/// Entries held by every source.
pub fn entries(l: &Blocklists) -> usize {
    l.sources().iter().map(|s| s.len()).sum()
}

/// The user of key `i`: a Matrix ID on one of 1,000 servers.
pub fn user_of(i: u32) -> Target {
    Target::User(format!("@u{i}:s{}.example.org", i % 1000).into())
}

/// `Engine::check` of the bench decision (per-IP + global), optionally
/// carrying a user too, on an engine with or without lists.
pub struct ListBench<'a> {
    name: &'static str,
    engine: Engine,
    seqs: &'a Seqs,
    /// Per thread, the user of each key of the sequence (when users are sent).
    users: Option<Vec<Vec<Target>>>,
}

impl<'a> ListBench<'a> {
    /// An engine like the speed section's, lists swapped in when given.
    pub fn new(
        name: &'static str,
        max_keys: usize,
        clock: &CoarseClock,
        seqs: &'a Seqs,
        lists: Option<Arc<Blocklists>>,
        with_users: bool,
    ) -> Self {
        let engine = Engine::new(
            policy(per_sec(TARGET_PER_SEC), per_sec(GLOBAL_PER_SEC)),
            Arc::new(MemoryStore::new(max_keys)),
            Arc::new(clock.clone()),
        );
        if let Some(l) = lists {
            engine.set_blocklists(l);
        }
        let users = with_users.then(|| {
            seqs.idx
                .iter()
                .map(|s| s.iter().map(|&i| user_of(i)).collect())
                .collect()
        });
        Self {
            name,
            engine,
            seqs,
            users,
        }
    }

    fn check(&self, t: usize, j: usize) -> bool {
        let seq = &self.seqs.ips[t];
        let k = j & (seq.len() - 1);
        let mut req = Request::client(ACTION).ip(seq[k]);
        if let Some(users) = &self.users {
            req = req.user(users[t][k].clone());
        }
        self.engine.check(&req).is_ok_and(|d| d.allowed)
    }

    /// Touches every key once (stores and the not-listed cache warm).
    pub fn populate(&self, keys: u32) {
        for i in 0..keys {
            let mut req = Request::client(ACTION).ip(ip_of(i));
            if self.users.is_some() {
                req = req.user(user_of(i));
            }
            let _ = self.engine.check(&req);
        }
    }
}

impl Contender for ListBench<'_> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn run(&self, t: usize, start: usize, ops: usize) -> u64 {
        (0..ops).map(|j| u64::from(self.check(t, start + j))).sum()
    }
}

/// Builds the lists, timing it and measuring the resident-set growth.
pub fn build_measured(sizes: Sizes, seed: u64) -> (Arc<Blocklists>, f64, u64) {
    let rss0 = crate::children::status_kib("VmRSS");
    let t0 = Instant::now();
    let l = Arc::new(build(sizes, seed));
    let secs = t0.elapsed().as_secs_f64();
    let rss1 = crate::children::status_kib("VmRSS");
    (l, secs, rss1.saturating_sub(rss0) * 1024)
}
