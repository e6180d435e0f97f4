//! Community blocklists as compiled sets: which list names a target, by
//! which entry, and why.
//!
//! Each [`Source`] (a JabberSPAM domain list, a Matrix policy room, a hashed
//! list, an IP list) is compiled on its own — hash tables for names and
//! digests, a sorted range table for networks (see `sets`) — and never
//! merged with another: a list that drops an entry drops it here too, and a
//! hit names the one list that made it. [`Blocklists`] holds the sources in
//! force and the `except` entries that cancel hits; the engine swaps the
//! whole set atomically ([`crate::Engine::set_blocklists`]).
//!
//! Matching, exactly:
//!
//! - Domains are lower-cased, a trailing dot and a port are dropped, IDNs
//!   compared in A-label form (`bücher.example` is `xn--bcher-kva.example`).
//!   `exact` sources match the name itself; `subdomains` sources also match
//!   every name below an entry (`evil.example` lists `a.b.evil.example`).
//! - A user target (`@a:evil.example`, `a@evil.example`) is checked as a
//!   user (user rules, hashed user IDs) and through its domain.
//! - Matrix globs (`*`, `?`) are anchored at both ends: `*.evil.example`
//!   lists `a.evil.example` and not `evil.example`. Server rules compare
//!   case-insensitively; user rules compare the localpart as written.
//! - Hashed lists hold SHA-256 digests of the bare user ID and of the server
//!   name; digests are computed only when some source holds digests.
//! - IP sources match a target network that overlaps an entry (requests
//!   are grouped, IPv6 per /64 by default: see [`Target::overlaps`]).
//!
//! Lookups cost the same with ten entries or a million. On top, a small
//! cache of targets found on no list (keyed by the engine's 64-bit target
//! hash, emptied on every swap) lets the common case — nobody listed —
//! skip the lookups altogether.
//!
//! ```
//! use sluice_core::blocklist::{Blocklists, DomainMatch, ListAction, SourceBuilder};
//! use sluice_core::{Side, Target};
//!
//! let mut b = SourceBuilder::new("jabberspam", ListAction::Deny).domain_match(DomainMatch::Subdomains);
//! b.add_domain("spam.example", None)?;
//! let lists = Blocklists::new(vec![b.build().into()], Default::default());
//! let hit = lists.check(Side::Federation, &Target::server("xmpp.spam.example")?).unwrap();
//! assert_eq!((&*hit.source, hit.entry.as_str()), ("jabberspam", "spam.example"));
//! assert!(lists.check(Side::Federation, &Target::server("example.org")?).is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod parse;
mod sets;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipnet::IpNet;

use crate::policy::Side;
use crate::target::Target;
use sets::{glob_match, Addr, DigestTable, NetTable, StrTable, NO_REASON};

/// What a hit does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListAction {
    /// The request is refused.
    Deny,
    /// Counted and reported only (advisory lists, trying a list out).
    Shadow,
}

impl ListAction {
    /// `deny` or `shadow`.
    pub fn as_str(self) -> &'static str {
        match self {
            ListAction::Deny => "deny",
            ListAction::Shadow => "shadow",
        }
    }
}

impl FromStr for ListAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "deny" => Ok(ListAction::Deny),
            "shadow" => Ok(ListAction::Shadow),
            _ => Err(format!("unknown action {s:?}: expected deny or shadow")),
        }
    }
}

/// How a domain entry matches names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DomainMatch {
    /// The name itself only.
    #[default]
    Exact,
    /// The name and every name below it.
    Subdomains,
}

impl DomainMatch {
    /// `exact` or `subdomains`.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainMatch::Exact => "exact",
            DomainMatch::Subdomains => "subdomains",
        }
    }
}

impl FromStr for DomainMatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exact" => Ok(DomainMatch::Exact),
            "subdomains" => Ok(DomainMatch::Subdomains),
            _ => Err(format!("unknown match {s:?}: expected exact or subdomains")),
        }
    }
}

/// A source's hit counters. Kept by whoever loads the source (across
/// refreshes, so a swap does not reset them); decisions in dry-run mode
/// are not counted.
#[derive(Debug, Default)]
pub struct ListStats {
    deny: AtomicU64,
    shadow: AtomicU64,
}

impl ListStats {
    /// Hits that refused a request.
    pub fn denied(&self) -> u64 {
        self.deny.load(Ordering::Relaxed)
    }

    /// Hits of shadow sources.
    pub fn shadowed(&self) -> u64 {
        self.shadow.load(Ordering::Relaxed)
    }

    pub(crate) fn count(&self, action: ListAction) {
        match action {
            ListAction::Deny => &self.deny,
            ListAction::Shadow => &self.shadow,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

/// A target found on a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListHit {
    /// The source's name.
    pub source: Arc<str>,
    /// The entry that matched, as the list has it (a domain, a glob, a
    /// network, or a digest in hex).
    pub entry: String,
    /// The list's reason for the entry, or the source's own.
    pub reason: Option<Arc<str>>,
    /// What the source does.
    pub action: ListAction,
    /// The target that matched.
    pub target: Target,
}

impl fmt::Display for ListHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} listed by {} (entry {}",
            self.target, self.source, self.entry
        )?;
        if let Some(r) = &self.reason {
            write!(f, ", reason {r:?}")?;
        }
        f.write_str(")")
    }
}

/// An entry a source could not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Not a domain name.
    #[error("not a domain name: {0:?}")]
    Domain(String),
    /// A glob that would match every name (`*`): refused, never a blanket ban.
    #[error("a glob matching every name is refused: {0:?}")]
    Everything(String),
    /// Not a Matrix user ID or XMPP address.
    #[error("not a user ID: {0:?}")]
    User(String),
}

/// One compiled list.
#[derive(Debug)]
pub struct Source {
    name: Arc<str>,
    /// `blocklist.<name>`: a shadow hit's name among a decision's limits.
    report_name: &'static str,
    action: ListAction,
    side: Option<Side>,
    domain_match: DomainMatch,
    reason: Option<Arc<str>>,
    reasons: Vec<Arc<str>>,
    domains: StrTable,
    /// From `*.x` globs: names strictly below `x`.
    below: StrTable,
    server_globs: Vec<(Box<str>, u32)>,
    users: StrTable,
    user_globs: Vec<(Box<str>, u32)>,
    v4: NetTable<u32>,
    v6: NetTable<u128>,
    digests: DigestTable,
    stats: Arc<ListStats>,
}

/// The digests of a target, computed once per check.
#[derive(Default)]
struct Digests {
    user: Option<[u8; 32]>,
    domain: Option<[u8; 32]>,
}

/// SHA-256 of `s`.
pub fn sha256(s: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn hex(d: &[u8; 32]) -> String {
    use fmt::Write;
    d.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The domain a target is checked through: a server's name, a user's
/// domain; without a port.
pub fn domain_of(t: &Target) -> Option<&str> {
    let host = match t {
        Target::Server(s) => s,
        Target::User(u) => match u.strip_prefix('@') {
            Some(rest) => rest.split_once(':').map(|(_, d)| d)?,
            None => u.rsplit_once('@').map(|(_, d)| d)?,
        },
        _ => return None,
    };
    Some(strip_port(host))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// A domain entry as sources keep it: lower-cased, A-labels, no trailing
/// dot, no port.
pub fn normalize_domain(s: &str) -> Result<String, EntryError> {
    let bad = || EntryError::Domain(s.to_owned());
    let n = crate::target::normalize_server(s.trim()).ok_or_else(bad)?;
    Ok(strip_port(&n).to_owned())
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?'])
}

impl Source {
    /// The source's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// What a hit does.
    pub fn action(&self) -> ListAction {
        self.action
    }

    /// `blocklist.<name>`: how a shadow hit appears among a decision's
    /// limits (a shadow-denied report), so it is counted and logged like a
    /// shadow limit.
    pub fn report_name(&self) -> &'static str {
        self.report_name
    }

    /// The side it applies to (`None`: both).
    pub fn side(&self) -> Option<Side> {
        self.side
    }

    /// Its hit counters.
    pub fn stats(&self) -> &Arc<ListStats> {
        &self.stats
    }

    /// Entries held (after duplicates and nested networks are folded).
    pub fn len(&self) -> usize {
        self.domains.len()
            + self.below.len()
            + self.server_globs.len()
            + self.users.len()
            + self.user_globs.len()
            + self.v4.len()
            + self.v6.len()
            + self.digests.len()
    }

    /// Whether the source holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the compiled sets.
    pub fn bytes(&self) -> usize {
        self.domains.bytes()
            + self.below.bytes()
            + self.users.bytes()
            + self.v4.bytes()
            + self.v6.bytes()
            + self.digests.bytes()
            + self.reasons.iter().map(|r| r.len() + 16).sum::<usize>()
            + (self.server_globs.iter().chain(&self.user_globs))
                .map(|(g, _)| g.len() + 24)
                .sum::<usize>()
    }

    fn applies(&self, side: Option<Side>) -> bool {
        match (self.side, side) {
            (Some(mine), Some(asked)) => mine == asked,
            _ => true,
        }
    }

    fn reason(&self, ix: u32) -> Option<Arc<str>> {
        if ix == NO_REASON {
            self.reason.clone()
        } else {
            self.reasons
                .get(ix as usize)
                .cloned()
                .or_else(|| self.reason.clone())
        }
    }

    /// The entry listing `t`, if any: `(entry, reason index)`.
    fn find(&self, t: &Target, digests: &Digests) -> Option<(String, u32)> {
        match t {
            Target::Ip(IpNet::V4(n)) => {
                let s = u32::from(n.network());
                let (start, len, r) = self.v4.find(s, s.last(n.prefix_len()))?;
                Some((format!("{}/{len}", std::net::Ipv4Addr::from(start)), r))
            }
            Target::Ip(IpNet::V6(n)) => {
                let s = u128::from(n.network());
                let (start, len, r) = self.v6.find(s, s.last(n.prefix_len()))?;
                Some((format!("{}/{len}", std::net::Ipv6Addr::from(start)), r))
            }
            Target::User(u) => {
                if let Some(i) = self.users.get(u) {
                    let (e, r) = self.users.at(i);
                    return Some((e.to_owned(), r));
                }
                if let Some((g, r)) = self
                    .user_globs
                    .iter()
                    .find(|(g, _)| glob_match(g.as_bytes(), u.as_bytes()))
                {
                    return Some((g.to_string(), *r));
                }
                if let Some(i) = digests.user.and_then(|d| self.digests.get(&d)) {
                    let (d, r) = self.digests.at(i);
                    return Some((hex(d), r));
                }
                self.find_domain(domain_of(t)?, digests)
            }
            Target::Server(_) => self.find_domain(domain_of(t)?, digests),
            Target::Appservice(_) | Target::Global => None,
        }
    }

    fn find_domain(&self, d: &str, digests: &Digests) -> Option<(String, u32)> {
        let entry = |t: &StrTable, i| {
            let (e, r): (&str, u32) = t.at(i);
            (e.to_owned(), r)
        };
        if let Some(i) = self.domains.get(d) {
            return Some(entry(&self.domains, i));
        }
        // Walk the labels: `a.b.c` → `b.c` → `c`.
        let mut rest = d;
        while let Some((_, parent)) = rest.split_once('.') {
            if self.domain_match == DomainMatch::Subdomains {
                if let Some(i) = self.domains.get(parent) {
                    return Some(entry(&self.domains, i));
                }
            }
            if let Some(i) = self.below.get(parent) {
                let (e, r) = self.below.at(i);
                return Some((format!("*.{e}"), r));
            }
            rest = parent;
        }
        if let Some((g, r)) = self
            .server_globs
            .iter()
            .find(|(g, _)| glob_match(g.as_bytes(), d.as_bytes()))
        {
            return Some((g.to_string(), *r));
        }
        let i = digests.domain.and_then(|h| self.digests.get(&h))?;
        let (h, r) = self.digests.at(i);
        Some((hex(h), r))
    }
}

/// Builds a [`Source`], entry by entry.
#[derive(Debug)]
pub struct SourceBuilder {
    source: Source,
    reason_ix: HashMap<Arc<str>, u32>,
}

impl SourceBuilder {
    /// An empty source.
    pub fn new(name: &str, action: ListAction) -> Self {
        Self {
            source: Source {
                name: name.into(),
                report_name: crate::policy::intern(&format!("blocklist.{name}")),
                action,
                side: None,
                domain_match: DomainMatch::Exact,
                reason: None,
                reasons: Vec::new(),
                domains: StrTable::default(),
                below: StrTable::default(),
                server_globs: Vec::new(),
                users: StrTable::default(),
                user_globs: Vec::new(),
                v4: NetTable::default(),
                v6: NetTable::default(),
                digests: DigestTable::new(),
                stats: Arc::default(),
            },
            reason_ix: HashMap::new(),
        }
    }

    /// Only requests of this side (`None`: both).
    pub fn side(mut self, side: Option<Side>) -> Self {
        self.source.side = side;
        self
    }

    /// How domain entries match.
    pub fn domain_match(mut self, m: DomainMatch) -> Self {
        self.source.domain_match = m;
        self
    }

    /// The reason given for entries that carry none.
    pub fn reason(mut self, reason: Option<&str>) -> Self {
        self.source.reason = reason.map(Into::into);
        self
    }

    /// Counters shared with the previous build of the same source.
    pub fn stats(mut self, stats: Arc<ListStats>) -> Self {
        self.source.stats = stats;
        self
    }

    fn reason_index(&mut self, reason: Option<&str>) -> u32 {
        let Some(r) = reason.map(str::trim).filter(|r| !r.is_empty()) else {
            return NO_REASON;
        };
        // Lists repeat a few reasons (an SBL id per entry is the exception).
        if let Some(&i) = self.reason_ix.get(r) {
            return i;
        }
        let r: Arc<str> = r.chars().take(256).collect::<String>().into();
        let i = self.source.reasons.len() as u32;
        self.source.reasons.push(r.clone());
        self.reason_ix.insert(r, i);
        i
    }

    /// Entries so far (duplicates counted once; nested networks not yet folded).
    pub fn len(&self) -> usize {
        self.source.len()
    }

    /// Whether no entry was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a domain (normalised: see the module docs).
    pub fn add_domain(&mut self, d: &str, reason: Option<&str>) -> Result<(), EntryError> {
        let d = normalize_domain(d)?;
        let r = self.reason_index(reason);
        self.source.domains.insert(&d, r);
        Ok(())
    }

    /// Adds a network (an address is a /32 or /128).
    pub fn add_network(&mut self, net: IpNet, reason: Option<&str>) {
        let r = self.reason_index(reason);
        match net.trunc() {
            IpNet::V4(n) => self.source.v4.insert(u32::from(n.network()), n.prefix_len(), r),
            IpNet::V6(n) => match n.network().to_ipv4_mapped() {
                Some(v4) if n.prefix_len() >= 96 => {
                    self.source.v4.insert(u32::from(v4), n.prefix_len() - 96, r)
                }
                _ => self.source.v6.insert(u128::from(n.network()), n.prefix_len(), r),
            },
        }
    }

    /// Adds an address.
    pub fn add_ip(&mut self, ip: IpAddr, reason: Option<&str>) {
        self.add_network(IpNet::from(ip), reason);
    }

    /// Adds a SHA-256 digest (of a bare user ID or a server name).
    pub fn add_digest(&mut self, d: [u8; 32], reason: Option<&str>) {
        let r = self.reason_index(reason);
        self.source.digests.insert(d, r);
    }

    /// Adds a Matrix server rule: a glob (`*`, `?`), case-insensitive.
    pub fn add_server_glob(&mut self, glob: &str, reason: Option<&str>) -> Result<(), EntryError> {
        let g = glob.trim().to_ascii_lowercase();
        if g.bytes().all(|b| b == b'*') {
            return Err(EntryError::Everything(glob.to_owned()));
        }
        if !has_wildcard(&g) {
            return self.add_domain(&g, reason);
        }
        let r = self.reason_index(reason);
        match g.strip_prefix("*.").filter(|rest| !has_wildcard(rest)) {
            Some(rest) => {
                let rest = normalize_domain(rest)?;
                self.source.below.insert(&rest, r);
            }
            None => self.source.server_globs.push((g.into(), r)),
        }
        Ok(())
    }

    /// Adds a Matrix user rule: a glob over user IDs (the server part
    /// compared case-insensitively when it has no wildcard).
    pub fn add_user_glob(&mut self, glob: &str, reason: Option<&str>) -> Result<(), EntryError> {
        let g = glob.trim();
        if g.bytes().all(|b| b == b'*') {
            return Err(EntryError::Everything(glob.to_owned()));
        }
        let r = self.reason_index(reason);
        if !has_wildcard(g) {
            let t = Target::user(g).map_err(|_| EntryError::User(g.to_owned()))?;
            if let Target::User(u) = t {
                self.source.users.insert(&u, r);
            }
            return Ok(());
        }
        let g = match g.split_once(':') {
            Some((local, server)) if g.starts_with('@') => format!("{local}:{}", server.to_ascii_lowercase()),
            _ => g.to_owned(),
        };
        self.source.user_globs.push((g.into(), r));
        Ok(())
    }

    /// The finished source.
    pub fn build(mut self) -> Source {
        self.source.v4.finish();
        self.source.v6.finish();
        self.source.domains.shrink();
        self.source.below.shrink();
        self.source.users.shrink();
        self.source.digests.shrink();
        self.source.server_globs.shrink_to_fit();
        self.source.user_globs.shrink_to_fit();
        self.source
    }
}

/// Targets and networks whose list hits are cancelled (`[blocklist]
/// except`): not an exemption from limits or bans.
#[derive(Debug, Clone, Default)]
pub struct Except {
    targets: HashSet<Target>,
    networks: Vec<IpNet>,
}

impl Except {
    /// Cancels hits on `t`; a server also covers its users, a network
    /// every address in it.
    pub fn add(&mut self, t: Target) {
        match t {
            Target::Ip(net) => self.networks.push(net),
            Target::Server(s) => {
                let d = strip_port(&s).to_owned();
                self.targets.insert(Target::Server(d.into()));
            }
            t => {
                self.targets.insert(t);
            }
        }
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.networks.is_empty()
    }

    /// Whether hits on `t` are cancelled.
    pub fn covers(&self, t: &Target) -> bool {
        match t {
            Target::Ip(n) => self.networks.iter().any(|e| e.contains(n)),
            t => {
                self.targets.contains(t)
                    || domain_of(t).is_some_and(|d| self.targets.contains(&Target::Server(d.into())))
            }
        }
    }
}

/// Slots of the not-listed cache (256 KiB).
const CACHE_SLOTS: usize = 1 << 15;

/// The sources in force, the `except` entries, and a cache of targets found
/// on none.
pub struct Blocklists {
    sources: Vec<Arc<Source>>,
    except: Except,
    digests: bool,
    /// Target hashes (mixed with the side) found on no source.
    cache: Box<[AtomicU64]>,
}

impl fmt::Debug for Blocklists {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blocklists")
            .field(
                "sources",
                &self.sources.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .field("except", &self.except)
            .finish_non_exhaustive()
    }
}

impl Default for Blocklists {
    fn default() -> Self {
        Self::new(Vec::new(), Except::default())
    }
}

impl Blocklists {
    /// The given sources (checked in this order) and exceptions.
    pub fn new(sources: Vec<Arc<Source>>, except: Except) -> Self {
        let cache = if sources.is_empty() {
            Box::default()
        } else {
            (0..CACHE_SLOTS).map(|_| AtomicU64::new(0)).collect()
        };
        Self {
            digests: sources.iter().any(|s| s.digests.len() > 0),
            sources,
            except,
            cache,
        }
    }

    /// Whether no source is loaded.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// The sources, in check order.
    pub fn sources(&self) -> &[Arc<Source>] {
        &self.sources
    }

    /// The source named `name`.
    pub fn source(&self, name: &str) -> Option<&Arc<Source>> {
        self.sources.iter().find(|s| &*s.name == name)
    }

    /// The exceptions.
    pub fn except(&self) -> &Except {
        &self.except
    }

    /// Bytes held: every source's sets and the cache.
    pub fn bytes(&self) -> usize {
        self.sources.iter().map(|s| s.bytes()).sum::<usize>() + self.cache.len() * 8
    }

    fn digests_of(&self, t: &Target) -> Digests {
        if !self.digests {
            return Digests::default();
        }
        Digests {
            user: match t {
                Target::User(u) => Some(sha256(u)),
                _ => None,
            },
            domain: domain_of(t).map(sha256),
        }
    }

    fn hit(s: &Source, t: &Target, (entry, r): (String, u32)) -> ListHit {
        ListHit {
            source: s.name.clone(),
            entry,
            reason: s.reason(r),
            action: s.action,
            target: t.clone(),
        }
    }

    /// The hit that decides for `t` on `side`: the first deny source's,
    /// else the first shadow source's; `None` when no source lists it or
    /// `except` covers it.
    pub fn check(&self, side: Side, t: &Target) -> Option<ListHit> {
        if self.sources.is_empty() {
            return None;
        }
        let digests = self.digests_of(t);
        let mut shadow = None;
        for s in self.sources.iter().filter(|s| s.applies(Some(side))) {
            if s.action == ListAction::Shadow && shadow.is_some() {
                continue;
            }
            if let Some(found) = s.find(t, &digests) {
                if self.except.covers(t) {
                    return None;
                }
                let hit = Self::hit(s, t, found);
                if hit.action == ListAction::Deny {
                    return Some(hit);
                }
                shadow = Some(hit);
            }
        }
        shadow
    }

    /// [`Blocklists::check`] through the not-listed cache; `hash` is the
    /// target's keyed 64-bit hash (the engine's), `count` whether the hit
    /// is counted in the source's stats.
    #[inline]
    pub(crate) fn check_cached(&self, side: Side, t: &Target, hash: u64, count: bool) -> Option<ListHit> {
        if self.sources.is_empty() || matches!(t, Target::Appservice(_) | Target::Global) {
            return None;
        }
        let key = (hash ^ (side as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)).max(1);
        let slot = &self.cache[key as usize & (CACHE_SLOTS - 1)];
        if slot.load(Ordering::Relaxed) == key {
            return None;
        }
        let hit = self.check(side, t);
        match &hit {
            None => slot.store(key, Ordering::Relaxed),
            Some(h) if count => {
                if let Some(s) = self.source(&h.source) {
                    s.stats.count(h.action);
                }
            }
            Some(_) => {}
        }
        hit
    }

    /// Every source listing `t` (either side when `side` is `None`),
    /// `except` aside: what `sluice blocklist check` shows.
    pub fn matches(&self, side: Option<Side>, t: &Target) -> Vec<ListHit> {
        let digests = self.digests_of(t);
        self.sources
            .iter()
            .filter(|s| s.applies(side))
            .filter_map(|s| s.find(t, &digests).map(|f| Self::hit(s, t, f)))
            .collect()
    }
}

#[cfg(test)]
mod tests;
