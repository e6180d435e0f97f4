//! The engine: policy + store + clock + bans → decisions.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use smallvec::SmallVec;

use crate::bans::{Ban, BanSource, Bans};
use crate::blocklist::{Blocklists, ListAction, ListHit};
use crate::gcra::{Gcra, Verdict};
use crate::memory::MemoryStore;
use crate::policy::{Effect, LimitKind, Matcher, Per, Policy, Scope, Side};
use crate::rate::Rate;
use crate::store::{Batch, Bucket, KeyedBucket, KeyedResult, LeaseId, Outcome, Slot, Store, StoreError};
use crate::target::{Target, TargetKind};
use crate::time::{nanos, Clock, CoarseClock, Nanos};

/// The targets a request carries. Any may be absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Targets {
    /// The client's address (grouped to the policy's prefix when planned).
    pub ip: Option<IpAddr>,
    /// The account (`Target::User`).
    pub user: Option<Target>,
    /// The remote or destination server (`Target::Server`).
    pub server: Option<Target>,
    /// The application service (`Target::Appservice`).
    pub appservice: Option<Target>,
    /// Skip the global limits: this request adds targets to a decision
    /// already made for the same event, which counted them. The XMPP
    /// gateway's check of a stream's server, after the check of its
    /// address, is one: a connection is one connection, globally.
    pub without_global: bool,
}

/// A question for the engine: may these targets do this action?
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// Client or federation.
    pub side: Side,
    /// The action (built in or declared in the policy).
    pub action: &'a str,
    /// Who is asking.
    pub targets: Targets,
    /// Units to take (1 for events, bytes for byte limits).
    pub cost: u64,
}

impl<'a> Request<'a> {
    /// A client-side request of cost 1 with no targets yet.
    pub fn client(action: &'a str) -> Self {
        Self {
            side: Side::Client,
            action,
            targets: Targets::default(),
            cost: 1,
        }
    }

    /// A federation-side request of cost 1 with no targets yet.
    pub fn federation(action: &'a str) -> Self {
        Self {
            side: Side::Federation,
            ..Self::client(action)
        }
    }

    /// With the client address.
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.targets.ip = Some(ip);
        self
    }

    /// With a user (`@a:example.org` or `a@example.org`).
    pub fn user(mut self, user: Target) -> Self {
        self.targets.user = Some(user);
        self
    }

    /// With a server.
    pub fn server(mut self, server: Target) -> Self {
        self.targets.server = Some(server);
        self
    }

    /// With an appservice.
    pub fn appservice(mut self, a: Target) -> Self {
        self.targets.appservice = Some(a);
        self
    }

    /// With a cost.
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }
}

/// How one limit came out of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitOutcome {
    /// This limit allowed it.
    Allowed,
    /// This limit denied it.
    Denied,
    /// This limit would have denied it, but is in shadow mode.
    ShadowDenied,
}

impl LimitOutcome {
    /// `allowed`, `denied` or `shadow_denied` (metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            LimitOutcome::Allowed => "allowed",
            LimitOutcome::Denied => "denied",
            LimitOutcome::ShadowDenied => "shadow_denied",
        }
    }
}

/// One limit's state after a decision: enough for `RateLimit` headers and
/// Matrix's `retry_after_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitReport {
    /// The limit's name.
    pub name: &'static str,
    /// The target it counted.
    pub target: Target,
    /// Bucket size (rates) or the cap (concurrency).
    pub limit: u64,
    /// The rate's period (`None` for concurrency caps).
    pub window: Option<Duration>,
    /// Units still available now.
    pub remaining: u64,
    /// Time until the bucket is full again (zero for concurrency).
    pub reset: Duration,
    /// How this limit judged the request.
    pub outcome: LimitOutcome,
    /// Whether the limit is in shadow mode.
    pub shadow: bool,
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Every limit allowed (or none applied).
    Allowed,
    /// A target is exempt: nothing was checked or consumed.
    Exempt(Target),
    /// A target is banned (boxed: rare, and it keeps decisions small).
    Banned(Box<Ban>),
    /// A target is on the configured blocklist or a deny source (boxed:
    /// rare, and it keeps decisions small).
    Blocked(Box<Blocked>),
    /// A limit denied it (the one with the longest wait).
    Limited(&'static str),
    /// The cost exceeds a limit's bucket size: it can never pass as is.
    TooLarge(&'static str),
}

/// Which blocklist refused a target, and by which entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The target refused.
    pub target: Target,
    /// The source's hit; `None` for the config's own `[blocklist]`
    /// (see [`Engine::blocked`] for its entry).
    pub list: Option<ListHit>,
}

impl Blocked {
    /// A refusal by the config's own `[blocklist]`.
    pub fn config(target: Target) -> Box<Self> {
        Box::new(Self { target, list: None })
    }
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed or not.
    pub allowed: bool,
    /// How long to wait before the same request can pass: zero when
    /// allowed, `Duration::MAX` when it never can (too large, permanent ban).
    pub retry_after: Duration,
    /// Why.
    pub reason: Reason,
    /// Every limit that applied (inline up to four: no allocation).
    pub limits: SmallVec<[LimitReport; 4]>,
    /// The lease taken, for acquire requests that were allowed.
    pub lease: Option<Lease>,
    /// A ban this decision triggered (automatic bans).
    pub banned: Option<Box<Ban>>,
}

impl Decision {
    /// An allowed decision that applied no limit: what a caller answers
    /// when it fails open (the engine could not decide), and a base for
    /// reports built by hand.
    pub fn allow() -> Self {
        Self::early(true, Duration::ZERO, Reason::Allowed)
    }

    fn early(allowed: bool, retry_after: Duration, reason: Reason) -> Self {
        Self {
            allowed,
            retry_after,
            reason,
            limits: SmallVec::new(),
            lease: None,
            banned: None,
        }
    }

    /// Names of limits that denied (enforced) or would have (shadow).
    pub fn fired(&self) -> impl Iterator<Item = &LimitReport> {
        self.limits.iter().filter(|l| l.outcome != LimitOutcome::Allowed)
    }
}

/// The verdict alone: see [`Engine::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Allowed or not.
    pub allowed: bool,
    /// Zero when allowed; how long to wait otherwise (`Duration::MAX`: never).
    pub retry_after: Duration,
}

/// A concurrency lease held by a caller across the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The lease's identity.
    pub id: LeaseId,
    /// When it lapses if not released (`Nanos::MAX`: never).
    pub expires: Nanos,
}

impl Lease {
    /// The opaque token handed to callers (32 hex digits).
    pub fn token(&self) -> String {
        format!("{:032x}", self.id)
    }

    /// Parses a token back into a lease id.
    pub fn parse_token(s: &str) -> Option<LeaseId> {
        (s.len() == 32)
            .then(|| u128::from_str_radix(s, 16).ok())
            .flatten()
    }
}

/// What went wrong (never the caller's input alone: unknown actions aside).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The action is not known on that side.
    #[error("unknown {side} action {action:?}")]
    UnknownAction {
        /// Side asked.
        side: Side,
        /// Action asked.
        action: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a decision should do besides checking rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Check and consume rate limits.
    Check,
    /// Evaluate without consuming anything.
    DryRun,
    /// Check rates and take a concurrency lease that lapses after `ttl`
    /// (`None`: held until released).
    Acquire {
        /// Lease lifetime.
        ttl: Option<Duration>,
    },
}

#[derive(Debug, Clone, Copy)]
enum Place {
    Bucket(usize),
    Slot(usize),
}

#[derive(Debug, Clone)]
struct Entry {
    limit: usize,
    place: Place,
    window: Option<Duration>,
}

/// The policy-independent part of a plan; borrowed-policy fast path and
/// owned [`Plan`] share it.
#[derive(Debug)]
struct Core {
    side: Side,
    targets: SmallVec<[Target; 4]>,
    batch: Batch,
    entries: SmallVec<[Entry; 4]>,
    /// Boxed: rare, and an inline `Option<Decision>` would be copied on
    /// every decision.
    early: Option<Box<Decision>>,
    /// A shadow source's hit, reported as a shadow-denied limit.
    listed: Option<Box<ListHit>>,
    now: Nanos,
}

impl Default for Core {
    fn default() -> Self {
        Self {
            side: Side::Client,
            targets: SmallVec::new(),
            batch: Batch::default(),
            entries: SmallVec::new(),
            early: None,
            listed: None,
            now: 0,
        }
    }
}

impl Core {
    fn needs_store(&self) -> bool {
        self.early.is_none() && !(self.batch.buckets.is_empty() && self.batch.slots.is_empty())
    }
}

/// The limits of a decision as they are judged: each report goes straight
/// into the decision being built (moving a decision costs a copy of its
/// inline reports), and the tally keeps the limit with the longest wait.
#[derive(Debug, Default)]
struct Tally {
    /// `(wait, limit, never)` of the enforced limit with the longest wait.
    worst: Option<(Duration, &'static str, bool)>,
}

impl Tally {
    /// Adds a limit's report to `d`; `ok` is whether it allowed, `retry`
    /// its wait (`Duration::MAX`: never).
    #[inline(always)]
    fn push(&mut self, d: &mut Decision, mut report: LimitReport, ok: bool, retry: Duration) {
        if !ok {
            if report.shadow {
                report.outcome = LimitOutcome::ShadowDenied;
            } else {
                report.outcome = LimitOutcome::Denied;
                d.allowed = false;
                if self.worst.is_none_or(|(w, _, _)| retry > w) {
                    self.worst = Some((retry, report.name, retry == Duration::MAX));
                }
            }
        }
        d.limits.push(report);
    }

    /// Adds a rate bucket's result.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn bucket(
        &mut self,
        d: &mut Decision,
        name: &'static str,
        target: Target,
        gcra: Gcra,
        window: Option<Duration>,
        shadow: bool,
        r: crate::store::BucketResult,
    ) {
        let retry = r.retry_after.map_or(Duration::MAX, Duration::from_nanos);
        let report = LimitReport {
            name,
            target,
            limit: gcra.burst(),
            window,
            remaining: r.snapshot.remaining,
            reset: Duration::from_nanos(r.snapshot.reset),
            outcome: LimitOutcome::Allowed,
            shadow,
        };
        self.push(d, report, r.allowed, retry);
    }
}

/// What [`Engine::conclude`] needs to know about the request.
struct Context<'p> {
    policy: &'p Policy,
    side: Side,
    /// The action as the policy spells it (`None`: no limit applied).
    action: Option<&'static str>,
    now: Nanos,
    dry_run: bool,
}

/// Bans held at most before automatic bans stop being placed (~15 MB of
/// bans); manual bans are always placed.
pub const MAX_AUTO_BANS: usize = 100_000;

/// The largest decision the fast path plans on the stack.
const FAST_BUCKETS: usize = 4;

/// What the fast path made of a request.
enum Fast {
    /// Not for the fast path (exempt, banned, blocked, an override, more
    /// than [`FAST_BUCKETS`] buckets, a store that needs full batches).
    Slow,
    /// Allowed with nothing more to report: no limit applied, or the
    /// caller asked for the verdict only (the decision it passed, if any,
    /// is still `allowed` with no reports when no limit applied).
    Allowed,
    /// The whole decision is in the one the caller passed.
    Decided,
    /// Denied (verdict-only callers): wait this long.
    Denied(Duration),
}

/// A decision in the making: what to ask the store. See [`Engine::plan`].
#[derive(Debug)]
pub struct Plan {
    compiled: Arc<Compiled>,
    core: Core,
}

impl Plan {
    /// The store request; empty when the decision needs no store (exempt,
    /// banned, or no limit applies).
    pub fn batch(&self) -> &Batch {
        &self.core.batch
    }

    /// Whether the store must be asked.
    pub fn needs_store(&self) -> bool {
        self.core.needs_store()
    }

    /// The time the plan was made at (the store decides at this instant).
    pub fn now(&self) -> Nanos {
        self.core.now
    }

    /// The normalised targets of the request.
    pub fn targets(&self) -> &[Target] {
        &self.core.targets
    }

    /// The limits that apply, with the targets and effective limits
    /// (after overrides): `(name, target, kind, shadow)`.
    pub fn applied(&self) -> Vec<(&'static str, Target, LimitKind, bool)> {
        let core = &self.core;
        core.entries
            .iter()
            .map(|e| {
                let l = &self.compiled.policy.limits()[e.limit];
                match e.place {
                    Place::Bucket(i) => {
                        let b = &core.batch.buckets[i];
                        let rate = match l.kind {
                            LimitKind::Rate(r) => r,
                            LimitKind::Concurrency(_) => unreachable_rate(),
                        };
                        let effective = Rate::with_unit(
                            (u128::from(rate.period_nanos()) / u128::from(b.gcra.emission())).max(1) as u64,
                            rate.period(),
                            rate.unit(),
                        )
                        .and_then(|r| r.with_burst(b.gcra.burst()))
                        .unwrap_or(rate);
                        (l.name, b.target.clone(), LimitKind::Rate(effective), b.shadow)
                    }
                    Place::Slot(i) => {
                        let s = &core.batch.slots[i];
                        (l.name, s.target.clone(), LimitKind::Concurrency(s.max), s.shadow)
                    }
                }
            })
            .collect()
    }

    /// The decision already known without the store (exempt, banned, blocked).
    pub fn early(&self) -> Option<&Decision> {
        self.core.early.as_deref()
    }
}

/// A concurrency cap scaled by an override's factor (at least 1).
fn scale_cap(max: u32, f: f64) -> u32 {
    let v = (f64::from(max) * f).round();
    if v.is_finite() {
        v.clamp(1.0, f64::from(u32::MAX)) as u32
    } else {
        max
    }
}

fn unreachable_rate() -> Rate {
    // Buckets are only planned for rate limits; this keeps `applied` total.
    Rate::new(1, Duration::from_secs(1)).unwrap_or_else(|_| unreachable!("1/1s is valid"))
}

/// A policy with the engine's per-limit key seeds.
#[derive(Debug)]
struct Compiled {
    policy: Policy,
    /// The blocklist sources in force (kept across policy reloads).
    lists: Arc<Blocklists>,
    name_hashes: Vec<u64>,
    /// Each rate limit's GCRA parameters, computed once (a division saved
    /// per bucket per decision).
    gcras: Vec<Option<Gcra>>,
    /// Per action and side, its rate limits as the fast path reads them:
    /// contiguous, everything precomputed. `None`: the general path
    /// decides (more than [`FAST_BUCKETS`] rate limits, or the action is
    /// unknown on that side — the general path reports that).
    routes: HashMap<&'static str, [Route; 2], foldhash::fast::RandomState>,
}

/// An action's rate limits on one side (see [`Compiled::routes`]).
type Route = Option<Box<[FastLimit]>>;

/// One rate limit of a route (see [`Compiled::routes`]).
#[derive(Debug, Clone, Copy)]
struct FastLimit {
    /// The limit's key seed.
    name_hash: u64,
    gcra: Gcra,
    /// The limit's period, for reports.
    window: Duration,
    /// Index into the policy's limits.
    index: usize,
    /// Whom it counts (`None`: everyone, a global limit).
    per: Option<TargetKind>,
    /// Only requests with no user and no appservice (`anonymous_ip`).
    anonymous_only: bool,
    shadow: bool,
    /// A concurrency cap (no bucket): checks skip it; an in-process
    /// acquire it applies to takes the general path.
    cap: bool,
}

struct Inner {
    compiled: ArcSwap<Compiled>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    hasher: foldhash::quality::RandomState,
    /// The global target's hash, computed once.
    global_hash: u64,
    bans: Bans,
    autoban: Mutex<AutobanState>,
    lease_seq: AtomicU64,
    /// Whether the store takes [`Store::decide_keyed`]; cleared the first
    /// time it answers `None`.
    keyed: AtomicBool,
    /// This engine's identity for the per-thread policy cache (never
    /// reused, unlike an address).
    id: u64,
    /// Bumped after every reload: a thread's cached policy is current while
    /// its epoch matches.
    epoch: AtomicU64,
    /// Serialises policy reloads and blocklist swaps (each builds on the
    /// other's last state).
    swap: Mutex<()>,
}

/// Engine identities (see [`Inner::id`]).
static ENGINE_IDS: AtomicU64 = AtomicU64::new(1);

/// `(engine id, epoch, policy)`: see [`POLICY`].
type CachedPolicy = (u64, u64, Arc<Compiled>);

thread_local! {
    /// The policy this thread last decided with. Reading the policy through
    /// `ArcSwap` takes two locked instructions per decision (`perf`: ~11 ns
    /// of ~90 at 1k keys); a thread that keeps deciding for one engine — a
    /// server or gateway worker — reads one atomic epoch instead. The entry
    /// is taken out while a decision uses it, so a decision made from
    /// inside another (a store calling back) finds it empty and reads
    /// through `ArcSwap`.
    static POLICY: Cell<Option<CachedPolicy>> = const { Cell::new(None) };
}

#[derive(Default)]
struct AutobanState {
    /// Denial counters: GCRA TAT per (action, target).
    counters: HashMap<(&'static str, Target), Nanos>,
    /// Repeat offenders: (bans so far, end of the last ban).
    offenses: HashMap<Target, (u32, Nanos)>,
    /// When the ban list was last purged at the cap (see `MAX_AUTO_BANS`).
    last_purge: Nanos,
}

const AUTOBAN_MAX_ENTRIES: usize = 100_000;

/// The rate-limiting engine. Cheap to clone; clones share everything.
///
/// See the crate docs for an example.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

#[inline]
fn target_hash_with(hasher: &foldhash::quality::RandomState, t: &Target) -> u64 {
    use std::hash::Hasher;
    let mut h = hasher.build_hasher();
    t.hash_into(&mut h);
    h.finish()
}

#[inline]
fn mix(a: u64, b: u64) -> u64 {
    // murmur3's fmix64 over two keyed hashes: both inputs are secret-seeded,
    // so the result is as unpredictable as they are.
    let mut h = a ^ b.rotate_left(29).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^= h >> 33;
    if h == 0 {
        1
    } else {
        h
    }
}

impl Engine {
    /// An engine over any store and clock.
    pub fn new(policy: Policy, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        let hasher = foldhash::quality::RandomState::default();
        let compiled = Self::compile(&hasher, policy, Arc::default());
        Self {
            inner: Arc::new(Inner {
                compiled: ArcSwap::from_pointee(compiled),
                store,
                clock,
                global_hash: target_hash_with(&hasher, &Target::Global),
                hasher,
                bans: Bans::new(),
                autoban: Mutex::new(AutobanState::default()),
                lease_seq: AtomicU64::new(1),
                keyed: AtomicBool::new(true),
                id: ENGINE_IDS.fetch_add(1, Ordering::Relaxed),
                epoch: AtomicU64::new(0),
                swap: Mutex::new(()),
            }),
        }
    }

    /// The embedded default: a bounded memory store and a coarse clock.
    pub fn in_memory(policy: Policy, max_keys: usize) -> Self {
        Self::new(
            policy,
            Arc::new(MemoryStore::new(max_keys)),
            Arc::new(CoarseClock::new()),
        )
    }

    fn compile(hasher: &foldhash::quality::RandomState, policy: Policy, lists: Arc<Blocklists>) -> Compiled {
        let name_hashes: Vec<u64> = policy
            .limits()
            .iter()
            .map(|l| Policy::name_hash(hasher, l.name))
            .collect();
        let gcras = policy
            .limits()
            .iter()
            .map(|l| match l.kind {
                LimitKind::Rate(r) => Some(r.gcra()),
                LimitKind::Concurrency(_) => None,
            })
            .collect();
        let mut routes: HashMap<&'static str, [Route; 2], _> = HashMap::default();
        for (side, action, _) in policy.actions() {
            let action = crate::policy::intern(&action);
            let route: Route = policy
                .action_limits(side, action)
                .map(|ix| {
                    ix.iter()
                        .map(|&i| {
                            let l = &policy.limits()[i];
                            let (gcra, window, cap) = match l.kind {
                                LimitKind::Rate(rate) => (rate.gcra(), rate.period(), false),
                                LimitKind::Concurrency(_) => (Gcra::new(1, 1), Duration::ZERO, true),
                            };
                            let (per, anonymous_only) = match l.scope {
                                Scope::Global => (None, false),
                                Scope::Target(Per::Kind(k)) => (Some(k), false),
                                Scope::Target(Per::AnonymousIp) => (Some(TargetKind::Ip), true),
                            };
                            FastLimit {
                                name_hash: name_hashes[i],
                                gcra,
                                window,
                                index: i,
                                per,
                                anonymous_only,
                                shadow: l.shadow,
                                cap,
                            }
                        })
                        .collect::<Box<[FastLimit]>>()
                })
                .filter(|r| r.iter().filter(|l| !l.cap).count() <= FAST_BUCKETS);
            routes.entry(action).or_insert_with(|| [None, None])[side as usize] = route;
        }
        Compiled {
            policy,
            lists,
            name_hashes,
            gcras,
            routes,
        }
    }

    /// Replaces the policy. Counters (keyed by limit name) and bans are kept.
    /// The blocklist sources in force are kept.
    pub fn reload(&self, policy: Policy) {
        let _swap = self.inner.swap.lock().unwrap_or_else(|p| p.into_inner());
        let lists = self.inner.compiled.load().lists.clone();
        let compiled = Self::compile(&self.inner.hasher, policy, lists);
        self.inner.compiled.store(Arc::new(compiled));
        self.inner.epoch.fetch_add(1, Ordering::Release);
    }

    /// Swaps in a new set of blocklist sources, atomically: a decision sees
    /// the old set or the new one, never a mix. The policy is kept.
    pub fn set_blocklists(&self, lists: Arc<Blocklists>) {
        let _swap = self.inner.swap.lock().unwrap_or_else(|p| p.into_inner());
        let policy = self.inner.compiled.load().policy.clone();
        let compiled = Self::compile(&self.inner.hasher, policy, lists);
        self.inner.compiled.store(Arc::new(compiled));
        self.inner.epoch.fetch_add(1, Ordering::Release);
    }

    /// The blocklist sources in force.
    pub fn blocklists(&self) -> Arc<Blocklists> {
        self.inner.compiled.load().lists.clone()
    }

    /// Runs `f` on the policy in force without copying it (the hot path's
    /// way to validate a request against the policy).
    pub fn with_policy<R>(&self, f: impl FnOnce(&Policy) -> R) -> R {
        f(&self.inner.compiled.load().policy)
    }

    /// A copy of the policy in force.
    pub fn policy(&self) -> Policy {
        self.inner.compiled.load().policy.clone()
    }

    /// The engine's clock reading.
    pub fn now(&self) -> Nanos {
        self.inner.clock.now()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The ban list.
    pub fn bans(&self) -> &Bans {
        &self.inner.bans
    }

    /// Bans `target` for `duration` (`None`: until lifted).
    ///
    /// A single address, or any network narrower than the grouping
    /// prefix, is grouped like the requests it should stop (an IPv6
    /// address or /96 bans its /64 by default): requests are checked per
    /// group, so a ban on part of one would never match.
    pub fn ban(&self, target: Target, duration: Option<Duration>, reason: &str) -> Ban {
        let target = self.normalize_ban(target);
        let now = self.now();
        let ban = Ban {
            target,
            reason: reason.into(),
            created: now,
            expires: duration.map(|d| now.saturating_add(nanos(d))),
            source: BanSource::Manual,
        };
        self.inner.bans.insert(ban.clone());
        ban
    }

    /// Lifts a ban on exactly `target` (a single address meaning its group,
    /// as in [`Engine::ban`]).
    pub fn unban(&self, target: &Target) -> Option<Ban> {
        self.inner.bans.remove(&self.normalize_ban(target.clone()))
    }

    /// A ban's target as [`Engine::ban`] stores it.
    fn normalize_ban(&self, target: Target) -> Target {
        self.inner
            .compiled
            .load()
            .policy
            .normalizer()
            .normalize_ban(target)
    }

    #[inline]
    fn target_hash(&self, t: &Target) -> u64 {
        match t {
            Target::Global => self.inner.global_hash,
            t => target_hash_with(&self.inner.hasher, t),
        }
    }

    /// Plans a decision: resolves targets, exemptions, bans and the limits
    /// that apply, without touching the store. For callers whose store is
    /// asynchronous; [`Engine::decide`] does plan, store and finish in one.
    pub fn plan(&self, req: &Request<'_>, mode: Mode) -> Result<Plan, EngineError> {
        let compiled = self.inner.compiled.load_full();
        let mut core = Core::default();
        self.plan_in(&compiled, req, mode, &mut core)?;
        Ok(Plan { compiled, core })
    }

    /// Fills `plan` (a fresh [`Core`]) in place: the plan is large and inline,
    /// and moving it around costs more than building it.
    fn plan_in(
        &self,
        compiled: &Compiled,
        req: &Request<'_>,
        mode: Mode,
        plan: &mut Core,
    ) -> Result<(), EngineError> {
        let policy = &compiled.policy;
        let Some(indexes) = policy.action_limits(req.side, req.action) else {
            return Err(EngineError::UnknownAction {
                side: req.side,
                action: req.action.to_owned(),
            });
        };
        let now = self.now();
        plan.side = req.side;
        plan.now = now;
        plan.batch.dry_run = mode == Mode::DryRun;
        if let Some(ip) = req.targets.ip {
            plan.targets.push(policy.normalizer().ip_target(ip));
        }
        for t in [&req.targets.user, &req.targets.server, &req.targets.appservice]
            .into_iter()
            .flatten()
        {
            plan.targets.push(t.clone());
        }
        if let Some(t) = plan.targets.iter().find(|t| policy.is_exempt(t)) {
            plan.early = Some(Box::new(Decision::early(
                true,
                Duration::ZERO,
                Reason::Exempt(t.clone()),
            )));
            return Ok(());
        }
        if let Some(t) = plan.targets.iter().find(|t| policy.blocked(t).is_some()) {
            plan.early = Some(Box::new(Decision::early(
                false,
                Duration::MAX,
                Reason::Blocked(Blocked::config(t.clone())),
            )));
            return Ok(());
        }
        if !compiled.lists.is_empty() {
            let count = mode != Mode::DryRun;
            for t in &plan.targets {
                let Some(hit) = compiled
                    .lists
                    .check_cached(req.side, t, self.target_hash(t), count)
                else {
                    continue;
                };
                if hit.action == ListAction::Deny {
                    let blocked = Box::new(Blocked {
                        target: t.clone(),
                        list: Some(hit),
                    });
                    plan.early = Some(Box::new(Decision::early(
                        false,
                        Duration::MAX,
                        Reason::Blocked(blocked),
                    )));
                    return Ok(());
                }
                plan.listed.get_or_insert_with(|| Box::new(hit));
            }
        }
        if let Some(ban) = plan.targets.iter().find_map(|t| self.inner.bans.find(t, now)) {
            let wait = ban
                .expires
                .map_or(Duration::MAX, |e| Duration::from_nanos(e - now));
            plan.early = Some(Box::new(Decision::early(
                false,
                wait,
                Reason::Banned(Box::new(ban)),
            )));
            return Ok(());
        }
        let anonymous = req.targets.user.is_none() && req.targets.appservice.is_none();
        let has_overrides = !policy.overrides().is_empty();
        let mut hashes: [Option<u64>; 5] = [None; 5];
        for &i in indexes {
            let limit = &policy.limits()[i];
            if matches!(
                (limit.kind, mode),
                (LimitKind::Concurrency(_), Mode::Check | Mode::DryRun)
            ) {
                continue;
            }
            let target = match limit.scope {
                Scope::Global if req.targets.without_global => None,
                Scope::Global => Some(Target::Global),
                Scope::Target(Per::Kind(k)) => plan.targets.iter().find(|t| t.kind() == k).cloned(),
                Scope::Target(Per::AnonymousIp) if anonymous => {
                    plan.targets.iter().find(|t| t.kind() == TargetKind::Ip).cloned()
                }
                Scope::Target(Per::AnonymousIp) => None,
            };
            let Some(target) = target else { continue };
            let effect = match limit.scope {
                Scope::Target(_) if has_overrides => {
                    policy.override_for(&target, req.action).map(|o| o.effect)
                }
                _ => None,
            };
            if effect == Some(Effect::Unlimited) {
                continue;
            }
            let kind_ix = target.kind() as usize;
            let th = *hashes[kind_ix].get_or_insert_with(|| self.target_hash(&target));
            let key = mix(compiled.name_hashes[i], th);
            self.inner.store.prefetch(key);
            match limit.kind {
                LimitKind::Rate(rate) => {
                    let (rate, gcra) = match effect {
                        Some(Effect::Multiply(f)) => {
                            let r = rate.scaled(f);
                            (r, r.gcra())
                        }
                        Some(Effect::Replace(r)) => (r, r.gcra()),
                        _ => (rate, compiled.gcras[i].unwrap_or_else(|| rate.gcra())),
                    };
                    plan.entries.push(Entry {
                        limit: i,
                        place: Place::Bucket(plan.batch.buckets.len()),
                        window: Some(rate.period()),
                    });
                    plan.batch.buckets.push(Bucket {
                        key,
                        limit: limit.name,
                        target,
                        gcra,
                        cost: if matches!(mode, Mode::Acquire { .. }) {
                            1
                        } else {
                            req.cost
                        },
                        shadow: limit.shadow,
                    });
                }
                LimitKind::Concurrency(max) => {
                    let max = match effect {
                        Some(Effect::Multiply(f)) => scale_cap(max, f),
                        _ => max,
                    };
                    plan.entries.push(Entry {
                        limit: i,
                        place: Place::Slot(plan.batch.slots.len()),
                        window: None,
                    });
                    plan.batch.slots.push(Slot {
                        key,
                        limit: limit.name,
                        target,
                        max,
                        shadow: limit.shadow,
                    });
                }
            }
        }
        // An in-process guard with no slot to hold needs no lease (and so no
        // lock in the store); API leases are always issued, for the caller
        // to release.
        let lease_needed = !plan.batch.slots.is_empty() || matches!(mode, Mode::Acquire { ttl: Some(_) });
        if let (Mode::Acquire { ttl }, true) = (mode, lease_needed) {
            let seq = self.inner.lease_seq.fetch_add(1, Ordering::Relaxed);
            let tag = self.inner.hasher.hash_one((seq, now));
            let id = (u128::from(seq) << 64) | u128::from(tag);
            let expires = ttl.map_or(Nanos::MAX, |t| now.saturating_add(nanos(t)));
            plan.batch.lease = Some((id, expires));
        }
        Ok(())
    }

    /// Turns the store's answer into a decision, and applies automatic bans.
    pub fn finish(&self, mut plan: Plan, outcome: Outcome) -> Decision {
        self.finish_in(&plan.compiled, &mut plan.core, &outcome)
    }

    fn finish_in(&self, compiled: &Compiled, plan: &mut Core, outcome: &Outcome) -> Decision {
        if let Some(d) = plan.early.take() {
            return *d;
        }
        let policy = &compiled.policy;
        let now = plan.now;
        let mut d = Decision::early(true, Duration::ZERO, Reason::Allowed);
        let mut tally = Tally::default();
        if let Some(hit) = plan.listed.take() {
            let name = compiled
                .lists
                .source(&hit.source)
                .map_or("blocklist", |s| s.report_name());
            let report = LimitReport {
                name,
                target: hit.target,
                limit: 0,
                window: None,
                remaining: 0,
                reset: Duration::ZERO,
                outcome: LimitOutcome::Allowed,
                shadow: true,
            };
            tally.push(&mut d, report, false, Duration::MAX);
        }
        for e in &plan.entries {
            let l = &policy.limits()[e.limit];
            match e.place {
                Place::Bucket(i) => {
                    let b = &plan.batch.buckets[i];
                    let r = outcome
                        .buckets
                        .get(i)
                        .copied()
                        .unwrap_or_else(|| KeyedResult::default().judge(b.gcra, now, 0));
                    tally.bucket(&mut d, l.name, b.target.clone(), b.gcra, e.window, b.shadow, r);
                }
                Place::Slot(i) => {
                    let s = &plan.batch.slots[i];
                    let r = outcome.slots.get(i).copied();
                    let ok = r.is_none_or(|r| r.allowed);
                    let held = r.map_or(0, |r| r.held);
                    let report = LimitReport {
                        name: l.name,
                        target: s.target.clone(),
                        limit: u64::from(s.max),
                        window: None,
                        remaining: u64::from(s.max.saturating_sub(held)),
                        reset: Duration::ZERO,
                        outcome: LimitOutcome::Allowed,
                        shadow: s.shadow,
                    };
                    // A full slot frees when someone releases: no time to promise.
                    tally.push(&mut d, report, ok, Duration::ZERO);
                }
            }
        }
        // The store refused as a whole (e.g. a race undone): denied.
        let refused = !plan.batch.dry_run && !outcome.committed && plan.needs_store();
        let lease = match plan.batch.lease {
            Some((id, expires)) if outcome.committed => Some(Lease { id, expires }),
            _ => None,
        };
        let action = plan.entries.first().map(|e| policy.limits()[e.limit].action);
        let ctx = Context {
            policy,
            side: plan.side,
            action,
            now,
            dry_run: plan.batch.dry_run,
        };
        self.conclude(&ctx, &mut d, tally, refused, lease, || plan.targets.clone());
        d
    }

    /// The end of every decision: the verdict, the reason, the lease and
    /// automatic bans, from the tallied limits. `targets` is only called
    /// when a denial may place a ban.
    #[inline(always)]
    fn conclude(
        &self,
        ctx: &Context<'_>,
        d: &mut Decision,
        tally: Tally,
        refused: bool,
        lease: Option<Lease>,
        targets: impl FnOnce() -> SmallVec<[Target; 4]>,
    ) {
        d.allowed &= !refused;
        (d.retry_after, d.reason) = match tally.worst {
            None => (Duration::ZERO, Reason::Allowed),
            Some((retry, name, true)) => (retry, Reason::TooLarge(name)),
            Some((retry, name, false)) => (retry, Reason::Limited(name)),
        };
        d.lease = lease.filter(|_| d.allowed);
        d.banned = match ctx.action {
            Some(action) if !d.allowed && !ctx.dry_run && !ctx.policy.autobans().is_empty() => {
                // Only denials by a limit that counts a target itself count
                // towards that target's ban: a global limit running dry is
                // not any one client's fault.
                let culprits: SmallVec<[TargetKind; 4]> = d
                    .limits
                    .iter()
                    .filter(|l| l.outcome == LimitOutcome::Denied && l.target != Target::Global)
                    .map(|l| l.target.kind())
                    .collect();
                self.autoban(ctx.policy, ctx.side, action, &targets(), &culprits, ctx.now)
                    .map(Box::new)
            }
            _ => None,
        };
    }

    fn autoban(
        &self,
        policy: &Policy,
        side: Side,
        action: &'static str,
        targets: &[Target],
        culprits: &[TargetKind],
        now: Nanos,
    ) -> Option<Ban> {
        let rules = policy.autobans();
        if rules.is_empty() {
            return None;
        }
        let mut st = self.inner.autoban.lock().unwrap_or_else(|p| p.into_inner());
        let mut placed = None;
        for rule in rules {
            if *rule.action != *action
                || rule.side.is_some_and(|s| s != side)
                || !culprits.contains(&rule.per)
            {
                continue;
            }
            let Some(target) = targets.iter().find(|t| t.kind() == rule.per) else {
                continue;
            };
            let denials = u64::from(rule.denials.max(1));
            let g = Gcra::new((nanos(rule.window) / denials).max(1), denials);
            if st.counters.len() >= AUTOBAN_MAX_ENTRIES {
                st.counters.retain(|_, tat| *tat > now);
            }
            if st.counters.len() >= AUTOBAN_MAX_ENTRIES {
                // Still full of live counters: refuse to grow; count nothing new.
                continue;
            }
            let key = (action, target.clone());
            let tat = st.counters.get(&key).copied().unwrap_or(0);
            let trip = match g.check(tat, now, 1) {
                Verdict::Allow { new_tat } => {
                    st.counters.insert(key.clone(), new_tat);
                    g.snapshot(new_tat, now).remaining == 0
                }
                Verdict::Deny { .. } | Verdict::Impossible => true,
            };
            if !trip {
                continue;
            }
            st.counters.remove(&key);
            if st.offenses.len() >= AUTOBAN_MAX_ENTRIES {
                st.offenses
                    .retain(|_, (_, end)| end.saturating_add(nanos(rule.forget_after)) > now);
            }
            let (level, last_end) = st.offenses.get(target).copied().unwrap_or((0, 0));
            let level = if last_end.saturating_add(nanos(rule.forget_after)) <= now {
                0
            } else {
                level
            };
            let factor = 1u32.checked_shl(level.min(31)).unwrap_or(u32::MAX);
            let dur = rule.ban.saturating_mul(factor).min(rule.max_ban.max(rule.ban));
            let expires = now.saturating_add(nanos(dur));
            st.offenses.insert(target.clone(), (level + 1, expires));
            // Bounded: an attacker with many addresses (an IPv6 /32 holds
            // 2^32 /64s) must not grow the ban list without end. Expired
            // bans go first; at the cap no more automatic bans are placed
            // (the limits still deny).
            if self.inner.bans.len() >= MAX_AUTO_BANS {
                // A purge scans every ban under the list's write lock: at
                // most once a second, however fast the triggers come.
                if now.saturating_sub(st.last_purge) >= 1_000_000_000 {
                    st.last_purge = now;
                    self.inner.bans.purge(now);
                }
                if self.inner.bans.len() >= MAX_AUTO_BANS {
                    continue;
                }
            }
            let ban = Ban {
                target: target.clone(),
                reason: format!(
                    "automatic: {} denials of {side}.{action} within {}",
                    rule.denials,
                    crate::rate::format_duration(rule.window)
                )
                .into(),
                created: now,
                expires: Some(expires),
                source: BanSource::Auto,
            };
            self.inner.bans.insert(ban.clone());
            placed = Some(ban);
        }
        placed
    }

    /// The common decision without a [`Plan`]: rate limits only, nobody
    /// exempt, banned, blocked or overridden, at most [`FAST_BUCKETS`]
    /// buckets, a store that keys by hash. The buckets live on the stack
    /// as [`KeyedBucket`]s and the targets are borrowed from the request,
    /// so nothing is cloned or dropped on the allowed path; reports are
    /// only built when asked for (`full`) or on a denial. Everything else
    /// answers [`Fast::Slow`] before touching the store, and the general
    /// path decides. Same semantics: `tests/model.rs` runs every random
    /// history through an engine on each path and requires equal decisions.
    #[inline(always)]
    fn fast(
        &self,
        compiled: &Compiled,
        req: &Request<'_>,
        mode: Mode,
        full: Option<&mut Decision>,
    ) -> Result<Fast, EngineError> {
        let dry_run = mode == Mode::DryRun;
        // An in-process acquire (a guard) is a check of cost 1 when no
        // concurrency cap applies to the request; API leases always take
        // the general path (their callers get a lease to release).
        let acquire = match mode {
            Mode::Check | Mode::DryRun => false,
            Mode::Acquire { ttl: None } => true,
            Mode::Acquire { ttl: Some(_) } => return Ok(Fast::Slow),
        };
        let policy = &compiled.policy;
        let Some(route) = compiled
            .routes
            .get(req.action)
            .and_then(|r| r[req.side as usize].as_deref())
        else {
            return Ok(Fast::Slow);
        };
        if !self.inner.keyed.load(Ordering::Relaxed) {
            return Ok(Fast::Slow);
        }
        let now = self.now();
        let ip = req.targets.ip.map(|a| policy.normalizer().ip_target(a));
        let targets = [
            ip.as_ref(),
            req.targets.user.as_ref(),
            req.targets.server.as_ref(),
            req.targets.appservice.as_ref(),
        ];
        // As in `plan_in`: the first target of a kind is the one counted.
        let mut by_kind: [Option<&Target>; 5] = [None; 5];
        for t in targets.into_iter().flatten() {
            by_kind[t.kind() as usize].get_or_insert(t);
        }
        let anonymous = req.targets.user.is_none() && req.targets.appservice.is_none();
        let has_overrides = !policy.overrides().is_empty();
        let cost = if acquire { 1 } else { req.cost };
        // Plain arrays: a `SmallVec`'s spill checks on every access cost
        // more than filling four entries.
        let mut buckets = [KeyedBucket {
            key: 0,
            gcra: Gcra::new(1, 1),
            cost,
            shadow: false,
        }; FAST_BUCKETS];
        let mut n = 0;
        // Per bucket: its route entry and the kind of its target (`None`:
        // global).
        let mut meta: [(usize, Option<TargetKind>); FAST_BUCKETS] = [(0, None); FAST_BUCKETS];
        let mut hashes: [Option<u64>; 5] = [None; 5];
        for (r, fl) in route.iter().enumerate() {
            let th = match fl.per {
                None if fl.cap && acquire => return Ok(Fast::Slow),
                None if fl.cap => continue,
                None if req.targets.without_global => continue,
                None => self.inner.global_hash,
                Some(k) => {
                    if fl.anonymous_only && !anonymous {
                        continue;
                    }
                    let Some(t) = by_kind[k as usize] else { continue };
                    if fl.cap {
                        if acquire {
                            return Ok(Fast::Slow);
                        }
                        continue;
                    }
                    if has_overrides && policy.override_for(t, req.action).is_some() {
                        return Ok(Fast::Slow);
                    }
                    *hashes[k as usize].get_or_insert_with(|| self.target_hash(t))
                }
            };
            let key = mix(fl.name_hash, th);
            // Not a global bucket's line: every decision touches it, so it
            // is cached already, or another core holds it modified — and a
            // read prefetch would fetch it shared, to be upgraded again by
            // the CAS (two coherence transfers instead of one).
            if fl.per.is_some() {
                self.inner.store.prefetch(key);
            }
            let Some(slot) = buckets.get_mut(n) else {
                return Ok(Fast::Slow);
            };
            *slot = KeyedBucket {
                key,
                gcra: fl.gcra,
                cost,
                shadow: fl.shadow,
            };
            meta[n] = (r, fl.per);
            n += 1;
        }
        let buckets = &buckets[..n];
        // Checked after the keys are known and their lines are on the way
        // from memory: the miss overlaps with these checks.
        let bans = self.inner.bans.is_empty();
        let lists = &compiled.lists;
        for t in targets.into_iter().flatten() {
            if policy.is_exempt(t)
                || policy.blocked(t).is_some()
                || (!bans && self.inner.bans.find(t, now).is_some())
            {
                return Ok(Fast::Slow);
            }
            // A hit is decided (and counted) by the general path.
            if !lists.is_empty() {
                let k = t.kind() as usize;
                let th = *hashes[k].get_or_insert_with(|| self.target_hash(t));
                if lists.check_cached(req.side, t, th, false).is_some() {
                    return Ok(Fast::Slow);
                }
            }
        }
        if buckets.is_empty() {
            return Ok(Fast::Allowed);
        }
        let mut results = [KeyedResult::default(); FAST_BUCKETS];
        let results = &mut results[..n];
        let Some(committed) = self.inner.store.decide_keyed(buckets, dry_run, now, results) else {
            self.inner.keyed.store(false, Ordering::Relaxed);
            return Ok(Fast::Slow);
        };
        if committed && full.is_none() {
            return Ok(Fast::Allowed);
        }
        let mut local = None;
        let d = match full {
            Some(d) => d,
            None => local.insert(Decision::early(true, Duration::ZERO, Reason::Allowed)),
        };
        let mut tally = Tally::default();
        for ((b, r), &(ri, per)) in buckets.iter().zip(results.iter()).zip(&meta) {
            let fl = &route[ri];
            let target = match per {
                None => Target::Global,
                Some(k) => by_kind[k as usize].cloned().unwrap_or(Target::Global),
            };
            let name = policy.limits()[fl.index].name;
            tally.bucket(
                d,
                name,
                target,
                b.gcra,
                Some(fl.window),
                b.shadow,
                r.judge(b.gcra, now, cost),
            );
        }
        let ctx = Context {
            policy,
            side: req.side,
            action: Some(policy.limits()[route[meta[0].0].index].action),
            now,
            dry_run,
        };
        self.conclude(&ctx, d, tally, !dry_run && !committed, None, || {
            targets.into_iter().flatten().cloned().collect()
        });
        Ok(match local {
            Some(d) if !d.allowed => Fast::Denied(d.retry_after),
            Some(_) => Fast::Allowed,
            None => Fast::Decided,
        })
    }

    /// Runs `f` on the policy in force, from this thread's cache when it is
    /// current (see [`POLICY`]).
    #[inline(always)]
    fn with_compiled<R>(&self, f: impl FnOnce(&Compiled) -> R) -> R {
        let epoch = self.inner.epoch.load(Ordering::Acquire);
        let id = self.inner.id;
        let entry = match POLICY.try_with(Cell::take).ok().flatten() {
            Some(e) if e.0 == id && e.1 == epoch => e,
            _ => (id, epoch, self.inner.compiled.load_full()),
        };
        let r = f(&entry.2);
        let _ = POLICY.try_with(|c| c.set(Some(entry)));
        r
    }

    /// Plans, asks the store and finishes: one decision.
    pub fn decide(&self, req: &Request<'_>, mode: Mode) -> Result<Decision, EngineError> {
        // Built in place and moved once: a decision is large.
        let mut d = Decision::early(true, Duration::ZERO, Reason::Allowed);
        self.with_compiled(|compiled| self.decide_into(compiled, req, mode, &mut d))?;
        Ok(d)
    }

    #[inline(always)]
    fn decide_into(
        &self,
        compiled: &Compiled,
        req: &Request<'_>,
        mode: Mode,
        d: &mut Decision,
    ) -> Result<(), EngineError> {
        if let Mode::Check | Mode::DryRun | Mode::Acquire { ttl: None } = mode {
            match self.fast(compiled, req, mode, Some(d))? {
                Fast::Slow => {}
                Fast::Allowed | Fast::Decided | Fast::Denied(_) => return Ok(()),
            }
        }
        let mut core = Core::default();
        self.plan_in(compiled, req, mode, &mut core)?;
        let outcome = if core.needs_store() {
            self.inner.store.decide(&core.batch, core.now)?
        } else {
            Outcome::default()
        };
        *d = self.finish_in(compiled, &mut core, &outcome);
        Ok(())
    }

    /// Checks and consumes, answering only the verdict: for embedders that
    /// need no per-limit report (a gateway admitting a connection, say). Same
    /// semantics as [`Engine::check`] — all or nothing, automatic bans — but
    /// no [`LimitReport`]s are built on the allowed path.
    pub fn admit(&self, req: &Request<'_>) -> Result<Admission, EngineError> {
        self.with_compiled(|compiled| self.admit_with(compiled, req))
    }

    #[inline(always)]
    fn admit_with(&self, compiled: &Compiled, req: &Request<'_>) -> Result<Admission, EngineError> {
        match self.fast(compiled, req, Mode::Check, None)? {
            Fast::Allowed | Fast::Decided => {
                return Ok(Admission {
                    allowed: true,
                    retry_after: Duration::ZERO,
                })
            }
            Fast::Denied(retry_after) => {
                return Ok(Admission {
                    allowed: false,
                    retry_after,
                })
            }
            Fast::Slow => {}
        }
        let mut core = Core::default();
        self.plan_in(compiled, req, Mode::Check, &mut core)?;
        if let Some(d) = &core.early {
            return Ok(Admission {
                allowed: d.allowed,
                retry_after: d.retry_after,
            });
        }
        if !core.needs_store() {
            return Ok(Admission {
                allowed: true,
                retry_after: Duration::ZERO,
            });
        }
        let outcome = self.inner.store.decide(&core.batch, core.now)?;
        if outcome.committed {
            return Ok(Admission {
                allowed: true,
                retry_after: Duration::ZERO,
            });
        }
        // Denied: the full path reports, applies automatic bans and gives
        // the exact wait.
        let d = self.finish_in(compiled, &mut core, &outcome);
        Ok(Admission {
            allowed: d.allowed,
            retry_after: d.retry_after,
        })
    }

    /// Checks and consumes.
    pub fn check(&self, req: &Request<'_>) -> Result<Decision, EngineError> {
        self.decide(req, Mode::Check)
    }

    /// Evaluates without consuming.
    pub fn dry_run(&self, req: &Request<'_>) -> Result<Decision, EngineError> {
        self.decide(req, Mode::DryRun)
    }

    /// Takes a concurrency lease (and checks the action's rates). The lease
    /// lapses after `ttl` unless released first.
    pub fn acquire(&self, req: &Request<'_>, ttl: Duration) -> Result<Decision, EngineError> {
        self.decide(req, Mode::Acquire { ttl: Some(ttl) })
    }

    /// Takes a concurrency slot for as long as the returned guard lives:
    /// for callers in the same process (a gateway's connection, say).
    pub fn acquire_guard(&self, req: &Request<'_>) -> Result<Result<Guard, Decision>, EngineError> {
        let d = self.decide(req, Mode::Acquire { ttl: None })?;
        Ok(self.guard(d))
    }

    /// The guard for a decision taken with `Mode::Acquire { ttl: None }`
    /// through [`Engine::plan`], a store's own asynchronous call and
    /// [`Engine::finish`] (a caller that must not wait for a remote store
    /// on its thread); the decision back if it denied.
    #[allow(
        clippy::result_large_err,
        reason = "the same shape as acquire_guard's inner result: a denial is as large as a grant, and boxing it would allocate per denial"
    )]
    pub fn guard(&self, d: Decision) -> Result<Guard, Decision> {
        match (d.allowed, d.lease) {
            (true, Some(lease)) => Ok(Guard {
                engine: Some(self.clone()),
                lease: lease.id,
                decision: d,
            }),
            // Nothing to release: no engine handle either (cloning it is an
            // atomic increment every thread deciding shares).
            (true, None) => Ok(Guard {
                engine: None,
                lease: 0,
                decision: d,
            }),
            (false, _) => Err(d),
        }
    }

    /// Releases a lease; `false` if unknown or already expired.
    pub fn release(&self, lease: LeaseId) -> Result<bool, EngineError> {
        Ok(self.inner.store.release(lease, self.now())?)
    }

    /// Releases a lease without waiting for a remote store's answer
    /// ([`Store::release_detached`]).
    pub fn release_detached(&self, lease: LeaseId) {
        self.inner.store.release_detached(lease, self.now());
    }

    /// The state of every limit counting `target`, without consuming: for
    /// operators' `inspect`. A single address is grouped to the policy's
    /// prefix, and overrides for the target apply, as they do in decisions.
    pub fn inspect(&self, target: &Target) -> Result<Vec<LimitReport>, EngineError> {
        let compiled = self.inner.compiled.load_full();
        let now = self.now();
        let target = &compiled.policy.normalizer().normalize(target.clone());
        let th = self.target_hash(target);
        let mut out = Vec::new();
        for (i, l) in compiled.policy.limits().iter().enumerate() {
            let applies = match l.scope {
                Scope::Global => *target == Target::Global,
                Scope::Target(Per::Kind(k)) => target.kind() == k,
                Scope::Target(Per::AnonymousIp) => target.kind() == TargetKind::Ip,
            };
            if !applies {
                continue;
            }
            let effect = match l.scope {
                Scope::Global => None,
                Scope::Target(_) => compiled.policy.override_for(target, l.action).map(|o| o.effect),
            };
            if effect == Some(Effect::Unlimited) {
                continue;
            }
            let key = mix(compiled.name_hashes[i], th);
            match l.kind {
                LimitKind::Rate(rate) => {
                    let rate = match effect {
                        Some(Effect::Multiply(f)) => rate.scaled(f),
                        Some(Effect::Replace(r)) => r,
                        _ => rate,
                    };
                    let b = Bucket {
                        key,
                        limit: l.name,
                        target: target.clone(),
                        gcra: rate.gcra(),
                        cost: 1,
                        shadow: l.shadow,
                    };
                    let tat = self.inner.store.peek(&b, now)?;
                    let snap = b.gcra.snapshot(tat, now);
                    out.push(LimitReport {
                        name: l.name,
                        target: target.clone(),
                        limit: rate.burst(),
                        window: Some(rate.period()),
                        remaining: snap.remaining,
                        reset: Duration::from_nanos(snap.reset),
                        outcome: if snap.remaining == 0 {
                            LimitOutcome::Denied
                        } else {
                            LimitOutcome::Allowed
                        },
                        shadow: l.shadow,
                    });
                }
                LimitKind::Concurrency(max) => {
                    let max = match effect {
                        Some(Effect::Multiply(f)) => scale_cap(max, f),
                        _ => max,
                    };
                    let s = Slot {
                        key,
                        limit: l.name,
                        target: target.clone(),
                        max,
                        shadow: l.shadow,
                    };
                    let held = self.inner.store.held(&s, now)?;
                    out.push(LimitReport {
                        name: l.name,
                        target: target.clone(),
                        limit: u64::from(max),
                        window: None,
                        remaining: u64::from(max.saturating_sub(held)),
                        reset: Duration::ZERO,
                        outcome: if held >= max {
                            LimitOutcome::Denied
                        } else {
                            LimitOutcome::Allowed
                        },
                        shadow: l.shadow,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Whether a target matches a blocklist entry of the policy in force.
    pub fn blocked(&self, target: &Target) -> Option<Matcher> {
        self.inner.compiled.load().policy.blocked(target).cloned()
    }
}

/// An in-process concurrency slot, released when dropped.
#[derive(Debug)]
pub struct Guard {
    /// Set when there is a lease to release.
    engine: Option<Engine>,
    lease: LeaseId,
    decision: Decision,
}

impl Guard {
    /// The decision that granted this guard.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The decision, and the guard itself only if it holds a lease: when
    /// no concurrency cap applied there is nothing to release, and a
    /// caller that keeps guards until a response ends need not keep (or
    /// allocate for) this one. The decision is moved out, not copied: the
    /// kept guard's [`Guard::decision`] is then an empty allowed one.
    pub fn split(mut self) -> (Decision, Option<Guard>) {
        let d = std::mem::replace(
            &mut self.decision,
            Decision::early(true, Duration::ZERO, Reason::Allowed),
        );
        if self.lease == 0 {
            (d, None)
        } else {
            (d, Some(self))
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let (Some(engine), true) = (&self.engine, self.lease != 0) {
            // A memory store never fails and answers at once; a remote
            // store is sent the release without this thread waiting.
            engine.release_detached(self.lease);
        }
    }
}
