//! The compiled sets of one source: lookups whose cost does not grow with
//! the list.
//!
//! - [`StrTable`]: names (domains, user IDs) in one arena, found through an
//!   open-addressing table of `(index, hash tag)` slots — a miss, the common
//!   case, compares tags in one cache line and never touches the arena.
//! - [`DigestTable`]: SHA-256 digests, the same table over 32-byte keys.
//! - [`NetTable`]: CIDRs as a sorted table of disjoint ranges (nested
//!   entries folded into the outermost, which is the one that matches),
//!   with a first-16-bits index over large tables so a lookup searches one
//!   small bucket.
//!
//! Hashes are keyed with a random seed per table, so a publisher cannot
//! craft entries that pile onto one slot.

use std::hash::BuildHasher;

/// No reason recorded for an entry.
pub(crate) const NO_REASON: u32 = u32::MAX;

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

/// Slots for `n` entries: a power of two, at most half full (a miss probes
/// ~2.5 slots on average).
fn slots_for(n: usize) -> usize {
    (n.max(4) * 2).next_power_of_two()
}

/// Strings in one arena, found by an open-addressing table.
#[derive(Debug, Clone, Default)]
pub(crate) struct StrTable {
    arena: String,
    /// End of entry `i` in `arena` (its start is the previous end).
    ends: Vec<u32>,
    /// Per entry: its reason's index, or [`NO_REASON`]; empty when no
    /// entry has one.
    reasons: Vec<u32>,
    /// `(entry + 1) << 32 | hash tag`; 0 is empty.
    slots: Box<[u64]>,
    hasher: foldhash::fast::RandomState,
}

impl StrTable {
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    fn entry(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.arena[start..self.ends[i] as usize]
    }

    fn hash(&self, s: &str) -> u64 {
        self.hasher.hash_one(s)
    }

    /// Finds `s`: its entry index.
    #[inline]
    pub(crate) fn get(&self, s: &str) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let h = self.hash(s);
        let tag = h & 0xFFFF_FFFF;
        let mask = self.slots.len() - 1;
        let mut i = (h >> 32) as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                return None;
            }
            if slot & 0xFFFF_FFFF == tag {
                let e = (slot >> 32) as usize - 1;
                if self.entry(e) == s {
                    return Some(e);
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// Entry `i`'s text and reason index.
    pub(crate) fn at(&self, i: usize) -> (&str, u32) {
        (self.entry(i), self.reasons.get(i).copied().unwrap_or(NO_REASON))
    }

    fn place(slots: &mut [u64], h: u64, entry: usize) {
        let mask = slots.len() - 1;
        let mut i = (h >> 32) as usize & mask;
        while slots[i] != 0 {
            i = (i + 1) & mask;
        }
        slots[i] = ((entry as u64 + 1) << 32) | (h & 0xFFFF_FFFF);
    }

    /// Adds `s` (kept once: a repeated entry keeps its first reason).
    /// `false` when it was there already or the arena is full (4 GiB).
    pub(crate) fn insert(&mut self, s: &str, reason: u32) -> bool {
        if self.get(s).is_some() || self.arena.len() + s.len() > u32::MAX as usize {
            return false;
        }
        let n = self.ends.len();
        if (n + 1) * 2 > self.slots.len() {
            let mut slots = vec![0u64; slots_for(n + 1)].into_boxed_slice();
            for e in 0..n {
                Self::place(&mut slots, self.hash(self.entry(e)), e);
            }
            self.slots = slots;
        }
        self.arena.push_str(s);
        self.ends.push(self.arena.len() as u32);
        // Reasons are kept only once some entry has one.
        if reason != NO_REASON || !self.reasons.is_empty() {
            self.reasons.resize(n, NO_REASON);
            self.reasons.push(reason);
        }
        let h = self.hash(s);
        Self::place(&mut self.slots, h, n);
        true
    }

    /// Returns the spare capacity grown while building.
    pub(crate) fn shrink(&mut self) {
        self.arena.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.reasons.shrink_to_fit();
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.arena.capacity() + self.ends.capacity() * 4 + self.reasons.capacity() * 4 + self.slots.len() * 8
    }
}

/// SHA-256 digests, found by an open-addressing table.
#[derive(Debug, Clone, Default)]
pub(crate) struct DigestTable {
    digests: Vec<[u8; 32]>,
    reasons: Vec<u32>,
    /// Entry + 1; 0 is empty.
    slots: Box<[u32]>,
    seed: u64,
}

impl DigestTable {
    pub(crate) fn new() -> Self {
        Self {
            seed: foldhash::fast::RandomState::default().hash_one(0u8),
            ..Self::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.digests.len()
    }

    fn hash(&self, d: &[u8; 32]) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&d[..8]);
        fmix64(u64::from_le_bytes(w) ^ self.seed)
    }

    pub(crate) fn get(&self, d: &[u8; 32]) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.hash(d) as usize & mask;
        loop {
            let e = self.slots[i] as usize;
            if e == 0 {
                return None;
            }
            if &self.digests[e - 1] == d {
                return Some(e - 1);
            }
            i = (i + 1) & mask;
        }
    }

    pub(crate) fn at(&self, i: usize) -> (&[u8; 32], u32) {
        (
            &self.digests[i],
            self.reasons.get(i).copied().unwrap_or(NO_REASON),
        )
    }

    fn place(&self, slots: &mut [u32], d: &[u8; 32], e: usize) {
        let mask = slots.len() - 1;
        let mut i = self.hash(d) as usize & mask;
        while slots[i] != 0 {
            i = (i + 1) & mask;
        }
        slots[i] = e as u32 + 1;
    }

    pub(crate) fn insert(&mut self, d: [u8; 32], reason: u32) -> bool {
        if self.get(&d).is_some() || self.digests.len() >= (u32::MAX / 2) as usize {
            return false;
        }
        let n = self.digests.len();
        if (n + 1) * 2 > self.slots.len() {
            let mut slots = vec![0u32; slots_for(n + 1)].into_boxed_slice();
            for (e, d) in self.digests.iter().enumerate() {
                self.place(&mut slots, d, e);
            }
            self.slots = slots;
        }
        // Reasons are kept only once some entry has one.
        if reason != NO_REASON || !self.reasons.is_empty() {
            self.reasons.resize(n, NO_REASON);
            self.reasons.push(reason);
        }
        let mut slots = std::mem::take(&mut self.slots);
        self.place(&mut slots, &d, n);
        self.slots = slots;
        self.digests.push(d);
        true
    }

    pub(crate) fn shrink(&mut self) {
        self.digests.shrink_to_fit();
        self.reasons.shrink_to_fit();
    }

    pub(crate) fn bytes(&self) -> usize {
        self.digests.capacity() * 32 + self.reasons.capacity() * 4 + self.slots.len() * 4
    }
}

/// An address family's integer.
pub(crate) trait Addr: Copy + Ord + Default + std::fmt::Debug {
    /// The first 16 bits (the index bucket).
    fn top16(self) -> usize;
    /// The last address of the network starting at `self` with `len` bits.
    fn last(self, len: u8) -> Self;
    /// The prefix length of the aligned range `start..=end`.
    fn prefix(start: Self, end: Self) -> u8;
}

impl Addr for u32 {
    fn top16(self) -> usize {
        (self >> 16) as usize
    }
    fn last(self, len: u8) -> Self {
        self | u32::MAX.checked_shr(u32::from(len)).unwrap_or(0)
    }
    fn prefix(start: Self, end: Self) -> u8 {
        (end - start).leading_zeros() as u8
    }
}

impl Addr for u128 {
    fn top16(self) -> usize {
        (self >> 112) as usize
    }
    fn last(self, len: u8) -> Self {
        self | u128::MAX.checked_shr(u32::from(len)).unwrap_or(0)
    }
    fn prefix(start: Self, end: Self) -> u8 {
        (end - start).leading_zeros() as u8
    }
}

/// Tables at least this large get the first-16-bits index (256 KiB, a few
/// bytes per entry at this size).
const INDEX_FROM: usize = 16_384;

/// CIDRs of one family: sorted, disjoint `(start, end)` ranges.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetTable<A: Addr> {
    /// While building: every CIDR added, with its reason.
    pending: Vec<(A, A, u32)>,
    ranges: Vec<(A, A)>,
    reasons: Vec<u32>,
    /// `index[b]`: the first range whose start's top 16 bits are ≥ `b`
    /// (65,537 entries), or empty.
    index: Box<[u32]>,
}

impl<A: Addr> NetTable<A> {
    pub(crate) fn len(&self) -> usize {
        self.ranges.len() + self.pending.len()
    }

    pub(crate) fn insert(&mut self, start: A, len: u8, reason: u32) {
        self.pending.push((start, start.last(len), reason));
    }

    /// Sorts, folds nested CIDRs into the outermost, builds the index.
    pub(crate) fn finish(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut ranges: Vec<(A, A)> = Vec::with_capacity(pending.len());
        let mut reasons = Vec::with_capacity(pending.len());
        for (s, e, r) in pending {
            if ranges.last().is_some_and(|&(_, le)| s <= le) {
                continue;
            }
            ranges.push((s, e));
            reasons.push(r);
        }
        if reasons.iter().all(|&r| r == NO_REASON) {
            reasons = Vec::new();
        }
        ranges.shrink_to_fit();
        reasons.shrink_to_fit();
        self.index = if ranges.len() >= INDEX_FROM {
            let mut index = vec![0u32; 65_537];
            let mut r = 0;
            for (b, slot) in index.iter_mut().enumerate() {
                while r < ranges.len() && ranges[r].0.top16() < b {
                    r += 1;
                }
                *slot = r as u32;
            }
            index.into_boxed_slice()
        } else {
            Box::default()
        };
        self.ranges = ranges;
        self.reasons = reasons;
    }

    /// The range overlapping `start..=end`, if any: `(start, prefix, reason)`.
    #[inline]
    pub(crate) fn find(&self, start: A, end: A) -> Option<(A, u8, u32)> {
        // The candidate is the last range starting at or before `end`;
        // ranges are disjoint and sorted, so ends are sorted too, and if it
        // ends before `start` no earlier one reaches it.
        let pos = if self.index.is_empty() {
            self.ranges.partition_point(|r| r.0 <= end)
        } else {
            let b = end.top16();
            let (lo, hi) = (self.index[b] as usize, self.index[b + 1] as usize);
            lo + self.ranges[lo..hi].partition_point(|r| r.0 <= end)
        };
        let i = pos.checked_sub(1)?;
        let (s, e) = self.ranges[i];
        (e >= start).then(|| {
            (
                s,
                A::prefix(s, e),
                self.reasons.get(i).copied().unwrap_or(NO_REASON),
            )
        })
    }

    pub(crate) fn bytes(&self) -> usize {
        self.ranges.capacity() * std::mem::size_of::<(A, A)>()
            + self.reasons.capacity() * 4
            + self.index.len() * 4
    }
}

/// Whether `s` matches the glob `p`, anchored at both ends: `*` is any run
/// of bytes (empty too), `?` exactly one. Iterative with one backtrack
/// point, so linear-ish and never recursive.
pub(crate) fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The naive oracle: recursive glob.
    fn naive_glob(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(b'*'), _) => naive_glob(&p[1..], s) || (!s.is_empty() && naive_glob(p, &s[1..])),
            (Some(_), None) => false,
            (Some(&c), Some(&d)) => (c == b'?' || c == d) && naive_glob(&p[1..], &s[1..]),
        }
    }

    #[test]
    fn globs_are_anchored() {
        assert!(glob_match(b"*.example.org", b"a.example.org"));
        assert!(!glob_match(b"*.example.org", b"example.org"));
        assert!(!glob_match(b"example.org", b"example.org.evil"));
        assert!(glob_match(b"ex?mple.org", b"example.org"));
        assert!(!glob_match(b"ex?mple.org", b"exmple.org"));
        assert!(glob_match(b"*", b""));
        assert!(glob_match(b"@*:evil.org", b"@spam:evil.org"));
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_naive_oracle(p in "[ab*?.]{0,8}", s in "[ab.]{0,10}") {
            prop_assert_eq!(glob_match(p.as_bytes(), s.as_bytes()), naive_glob(p.as_bytes(), s.as_bytes()));
        }

        #[test]
        fn str_table_agrees_with_a_hash_set(words in proptest::collection::vec("[a-d]{0,4}", 0..200), probes in proptest::collection::vec("[a-d]{0,4}", 0..50)) {
            let mut t = StrTable::default();
            let mut oracle = std::collections::HashSet::new();
            for w in &words {
                prop_assert_eq!(t.insert(w, NO_REASON), oracle.insert(w.clone()));
            }
            for p in probes.iter().chain(&words) {
                prop_assert_eq!(t.get(p).map(|i| t.at(i).0.to_owned()), oracle.get(p).cloned());
            }
        }

        #[test]
        fn net_table_agrees_with_a_scan(nets in proptest::collection::vec((any::<u32>(), 8u8..=32), 0..300), probes in proptest::collection::vec((any::<u32>(), 16u8..=32), 0..100)) {
            let mut t = NetTable::<u32>::default();
            for &(a, l) in &nets {
                let s = a & !u32::MAX.checked_shr(u32::from(l)).unwrap_or(0);
                t.insert(s, l, NO_REASON);
            }
            t.finish();
            for &(a, l) in probes.iter().chain(&nets) {
                let s = a & !u32::MAX.checked_shr(u32::from(l)).unwrap_or(0);
                let e = s.last(l);
                let naive = nets.iter().any(|&(na, nl)| {
                    let ns = na & !u32::MAX.checked_shr(u32::from(nl)).unwrap_or(0);
                    ns <= e && ns.last(nl) >= s
                });
                let found = t.find(s, e);
                prop_assert_eq!(found.is_some(), naive);
                if let Some((fs, fl, _)) = found {
                    // The entry reported is one of those added, and overlaps.
                    prop_assert!(nets.iter().any(|&(na, nl)| nl == fl && (na & !u32::MAX.checked_shr(u32::from(nl)).unwrap_or(0)) == fs));
                    prop_assert!(fs <= e && fs.last(fl) >= s);
                }
            }
        }
    }

    #[test]
    fn the_index_finds_what_the_search_finds() {
        let mut t = NetTable::<u32>::default();
        for i in 0..(INDEX_FROM as u32 * 2) {
            t.insert(i.wrapping_mul(0x9E37_79B9) & 0xFFFF_FF00, 24, NO_REASON);
        }
        t.insert(0x0A00_0000, 8, 7);
        t.finish();
        assert!(!t.index.is_empty());
        assert_eq!(t.find(0x0A01_0203, 0x0A01_0203), Some((0x0A00_0000, 8, 7)));
        for i in 0..1000u32 {
            let a = i.wrapping_mul(0x9E37_79B9) & 0xFFFF_FF00;
            assert!(t.find(a | 5, a | 5).is_some());
        }
    }

    #[test]
    fn digests_found_and_missed() {
        let mut t = DigestTable::new();
        for i in 0..1000u32 {
            let mut d = [0u8; 32];
            d[..4].copy_from_slice(&i.to_le_bytes());
            d[31] = 1;
            assert!(t.insert(d, NO_REASON));
        }
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&5u32.to_le_bytes());
        d[31] = 1;
        assert!(t.get(&d).is_some());
        d[31] = 2;
        assert!(t.get(&d).is_none());
    }
}
