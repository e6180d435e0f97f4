//! The bounded in-memory store.
//!
//! # Layout
//!
//! A pre-sized table of 64-byte lines, each holding four cells of
//! `(key: AtomicU64, tat: AtomicU64)`. A key is a 64-bit hash from a randomly
//! seeded hasher, so nobody can aim a flood at one line, and it may live in one
//! of two lines ("two choices"), which keeps the table usable up to ~90% full
//! without chains or resizing. 16 bytes per cell, no allocation per key, no
//! lock on the decision path: a check is one or two cache-line reads and one
//! compare-and-swap per bucket.
//!
//! # Bounded memory and eviction
//!
//! The table never grows: it has `max_keys` cells (rounded up to a multiple
//! of four). A cell whose TAT is in the past carries no information (an idle
//! GCRA bucket is the same as no bucket), so it is reused freely. When both
//! candidate lines are full of live keys, the key that carries the least
//! information — the smallest TAT, the soonest to be idle — is evicted.
//!
//! An evicted key that is *heavy* — it has used more than half of its bucket
//! since it entered the table (a flag bit in its key word) — has its TAT
//! folded into a fixed-size *max-sketch* (a count-min sketch that keeps
//! maxima instead of sums). A key that is not in the table starts from the
//! sketch's estimate, which can only over-estimate its real TAT. So a key at
//! or near its limit keeps its debt through any number of evictions: an
//! evicted abuser comes back at least as limited as it left, never with a
//! fresh burst.
//!
//! Light keys are forgotten on eviction. Folding them too (as a first
//! version did) makes a flood of one-off clients fill the sketch: fresh keys
//! inherit inflated estimates, add their own cost, are folded back, and the
//! estimates climb until every new client starts with an empty bucket (84%
//! of new clients denied in the 10M-address benchmark). Forgetting light
//! keys bounds the looseness instead: at most half a bucket per eviction,
//! only for a key that was the least-indebted in its lines, and each
//! eviction costs whoever forces it about a table's worth of fresh keys.
//!
//! A request whose key has no cell is only given one if it would pass —
//! by every bucket of the decision, as they stand: denied requests never
//! evict anyone.
//!
//! # Concurrency
//!
//! Each bucket is updated with a CAS loop on its TAT. A decision with several
//! buckets commits them in order and, if a later one denies, undoes the
//! earlier ones (subtracting exactly what it added — GCRA consumption is
//! additive, and a TAT restored to at most `now` is the same as idle). A
//! concurrent request may see the transient consumption and be denied when a
//! sequential order would have allowed it: stricter, never looser. Threads
//! touching the same brand-new key at once share the first cell claimed for
//! it (a claimer that meets the key while scanning takes that cell), and a
//! claimer only overwrites a TAT nobody wrote since its scan, so a request
//! that found the key a moment early is still counted
//! (`tests/threads.rs::first_touch_by_racing_threads_is_counted`). Left
//! open: claimers reading different clock instants may rank the same cells
//! differently and claim two cells for one key.
//!
//! Concurrency slots and leases sit behind one mutex: they are rarer than
//! rate checks, need all-or-nothing across several counters, and must expire.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use smallvec::SmallVec;

use crate::gcra::{Gcra, Verdict};
use crate::store::{
    Batch, Bucket, BucketResult, KeyedBucket, KeyedResult, LeaseId, Outcome, Slot, SlotResult, Store,
    StoreError,
};
use crate::time::Nanos;

const WAYS: usize = 4;

#[derive(Default)]
struct Cell {
    key: AtomicU64,
    tat: AtomicU64,
}

#[derive(Default)]
#[repr(align(64))]
struct Line {
    cells: [Cell; WAYS],
}

/// A fixed-size max-sketch of evicted TATs: `fold` keeps the maximum per
/// cell, `estimate` takes the minimum over rows, so the estimate is never
/// below the real TAT of any key folded into it.
struct Sketch {
    rows: [Box<[AtomicU64]>; 4],
    shift: u32,
    /// The largest TAT ever folded: once `now` passes it, every cell is idle
    /// and lookups skip the sketch entirely.
    max_folded: AtomicU64,
}

const SKETCH_MULT: [u64; 4] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0xD6E8_FEB8_6659_FD93,
];

impl Sketch {
    fn new(width_log2: u32) -> Self {
        let width = 1usize << width_log2;
        let row = || (0..width).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        Self {
            rows: [row(), row(), row(), row()],
            shift: 64 - width_log2,
            max_folded: AtomicU64::new(0),
        }
    }

    #[inline]
    fn index(&self, key: u64, row: usize) -> usize {
        // `key` is already a keyed hash; multiplying by distinct odd constants
        // and taking the top bits gives each row its own independent index.
        (key.wrapping_mul(SKETCH_MULT[row]) >> self.shift) as usize
    }

    fn fold(&self, key: u64, tat: Nanos) {
        for (r, row) in self.rows.iter().enumerate() {
            row[self.index(key, r)].fetch_max(tat, Ordering::Relaxed);
        }
        self.max_folded.fetch_max(tat, Ordering::Relaxed);
    }

    #[inline]
    fn estimate(&self, key: u64, now: Nanos) -> Nanos {
        if self.max_folded.load(Ordering::Relaxed) <= now {
            return 0;
        }
        let mut est = u64::MAX;
        for (r, row) in self.rows.iter().enumerate() {
            est = est.min(row[self.index(key, r)].load(Ordering::Relaxed));
        }
        if est <= now {
            0
        } else {
            est
        }
    }

    fn bytes(&self) -> usize {
        self.rows.iter().map(|r| r.len() * 8).sum()
    }
}

#[derive(Default)]
struct Leases {
    counts: HashMap<u64, u32>,
    leases: HashMap<LeaseId, (Vec<u64>, Nanos)>,
    expiry: BinaryHeap<Reverse<(Nanos, LeaseId)>>,
}

impl Leases {
    fn expire(&mut self, now: Nanos) {
        while let Some(Reverse((at, id))) = self.expiry.peek().copied() {
            if at > now {
                break;
            }
            self.expiry.pop();
            if self.leases.get(&id).is_some_and(|(_, exp)| *exp == at) {
                self.drop_lease(id);
            }
        }
    }

    fn drop_lease(&mut self, id: LeaseId) -> bool {
        let Some((keys, _)) = self.leases.remove(&id) else {
            return false;
        };
        for k in keys {
            if let Some(c) = self.counts.get_mut(&k) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    self.counts.remove(&k);
                }
            }
        }
        true
    }
}

/// Counters for observing the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Cells in the table (the hard cap on tracked keys).
    pub capacity: u64,
    /// Live keys evicted into the sketch so far.
    pub evictions: u64,
    /// Bytes of the table plus the sketch (fixed at creation).
    pub bytes: u64,
}

/// The bounded, lock-free in-memory [`Store`]. See the module docs.
pub struct MemoryStore {
    lines: Box<[Line]>,
    sketch: Sketch,
    leases: Mutex<Leases>,
    max_leases: usize,
    evictions: AtomicU64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &(self.lines.len() * WAYS))
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
struct Commit {
    pos: (usize, usize),
    before: Nanos,
    after: Nanos,
}

/// Set in a cell's key word once the key has used more than half of its
/// bucket: only such keys are folded into the sketch when evicted.
const HEAVY: u64 = 1 << 63;

impl MemoryStore {
    /// A store tracking at most `max_keys` rate keys (rounded up to a multiple
    /// of 4, at least 64) and at most `max_keys` leases.
    pub fn new(max_keys: usize) -> Self {
        let nlines = max_keys.max(64).div_ceil(WAYS);
        // One sketch cell per ~4 table cells per row, a power of two, 4 KiB–8 MiB a row.
        let width_log2 = (nlines.next_power_of_two().trailing_zeros()).clamp(9, 20);
        Self {
            lines: (0..nlines).map(|_| Line::default()).collect(),
            sketch: Sketch::new(width_log2),
            leases: Mutex::new(Leases::default()),
            max_leases: max_keys.max(64),
            evictions: AtomicU64::new(0),
        }
    }

    /// Capacity, evictions and memory.
    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            capacity: (self.lines.len() * WAYS) as u64,
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes: (self.lines.len() * std::mem::size_of::<Line>() + self.sketch.bytes()) as u64,
        }
    }

    #[inline]
    fn line_indexes(&self, fp: u64) -> (usize, usize) {
        (self.line_a(fp), self.line_b(fp))
    }

    /// A key's first line. A fingerprint's top bit is always clear (it is
    /// the heavy flag's place in the key word), and multiply-shift
    /// reduction reads the top bits: rotate so they are all random, or line
    /// A would only ever be in the first half of the table (a bug that once
    /// had the table evicting live keys at a third full). Lemire's
    /// multiply-shift range reduction: no modulo, any table size.
    #[inline]
    fn line_a(&self, fp: u64) -> usize {
        ((u128::from(fp.rotate_left(1)) * self.lines.len() as u128) >> 64) as usize
    }

    /// A key's second line: independent bits of the same fingerprint.
    #[inline]
    fn line_b(&self, fp: u64) -> usize {
        let h = fp.rotate_left(33) ^ 0x5851_F42D_4C95_7F2D;
        ((u128::from(h) * self.lines.len() as u128) >> 64) as usize
    }

    #[inline]
    fn cell(&self, (line, way): (usize, usize)) -> &Cell {
        &self.lines[line].cells[way]
    }

    /// Where `fp` lives, and its key word (with the heavy flag).
    #[inline]
    fn find(&self, fp: u64) -> Option<((usize, usize), u64)> {
        let a = self.line_a(fp);
        self.find_in(a, fp).or_else(|| self.find_in(self.line_b(fp), fp))
    }

    #[inline]
    fn find_in(&self, line: usize, fp: u64) -> Option<((usize, usize), u64)> {
        for (way, c) in self.lines[line].cells.iter().enumerate() {
            let w = c.key.load(Ordering::Acquire);
            if w & !HEAVY == fp {
                return Some(((line, way), w));
            }
        }
        None
    }

    /// The current TAT of a key without claiming a cell.
    #[inline]
    fn read(&self, fp: u64, now: Nanos) -> Nanos {
        match self.find(fp) {
            Some((pos, _)) => self.cell(pos).tat.load(Ordering::Acquire),
            None => self.sketch.estimate(fp, now),
        }
    }

    /// Finds the key's cell or claims one for it (see module docs on eviction).
    fn claim(&self, fp: u64, now: Nanos) -> ((usize, usize), u64) {
        loop {
            if let Some(found) = self.find(fp) {
                return found;
            }
            let (a, b) = self.line_indexes(fp);
            // Rank: empty < idle < live with the smallest TAT.
            let mut best: Option<((usize, usize), u64, u64, u8)> = None;
            'scan: for line in [a, b] {
                for (way, c) in self.lines[line].cells.iter().enumerate() {
                    let w = c.key.load(Ordering::Acquire);
                    if w & !HEAVY == fp {
                        // Claimed by another thread since `find`: share it.
                        return ((line, way), w);
                    }
                    let t = c.tat.load(Ordering::Acquire);
                    let rank = if w == 0 {
                        0
                    } else if t <= now {
                        1
                    } else {
                        2
                    };
                    let better = match best {
                        None => true,
                        Some((_, _, bt, br)) => rank < br || (rank == br && rank == 2 && t < bt),
                    };
                    if better {
                        best = Some(((line, way), w, t, rank));
                        if rank == 0 {
                            break 'scan;
                        }
                    }
                }
            }
            let Some((pos, old_word, seen_tat, rank)) = best else {
                continue;
            };
            let cell = self.cell(pos);
            let init = self.sketch.estimate(fp, now);
            if cell
                .key
                .compare_exchange(old_word, fp, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // The key is visible before its TAT is set: a thread that
                // finds it in between consumes on top of the old TAT. Only
                // overwrite a TAT nobody wrote since the scan; otherwise keep
                // the larger (an own consumption is kept, or the old key's
                // debt is inherited: stricter, never looser).
                let old_tat =
                    match cell
                        .tat
                        .compare_exchange(seen_tat, init, Ordering::AcqRel, Ordering::Acquire)
                    {
                        Ok(prev) => prev,
                        Err(_) => cell.tat.fetch_max(init, Ordering::AcqRel),
                    };
                if rank > 0 && old_tat > now {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    // Only heavy keys carry debt worth keeping (see the module
                    // docs); light ones are forgotten, so a flood of one-off
                    // clients cannot fill the sketch and lock everyone out.
                    if old_word & HEAVY != 0 {
                        self.sketch.fold(old_word & !HEAVY, old_tat);
                    }
                }
                return (pos, fp);
            }
        }
    }

    /// Consumes from one bucket if it allows: where and what was committed,
    /// or the TAT that denied it.
    ///
    /// A key with no cell is only given one if the request would pass —
    /// this bucket, and `others_allow` (the decision's later buckets as
    /// they stand: an undo cannot bring back a key the claim evicted).
    /// When they would not, nothing is claimed and the bucket answers as
    /// it stands (`Err` with its estimate), so the caller reads the rest.
    fn consume(&self, b: &KeyedBucket, now: Nanos, others_allow: impl Fn() -> bool) -> Result<Commit, Nanos> {
        let g = b.gcra;
        let fp = fingerprint(b.key);
        loop {
            let (pos, word) = match self.find(fp) {
                Some(found) => found,
                None => {
                    // Denied requests never evict anyone.
                    let est = self.sketch.estimate(fp, now);
                    if !matches!(g.check(est, now, b.cost), Verdict::Allow { .. }) {
                        return Err(est);
                    }
                    if !others_allow() {
                        return Err(est);
                    }
                    self.claim(fp, now)
                }
            };
            let cell = self.cell(pos);
            let mut cur = cell.tat.load(Ordering::Acquire);
            let outcome = loop {
                match g.check(cur, now, b.cost) {
                    Verdict::Allow { new_tat } => {
                        match cell.tat.compare_exchange_weak(
                            cur,
                            new_tat,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => break Some(new_tat),
                            Err(actual) => cur = actual,
                        }
                    }
                    Verdict::Deny { .. } | Verdict::Impossible => break None,
                }
            };
            // The cell may have been handed to another key while we worked.
            let now_word = cell.key.load(Ordering::Acquire);
            if now_word & !HEAVY != fp {
                if let Some(new_tat) = outcome {
                    undo(cell, g, cur, new_tat, b.cost);
                }
                continue;
            }
            let Some(new_tat) = outcome else {
                return Err(cur);
            };
            // More than half the bucket used: this key's debt is
            // information, keep it through an eviction.
            if word & HEAVY == 0 && g.half_used(new_tat, now) {
                let _ = cell
                    .key
                    .compare_exchange(fp, fp | HEAVY, Ordering::AcqRel, Ordering::Relaxed);
            }
            return Ok(Commit {
                pos,
                before: cur,
                after: new_tat,
            });
        }
    }

    /// The decision over rate buckets (see [`Store::decide_keyed`]).
    fn decide_buckets(
        &self,
        buckets: &[KeyedBucket],
        dry_run: bool,
        now: Nanos,
        results: &mut [KeyedResult],
    ) -> bool {
        debug_assert_eq!(buckets.len(), results.len());
        // Where each enforced bucket was committed, for rollback: on the
        // stack for the usual few buckets (a `SmallVec`'s checks on every
        // access were measured), on the heap beyond.
        let mut few = [None; 4];
        let mut many;
        let commits: &mut [Option<Commit>] = if buckets.len() <= few.len() {
            &mut few[..buckets.len()]
        } else {
            many = vec![None; buckets.len()];
            &mut many
        };
        self.commit_buckets(buckets, dry_run, now, results, commits)
    }

    fn commit_buckets(
        &self,
        buckets: &[KeyedBucket],
        dry_run: bool,
        now: Nanos,
        results: &mut [KeyedResult],
        commits: &mut [Option<Commit>],
    ) -> bool {
        let read = |b: &KeyedBucket| KeyedResult {
            tat: self.read(fingerprint(b.key), now),
            applied: false,
        };
        let mut denied = dry_run;
        let mut any_shadow = false;
        for ((b, r), c) in buckets.iter().zip(results.iter_mut()).zip(commits.iter_mut()) {
            if b.shadow || denied {
                any_shadow |= b.shadow;
                *r = read(b);
                continue;
            }
            // Asked only for a key with no cell: the buckets after `b`
            // (found from its address, off the common path).
            let later = || {
                let i = (std::ptr::from_ref(b) as usize - buckets.as_ptr() as usize)
                    / std::mem::size_of::<KeyedBucket>();
                self.rest_would_allow(buckets.get(i + 1..).unwrap_or_default(), now)
            };
            match self.consume(b, now, later) {
                Ok(done) => {
                    *r = KeyedResult {
                        tat: done.after,
                        applied: true,
                    };
                    *c = Some(done);
                }
                Err(tat) => {
                    *r = KeyedResult { tat, applied: false };
                    denied = true;
                }
            }
        }
        if dry_run {
            return false;
        }
        if denied {
            for ((b, c), r) in buckets.iter().zip(commits.iter()).zip(results.iter_mut()) {
                if let Some(c) = c {
                    let cell = self.cell(c.pos);
                    // Undo only if the cell still holds this key: if it was
                    // evicted meanwhile, the consumption went into the sketch
                    // (stricter).
                    if cell.key.load(Ordering::Acquire) & !HEAVY == fingerprint(b.key) {
                        undo(cell, b.gcra, c.before, c.after, b.cost);
                    }
                    // Report it as it now stands.
                    *r = read(b);
                }
            }
            return false;
        }
        if any_shadow {
            for (b, r) in buckets.iter().zip(results.iter_mut()) {
                if b.shadow {
                    *r = match self.consume(b, now, || true) {
                        Ok(c) => KeyedResult {
                            tat: c.after,
                            applied: true,
                        },
                        Err(tat) => KeyedResult { tat, applied: false },
                    };
                }
            }
        }
        true
    }

    /// Whether every enforced bucket of `rest` would allow as it stands.
    /// Only for keys with no cell yet: kept out of line, off the common path.
    #[cold]
    #[inline(never)]
    fn rest_would_allow(&self, rest: &[KeyedBucket], now: Nanos) -> bool {
        rest.iter().filter(|b| !b.shadow).all(|b| {
            let tat = self.read(fingerprint(b.key), now);
            matches!(b.gcra.check(tat, now, b.cost), Verdict::Allow { .. })
        })
    }

    /// [`Store::decide`]'s bucket step: the keyed decision, reported per bucket.
    fn decide_batch(&self, batch: &Batch, now: Nanos) -> (SmallVec<[BucketResult; 4]>, bool) {
        let keyed: SmallVec<[KeyedBucket; 4]> = batch.buckets.iter().map(Bucket::keyed).collect();
        let mut results: SmallVec<[KeyedResult; 4]> =
            smallvec::smallvec![KeyedResult::default(); keyed.len()];
        let committed = self.decide_buckets(&keyed, batch.dry_run, now, &mut results);
        let reports = keyed
            .iter()
            .zip(&results)
            .map(|(b, r)| r.judge(b.gcra, now, b.cost))
            .collect();
        (reports, committed)
    }
}

/// Takes back one consumption: back to the exact previous TAT when nobody
/// touched the bucket since (so a TAT that was idle stays exactly as it
/// was), otherwise by subtracting what was added (consumption is additive).
fn undo(cell: &Cell, g: Gcra, before: Nanos, after: Nanos, cost: u64) {
    if cell
        .tat
        .compare_exchange(after, before, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        let _ = cell
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(g.undo(t, cost)));
    }
}

/// The key word without the heavy flag, never zero (zero marks an empty cell).
#[inline]
fn fingerprint(key: u64) -> u64 {
    match key & !HEAVY {
        0 => 1,
        k => k,
    }
}

impl Store for MemoryStore {
    fn decide(&self, batch: &Batch, now: Nanos) -> Result<Outcome, StoreError> {
        if batch.slots.is_empty() && batch.lease.is_none() {
            let (buckets, committed) = self.decide_batch(batch, now);
            return Ok(Outcome {
                buckets,
                slots: SmallVec::new(),
                committed,
            });
        }
        // Slots and leases: hold the lease lock across the bucket step so the
        // reservation and the rate check are one all-or-nothing unit.
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.expire(now);
        let mut slots: SmallVec<[SlotResult; 2]> = batch
            .slots
            .iter()
            .map(|s| {
                let held = leases.counts.get(&s.key).copied().unwrap_or(0);
                SlotResult {
                    allowed: held < s.max,
                    held,
                }
            })
            .collect();
        let slots_ok = batch.slots.iter().zip(&slots).all(|(s, r)| s.shadow || r.allowed);
        let lease_room = leases.leases.len() < self.max_leases;
        if !batch.dry_run && slots_ok && batch.lease.is_some() && !lease_room {
            return Err(StoreError::LeasesFull(self.max_leases));
        }
        let dry = Batch {
            dry_run: true,
            ..Batch::default()
        };
        let (buckets, committed) = if slots_ok {
            self.decide_batch(batch, now)
        } else {
            // Denied by a slot: evaluate buckets without consuming.
            let probe = Batch {
                buckets: batch.buckets.clone(),
                ..dry
            };
            (self.decide_batch(&probe, now).0, false)
        };
        if committed {
            let mut keys = Vec::with_capacity(batch.slots.len());
            for (s, r) in batch.slots.iter().zip(slots.iter_mut()) {
                if r.allowed {
                    let c = leases.counts.entry(s.key).or_insert(0);
                    *c += 1;
                    r.held = *c;
                    keys.push(s.key);
                }
            }
            if let Some((id, expires)) = batch.lease {
                leases.leases.insert(id, (keys, expires));
                if expires != Nanos::MAX {
                    leases.expiry.push(Reverse((expires, id)));
                }
            }
        }
        Ok(Outcome {
            buckets,
            slots,
            committed,
        })
    }

    fn release(&self, lease: LeaseId, now: Nanos) -> Result<bool, StoreError> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.expire(now);
        Ok(leases.drop_lease(lease))
    }

    fn peek(&self, bucket: &Bucket, now: Nanos) -> Result<Nanos, StoreError> {
        Ok(self.read(fingerprint(bucket.key), now))
    }

    fn held(&self, slot: &Slot, now: Nanos) -> Result<u32, StoreError> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.expire(now);
        Ok(leases.counts.get(&slot.key).copied().unwrap_or(0))
    }

    fn tracked_keys(&self, now: Nanos) -> u64 {
        self.lines
            .iter()
            .flat_map(|l| l.cells.iter())
            .filter(|c| c.key.load(Ordering::Relaxed) != 0 && c.tat.load(Ordering::Relaxed) > now)
            .count() as u64
    }

    #[inline]
    fn prefetch(&self, key: u64) {
        // A prefetch instruction, not a load: it is not ordered with the
        // locked instructions that follow (an earlier bucket's CAS), and
        // nothing waits for it. `mem_prefetch` wraps the intrinsic, which
        // this workspace cannot call itself (`unsafe` is forbidden).
        let a = self.line_a(fingerprint(key));
        mem_prefetch::prefetch_read_data::<_, 3>(&self.lines[a]);
    }

    #[inline]
    fn decide_keyed(
        &self,
        buckets: &[KeyedBucket],
        dry_run: bool,
        now: Nanos,
        results: &mut [KeyedResult],
    ) -> Option<bool> {
        Some(self.decide_buckets(buckets, dry_run, now, results))
    }

    fn active_leases(&self, now: Nanos) -> u64 {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.expire(now);
        leases.leases.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Target;

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_000_000 * S;

    fn bucket(key: u64, rate: &str) -> Bucket {
        let r: crate::Rate = rate.parse().unwrap();
        Bucket {
            key: key | 1,
            limit: crate::policy::intern("test"),
            target: Target::Global,
            gcra: r.gcra(),
            cost: 1,
            shadow: false,
        }
    }

    fn one(store: &MemoryStore, b: &Bucket, now: Nanos) -> bool {
        let batch = Batch {
            buckets: smallvec::smallvec![b.clone()],
            ..Batch::default()
        };
        store.decide(&batch, now).unwrap().committed
    }

    #[test]
    fn denied_request_consumes_nothing_from_any_bucket() {
        let s = MemoryStore::new(1024);
        let wide = bucket(11, "100/1m");
        let narrow = bucket(23, "1/1m");
        let batch = Batch {
            buckets: smallvec::smallvec![wide.clone(), narrow.clone()],
            ..Batch::default()
        };
        assert!(s.decide(&batch, T0).unwrap().committed);
        let out = s.decide(&batch, T0).unwrap();
        assert!(!out.committed);
        assert!(out.buckets[0].allowed && !out.buckets[1].allowed);
        assert_eq!(
            out.buckets[0].snapshot.remaining, 99,
            "wide bucket charged by a denied request"
        );
        assert_eq!(out.buckets[1].retry_after, Some(60 * S));
    }

    #[test]
    fn a_request_denied_by_a_later_bucket_evicts_nobody() {
        // A full table of live keys, and a global bucket that is spent.
        let s = MemoryStore::new(64);
        let global = bucket(0x6C0B_A100_0000_0001, "1/1h");
        assert!(one(&s, &global, T0));
        let mut i = 0u64;
        while s.tracked_keys(T0) < 64 && i < 100_000 {
            i += 1;
            one(&s, &bucket(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), "10/1h"), T0);
        }
        let evictions = s.stats().evictions;
        // Fresh clients under the spent global limit: all denied, and none
        // of them pushes a live key out.
        for j in 0..1_000u64 {
            let fresh = bucket((j + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) | 1, "10/1h");
            let batch = Batch {
                buckets: smallvec::smallvec![fresh, global.clone()],
                ..Batch::default()
            };
            let out = s.decide(&batch, T0).unwrap();
            assert!(!out.committed && !out.buckets[1].allowed);
        }
        assert_eq!(
            s.stats().evictions,
            evictions,
            "denied requests evicted live keys"
        );
    }

    #[test]
    fn eviction_never_hands_back_a_fresh_burst() {
        // A table of 64 cells flooded by thousands of fresh keys: the abuser's
        // key is certainly evicted, and must come back still limited.
        let s = MemoryStore::new(64);
        let abuser = bucket(0xDEAD_BEEF_0000_0001, "10/1h");
        for _ in 0..10 {
            assert!(one(&s, &abuser, T0));
        }
        assert!(!one(&s, &abuser, T0));
        for i in 0..10_000u64 {
            let k = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            one(&s, &bucket(k, "10/1h"), T0 + i);
        }
        assert!(s.stats().evictions > 0);
        let mut allowed = 0;
        for _ in 0..30 {
            allowed += u32::from(one(&s, &abuser, T0 + 20_000));
        }
        assert_eq!(allowed, 0, "eviction handed the abuser fresh quota");
        assert!(s.tracked_keys(T0) <= 64);
    }

    #[test]
    fn idle_cells_are_reused_without_eviction() {
        let s = MemoryStore::new(64);
        for i in 0..10_000u64 {
            let k = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            // Each key idles after 1 s; time moves 1 s per key.
            assert!(one(&s, &bucket(k, "1/1s"), T0 + i * S));
        }
        assert_eq!(s.stats().evictions, 0);
    }

    #[test]
    fn leases_cap_and_expire() {
        let s = MemoryStore::new(64);
        let slot = Slot {
            key: 77,
            limit: crate::policy::intern("c"),
            target: Target::Global,
            max: 2,
            shadow: false,
        };
        let take = |id: u128, exp: Nanos, now: Nanos| {
            let b = Batch {
                slots: smallvec::smallvec![slot.clone()],
                lease: Some((id, exp)),
                ..Batch::default()
            };
            s.decide(&b, now).unwrap().committed
        };
        assert!(take(1, T0 + S, T0));
        assert!(take(2, Nanos::MAX, T0));
        assert!(!take(3, T0 + S, T0));
        assert!(s.release(2, T0).unwrap());
        assert!(!s.release(2, T0).unwrap());
        assert!(take(3, T0 + 10 * S, T0));
        assert!(!take(4, T0 + 10 * S, T0));
        // Lease 1 expires at T0 + 1 s.
        assert!(take(4, T0 + 10 * S, T0 + S));
        assert_eq!(s.active_leases(T0 + S), 2);
    }
}
