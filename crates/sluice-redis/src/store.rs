//! [`RedisStore`]: the engine's [`Store`] on Redis or Valkey.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisResult, Script, ScriptInvocation};
use sluice_core::gcra::Snapshot;
use sluice_core::store::{
    Batch, Bucket, BucketResult, LeaseId, Outcome, Slot, SlotResult, Store, StoreError,
};
use sluice_core::time::nanos as nanos_of;
use sluice_core::Nanos;
use smallvec::SmallVec;

use crate::keys::Keys;
use crate::local::Local;

/// What a decision answers when Redis cannot be asked in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailMode {
    /// Allow it (fail open): a limiter outage must not become a server outage.
    #[default]
    Allow,
    /// Deny it, with a retry after one second.
    Deny,
}

/// Whose clock the scripts use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeSource {
    /// Redis' `TIME` (the default): every instance shares one clock.
    #[default]
    Server,
    /// The `now` the engine passes in. For tests that compare with the
    /// memory store under a fake clock; never for several instances. Keys
    /// then expire an hour after their TAT (expiry runs on real time).
    Caller,
}

/// How to reach Redis and how to behave.
#[derive(Debug, Clone)]
pub struct Options {
    /// `redis://[user:password@]host:port[/db]`, `valkey://…`, `unix://…`
    /// (`rediss://` with the `tls` feature).
    pub url: String,
    /// The URL names one node of a Redis Cluster.
    pub cluster: bool,
    /// Prefix of every key (no braces: they would move the hash tag).
    pub key_prefix: String,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed for one decision's round trips; past it, `on_error`.
    pub command_timeout: Duration,
    /// What to answer when Redis fails.
    pub on_error: FailMode,
    /// Deny locally, without Redis, targets known to be denied.
    pub deny_cache: bool,
    /// Take up to this many requests' worth of units per Redis call and
    /// admit the rest locally (1: off). See the crate docs for the bounds.
    pub local_admission: u32,
    /// How long locally held units stay usable.
    pub local_hold: Duration,
    /// Leases without a TTL (in-process guards) lapse after this long in
    /// Redis, so a crashed instance cannot hold slots forever.
    pub lease_max_ttl: Duration,
    /// Whose clock decides.
    pub time: TimeSource,
}

impl Options {
    /// Defaults for `url`: 1 s to connect, 250 ms per decision, fail open,
    /// denied cache on, local admission off.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster: false,
            key_prefix: "sluice:".into(),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_millis(250),
            on_error: FailMode::Allow,
            deny_cache: true,
            local_admission: 1,
            local_hold: Duration::from_secs(1),
            lease_max_ttl: Duration::from_secs(86_400),
            time: TimeSource::Server,
        }
    }
}

/// Why a store could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL does not parse.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    /// The key prefix contains a brace.
    #[error("key prefix {0:?} must not contain '{{' or '}}'")]
    Prefix(String),
    /// A TLS URL (`rediss://`, `valkeys://`) in a build without TLS.
    #[error("{0}:// (TLS) needs sluice built with TLS: cargo build --release --features sluice-redis/tls")]
    TlsNotBuilt(String),
    /// Not called inside a tokio runtime.
    #[error("RedisStore must be created inside a tokio runtime")]
    NoRuntime,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    /// Connected on first use, so an instance starts while Redis is down.
    Cluster(
        Arc<(
            tokio::sync::OnceCell<ClusterConnection>,
            redis::cluster::ClusterClient,
        )>,
    ),
}

impl Conn {
    async fn cluster(
        cell: &tokio::sync::OnceCell<ClusterConnection>,
        client: &redis::cluster::ClusterClient,
    ) -> RedisResult<ClusterConnection> {
        cell.get_or_try_init(|| client.get_async_connection())
            .await
            .cloned()
    }

    async fn script<T: FromRedisValue>(&self, inv: &ScriptInvocation<'_>) -> RedisResult<T> {
        match self {
            Conn::Single(c) => inv.invoke_async(&mut c.clone()).await,
            Conn::Cluster(c) => inv.invoke_async(&mut Self::cluster(&c.0, &c.1).await?).await,
        }
    }

    async fn cmd<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(c) => query(cmd, &mut c.clone()).await,
            Conn::Cluster(c) => query(cmd, &mut Self::cluster(&c.0, &c.1).await?).await,
        }
    }
}

async fn query<T: FromRedisValue, C: ConnectionLike>(cmd: &Cmd, con: &mut C) -> RedisResult<T> {
    cmd.query_async(con).await
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// Decisions that failed (timeouts, connection errors, bad replies).
    pub errors: u64,
    /// Decisions sent to Redis.
    pub remote: u64,
    /// Decisions denied by the local denied cache.
    pub cached_denials: u64,
    /// Decisions admitted from locally held units.
    pub local_admits: u64,
    /// Keys in the Redis database (refreshed by [`RedisStore::sync_bans`]).
    pub db_keys: u64,
    /// Live leases of every instance sharing the key prefix (refreshed by
    /// [`RedisStore::sync_bans`]).
    pub active_leases: u64,
}

struct Inner {
    conn: Conn,
    opts: Options,
    keys: Keys,
    decide: Script,
    undo: Script,
    release: Script,
    leases: Script,
    local: Local,
    handle: tokio::runtime::Handle,
    offset: AtomicU64,
    errors: AtomicU64,
    remote: AtomicU64,
    cached: AtomicU64,
    local_admits: AtomicU64,
    db_keys: AtomicU64,
    active_leases: AtomicU64,
    last_log: AtomicU64,
    /// Releases sent without waiting and not yet answered, and the wake-up
    /// for [`RedisStore::settle`].
    detached: AtomicU64,
    settled: tokio::sync::Notify,
}

/// The engine's store on Redis or Valkey. Cheap to clone; clones share
/// the connection. See the crate docs.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.inner.opts.cluster)
            .field("key_prefix", &self.inner.opts.key_prefix)
            .finish_non_exhaustive()
    }
}

/// Largest nanosecond count a Lua double holds exactly (2^53 − 1, ~104 days).
const EXACT: u64 = sluice_core::store::DOUBLE_EXACT_NANOS;

/// A reference instant for turning the script's "TAT − now" into the
/// memory store's `(tat, now)`: GCRA depends only on the difference.
const REF: Nanos = 1 << 60;

/// One Cluster slot's share of a decision (a single node: everything).
#[derive(Debug, Default)]
struct Group {
    tag: String,
    buckets: SmallVec<[usize; 4]>,
    slots: SmallVec<[usize; 2]>,
}

/// One script's answer for its group.
#[derive(Debug, Default, Clone)]
struct Reply {
    committed: bool,
    /// Per bucket of the group: (TAT − now before, after, extra units granted).
    buckets: SmallVec<[(u64, u64, u64); 4]>,
    held: SmallVec<[u32; 2]>,
    /// The lease's expiry in µs of the script's clock (0: none).
    lease_exp_us: u64,
}

fn tau(g: &sluice_core::gcra::Gcra) -> u64 {
    g.span().min(EXACT)
}

impl RedisStore {
    /// Connects. See [`RedisStore::open`]; this is the same, for async callers.
    pub async fn connect(opts: Options) -> Result<Self, ConnectError> {
        Self::open(opts)
    }

    /// A store whose connection is made on first use: an instance starts
    /// while Redis is down, answers `on_error` until it is up, and
    /// reconnects by itself after an outage. Must be called inside a tokio
    /// runtime, which then runs the store's I/O.
    pub fn open(opts: Options) -> Result<Self, ConnectError> {
        if opts.key_prefix.contains(['{', '}']) {
            return Err(ConnectError::Prefix(opts.key_prefix.clone()));
        }
        let scheme = opts.url.split_once("://").map_or("", |(s, _)| s);
        let tls = matches!(scheme, "rediss" | "valkeys");
        if tls && cfg!(not(feature = "tls")) {
            return Err(ConnectError::TlsNotBuilt(scheme.to_owned()));
        }
        // redis enables rustls without a crypto provider; pick ring (as the
        // HTTP gateway does). Fails harmlessly if one is installed already.
        #[cfg(feature = "tls")]
        if tls {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| ConnectError::NoRuntime)?;
        let conn = if opts.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(vec![opts.url.as_str()])
                .connection_timeout(opts.connect_timeout)
                .response_timeout(opts.command_timeout)
                .build()
                .map_err(ConnectError::Url)?;
            Conn::Cluster(Arc::new((tokio::sync::OnceCell::new(), client)))
        } else {
            let client = redis::Client::open(opts.url.as_str()).map_err(ConnectError::Url)?;
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(opts.connect_timeout))
                .set_response_timeout(Some(opts.command_timeout))
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(1))
                .set_number_of_retries(3);
            Conn::Single(ConnectionManager::new_lazy_with_config(client, cfg).map_err(ConnectError::Url)?)
        };
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                keys: Keys::new(&opts.key_prefix),
                decide: script(include_str!("lua/decide.lua")),
                undo: script(include_str!("lua/undo.lua")),
                release: script(include_str!("lua/release.lua")),
                leases: script(include_str!("lua/leases.lua")),
                local: Local::new(opts.deny_cache, opts.local_admission, nanos_of(opts.local_hold)),
                handle,
                offset: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                remote: AtomicU64::new(0),
                cached: AtomicU64::new(0),
                local_admits: AtomicU64::new(0),
                db_keys: AtomicU64::new(0),
                active_leases: AtomicU64::new(0),
                last_log: AtomicU64::new(0),
                detached: AtomicU64::new(0),
                settled: tokio::sync::Notify::new(),
                opts,
            }),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// Counters for metrics.
    pub fn stats(&self) -> RedisStats {
        let i = &self.inner;
        RedisStats {
            errors: i.errors.load(Ordering::Relaxed),
            remote: i.remote.load(Ordering::Relaxed),
            cached_denials: i.cached.load(Ordering::Relaxed),
            local_admits: i.local_admits.load(Ordering::Relaxed),
            db_keys: i.db_keys.load(Ordering::Relaxed),
            active_leases: i.active_leases.load(Ordering::Relaxed),
        }
    }

    /// Moves the scripts' clock forward by `by` (on top of Redis `TIME`;
    /// no effect with [`TimeSource::Caller`]):
    /// for tests, which must never sleep to see a bucket refill. Every
    /// handle of this store sees it; other stores (instances) do not.
    pub fn advance_clock(&self, by: Duration) {
        self.inner.offset.fetch_add(nanos_of(by), Ordering::Relaxed);
    }

    pub(crate) fn conn_cmd<T: FromRedisValue + Send + 'static>(
        &self,
        cmd: Cmd,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let this = self.clone();
        async move {
            let t = this.inner.opts.command_timeout;
            match tokio::time::timeout(t, this.inner.conn.cmd::<T>(&cmd)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(this.failed(unavailable(e))),
                Err(_) => Err(this.failed(StoreError::Unavailable(format!("no answer within {t:?}")))),
            }
        }
    }

    /// The runtime the store was opened in, which runs its I/O.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.inner.handle
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub(crate) fn set_db_keys(&self, n: u64) {
        self.inner.db_keys.store(n, Ordering::Relaxed);
    }

    /// Counts the live leases of every instance sharing the key prefix
    /// (one small script on the lease index; lapsed entries are dropped),
    /// and remembers the count for [`Store::active_leases`].
    /// [`RedisStore::sync_bans`] calls it every interval.
    pub async fn count_leases(&self, now: Nanos) -> Result<u64, StoreError> {
        let fut = async {
            let mut inv = self.inner.leases.prepare_invoke();
            let (pinned, offset) = self.clock_args(now);
            inv.key(self.inner.keys.lease_index()).arg(pinned).arg(offset);
            self.inner.conn.script::<u64>(&inv).await.map_err(unavailable)
        };
        let t = self.inner.opts.command_timeout;
        let n = match tokio::time::timeout(t, fut).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(self.failed(e)),
            Err(_) => return Err(self.failed(StoreError::Unavailable(format!("no answer within {t:?}")))),
        };
        self.inner.active_leases.store(n, Ordering::Relaxed);
        Ok(n)
    }

    /// Counts a failure and logs it (at most once a second).
    fn failed(&self, e: StoreError) -> StoreError {
        let i = &self.inner;
        i.errors.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, nanos_of);
        let last = i.last_log.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 1_000_000_000
            && i.last_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(errors = i.errors.load(Ordering::Relaxed), "redis store: {e}");
        }
        e
    }

    /// Decides a batch: the denied cache, then locally held units, then
    /// one script per Cluster slot (one in all for a single node), all
    /// within `command_timeout`.
    pub async fn decide_async(&self, batch: &Batch, now: Nanos) -> Result<Outcome, StoreError> {
        let i = &self.inner;
        if let Some(o) = i.local.denied(batch, now) {
            i.cached.fetch_add(1, Ordering::Relaxed);
            return Ok(o);
        }
        if let Some(o) = i.local.admit(batch, now) {
            i.local_admits.fetch_add(1, Ordering::Relaxed);
            return Ok(o);
        }
        i.remote.fetch_add(1, Ordering::Relaxed);
        let extras = i.local.extras(batch, now);
        let t = i.opts.command_timeout;
        match tokio::time::timeout(t, self.remote(batch, now, &extras)).await {
            Ok(Ok((out, granted))) => {
                i.local.learn(batch, &out, &granted, now);
                Ok(out)
            }
            Ok(Err(e)) => Err(self.failed(e)),
            Err(_) => Err(self.failed(StoreError::Unavailable(format!("no answer within {t:?}")))),
        }
    }

    /// [`RedisStore::decide_async`] run on the store's own runtime and
    /// awaited from any other: for callers on runtimes of their own (the
    /// HTTP gateway's workers). redis-rs spawns a connection's driver on
    /// whichever runtime is current when it (re)connects; awaited here, it
    /// always lands on the store's runtime, never on a worker whose thread
    /// a synchronous call may hold (which would stall every decision of
    /// the process until it timed out).
    ///
    /// The call runs to its end even if the caller goes (its request
    /// dropped): a lease it took then has no guard to give it back, so it
    /// is released here.
    pub async fn decide_spawned(&self, batch: &Batch, now: Nanos) -> Result<Outcome, StoreError> {
        let this = self.clone();
        let batch = batch.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner.handle.spawn(async move {
            let r = this.decide_async(&batch, now).await;
            if let Err(Ok(out)) = tx.send(r) {
                if let (true, Some((lease, _))) = (out.committed, batch.lease) {
                    this.release_detached(lease, now);
                }
            }
        });
        // Dropped unanswered: the store's runtime is shutting down.
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("redis store task ended".to_owned())))
    }

    /// Waits until every release sent without waiting
    /// ([`Store::release_detached`], a dropped guard's) has been answered,
    /// for at most `within`; `false` if some were still out. For shutdown:
    /// the store's runtime ending would cancel them, leaving their slots
    /// held in Redis until the lease's TTL (`lease_max_ttl`).
    pub async fn settle(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Made before the count is read: a wake-up between the two is
            // not lost.
            let settled = self.inner.settled.notified();
            if self.inner.detached.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return self.inner.detached.load(Ordering::Acquire) == 0;
            }
        }
    }

    /// [`RedisStore::decide_async`], answering `on_error` when Redis fails:
    /// the error is counted and logged, and the caller gets a decision.
    pub async fn decide_or_fallback(&self, batch: &Batch, now: Nanos) -> Outcome {
        match self.decide_async(batch, now).await {
            Ok(o) => o,
            Err(_) => self.fallback(batch, now),
        }
    }

    /// The outcome `on_error` prescribes for `batch`. A dry run is judged
    /// as the real request would be (allowed under `allow`) and consumes
    /// nothing either way.
    pub fn fallback(&self, batch: &Batch, now: Nanos) -> Outcome {
        let allow = self.inner.opts.on_error == FailMode::Allow;
        let deny_wait = Some(1_000_000_000);
        Outcome {
            buckets: batch
                .buckets
                .iter()
                .map(|b| BucketResult {
                    allowed: allow,
                    retry_after: if allow { None } else { deny_wait },
                    snapshot: if allow {
                        b.gcra.snapshot(0, now)
                    } else {
                        Snapshot {
                            remaining: 0,
                            reset: 1_000_000_000,
                        }
                    },
                })
                .collect(),
            slots: batch
                .slots
                .iter()
                .map(|s| SlotResult {
                    allowed: allow,
                    held: if allow { 0 } else { s.max },
                })
                .collect(),
            committed: allow && !batch.dry_run,
        }
    }

    fn groups(&self, batch: &Batch) -> SmallVec<[Group; 2]> {
        let cluster = self.inner.opts.cluster;
        let mut groups: SmallVec<[Group; 2]> = SmallVec::new();
        fn find(groups: &mut SmallVec<[Group; 2]>, cluster: bool, tag: String) -> usize {
            if !cluster {
                if groups.is_empty() {
                    groups.push(Group::default());
                }
                return 0;
            }
            match groups.iter().position(|g| g.tag == tag) {
                Some(p) => p,
                None => {
                    groups.push(Group {
                        tag,
                        ..Group::default()
                    });
                    groups.len() - 1
                }
            }
        }
        for (i, b) in batch.buckets.iter().enumerate() {
            let g = find(&mut groups, cluster, Keys::tag(&b.target));
            groups[g].buckets.push(i);
        }
        for (i, s) in batch.slots.iter().enumerate() {
            let g = find(&mut groups, cluster, Keys::tag(&s.target));
            groups[g].slots.push(i);
        }
        // Narrowest first, global last: a target that is itself limited
        // stops before the shared global bucket is touched (and undone).
        groups.sort_by_key(|g| g.tag == "global");
        groups
    }

    fn clock_args(&self, now: Nanos) -> (String, String) {
        match self.inner.opts.time {
            TimeSource::Server => (
                String::new(),
                self.inner.offset.load(Ordering::Relaxed).to_string(),
            ),
            TimeSource::Caller => (now.to_string(), "0".into()),
        }
    }

    fn lease_ttl(&self, batch: &Batch, now: Nanos) -> u64 {
        let max = nanos_of(self.inner.opts.lease_max_ttl).min(EXACT);
        batch.lease.map_or(0, |(_, exp)| exp.saturating_sub(now).min(max))
    }

    async fn run_decide(
        &self,
        batch: &Batch,
        g: &Group,
        now: Nanos,
        dry: bool,
        lease_inline: bool,
        extras: &[u64],
    ) -> Result<Reply, StoreError> {
        let keys = &self.inner.keys;
        let mut inv = self.inner.decide.prepare_invoke();
        let (pinned, offset) = self.clock_args(now);
        inv.arg(pinned)
            .arg(offset)
            .arg(g.buckets.len())
            .arg(g.slots.len())
            .arg(if dry { "1" } else { "0" });
        for &i in &g.buckets {
            let b: &Bucket = &batch.buckets[i];
            inv.key(keys.bucket(b.limit, &Keys::tag(&b.target)));
            inv.arg(b.gcra.emission().min(EXACT))
                .arg(tau(&b.gcra))
                .arg(b.cost)
                .arg(u8::from(b.shadow))
                .arg(u8::from(b.cost > b.gcra.burst()))
                .arg(extras.get(i).copied().unwrap_or(0));
        }
        for &j in &g.slots {
            let s: &Slot = &batch.slots[j];
            inv.key(keys.slot(s.limit, &Keys::tag(&s.target)));
            inv.arg(s.max).arg(u8::from(s.shadow));
        }
        let with_lease = lease_inline && batch.lease.is_some();
        if with_lease || !g.slots.is_empty() {
            let id = batch.lease.map_or(0, |(id, _)| id);
            if with_lease {
                inv.key(keys.lease(id)).key(keys.lease_index());
            }
            inv.arg(format!("{id:032x}")).arg(self.lease_ttl(batch, now));
        }
        let raw: Vec<i64> = self.inner.conn.script(&inv).await.map_err(unavailable)?;
        let want = 2 + 3 * g.buckets.len() + g.slots.len();
        if raw.len() != want {
            return Err(StoreError::Protocol(format!(
                "decide script answered {} values, expected {want}",
                raw.len()
            )));
        }
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Reply {
            committed: raw[0] == 1,
            buckets: (0..g.buckets.len())
                .map(|k| (u(raw[1 + 3 * k]), u(raw[2 + 3 * k]), u(raw[3 + 3 * k])))
                .collect(),
            held: raw[1 + 3 * g.buckets.len()..want - 1]
                .iter()
                .map(|&h| u32::try_from(h).unwrap_or(u32::MAX))
                .collect(),
            lease_exp_us: u(raw[want - 1]),
        })
    }

    async fn run_undo(&self, batch: &Batch, g: &Group, r: &Reply, now: Nanos) -> Result<(), StoreError> {
        let keys = &self.inner.keys;
        let mut inv = self.inner.undo.prepare_invoke();
        let (pinned, offset) = self.clock_args(now);
        inv.arg(pinned).arg(offset).arg(g.buckets.len());
        for (k, &i) in g.buckets.iter().enumerate() {
            let b = &batch.buckets[i];
            inv.key(keys.bucket(b.limit, &Keys::tag(&b.target)));
            let (before, after, _) = r.buckets[k];
            inv.arg(after.saturating_sub(before));
        }
        for &j in &g.slots {
            let s = &batch.slots[j];
            inv.key(keys.slot(s.limit, &Keys::tag(&s.target)));
        }
        inv.arg(format!("{:032x}", batch.lease.map_or(0, |(id, _)| id)));
        let _: i64 = self.inner.conn.script(&inv).await.map_err(unavailable)?;
        Ok(())
    }

    /// The decision against Redis: per group in order; if a group denies,
    /// the groups committed before it are undone (see the crate docs on
    /// Cluster semantics). Returns the outcome and the extra units granted.
    async fn remote(
        &self,
        batch: &Batch,
        now: Nanos,
        extras: &[u64],
    ) -> Result<(Outcome, SmallVec<[u64; 4]>), StoreError> {
        let groups = self.groups(batch);
        let lease_inline = !self.inner.opts.cluster;
        let mut replies: SmallVec<[Reply; 2]> = SmallVec::new();
        let mut denied = false;
        for g in &groups {
            let dry = batch.dry_run || denied;
            let r = self.run_decide(batch, g, now, dry, lease_inline, extras).await?;
            if !dry && !r.committed {
                denied = true;
            }
            replies.push(r);
        }
        let committed = !batch.dry_run && !denied;
        if denied {
            for (g, r) in groups.iter().zip(&replies) {
                if r.committed {
                    self.run_undo(batch, g, r, now).await?;
                }
            }
        }
        let mut per_bucket = vec![(0u64, 0u64, 0u64); batch.buckets.len()];
        let mut held = vec![0u32; batch.slots.len()];
        let mut taken: Vec<String> = Vec::new();
        for (g, r) in groups.iter().zip(&replies) {
            for (k, &i) in g.buckets.iter().enumerate() {
                per_bucket[i] = r.buckets[k];
            }
            for (k, &j) in g.slots.iter().enumerate() {
                held[j] = r.held[k];
            }
        }
        let buckets: SmallVec<[BucketResult; 4]> = batch
            .buckets
            .iter()
            .zip(&per_bucket)
            .map(|(b, &(before, after, _))| {
                let r = BucketResult::judge(b.gcra, REF + before, REF, b.cost);
                if committed && r.allowed {
                    BucketResult {
                        allowed: true,
                        retry_after: None,
                        snapshot: b.gcra.snapshot(REF + after, REF),
                    }
                } else {
                    r
                }
            })
            .collect();
        let slots: SmallVec<[SlotResult; 2]> = batch
            .slots
            .iter()
            .zip(&held)
            .map(|(s, &h)| {
                let allowed = h < s.max;
                if committed && allowed {
                    taken.push(self.inner.keys.slot(s.limit, &Keys::tag(&s.target)));
                }
                SlotResult {
                    allowed,
                    held: if committed && allowed { h + 1 } else { h },
                }
            })
            .collect();
        if committed && !lease_inline {
            if let Some((id, _)) = batch.lease {
                let margin = match self.inner.opts.time {
                    TimeSource::Server => 0,
                    TimeSource::Caller => 3_600_000,
                };
                let ttl_ms = self.lease_ttl(batch, now) / 1_000_000 + 1 + margin;
                let exp_us = replies.iter().map(|r| r.lease_exp_us).max().unwrap_or(0);
                let mut record = exp_us.to_string();
                for k in &taken {
                    record.push('\n');
                    record.push_str(k);
                }
                let mut cmd = redis::cmd("SET");
                cmd.arg(self.inner.keys.lease(id))
                    .arg(record)
                    .arg("PX")
                    .arg(ttl_ms);
                // The record and the index live in other slots: two
                // commands, sent together.
                let mut zadd = redis::cmd("ZADD");
                zadd.arg(self.inner.keys.lease_index())
                    .arg(exp_us)
                    .arg(format!("{id:032x}"));
                let (set, added) =
                    tokio::join!(self.inner.conn.cmd::<()>(&cmd), self.inner.conn.cmd::<i64>(&zadd));
                set.map_err(unavailable)?;
                added.map_err(unavailable)?;
            }
        }
        let granted = if committed {
            per_bucket.iter().map(|p| p.2).collect()
        } else {
            SmallVec::new()
        };
        Ok((
            Outcome {
                buckets,
                slots,
                committed,
            },
            granted,
        ))
    }

    /// Releases a lease: reads and deletes its record, then removes it
    /// from every slot it holds. `false` if unknown or expired.
    pub async fn release_async(&self, lease: LeaseId, now: Nanos) -> Result<bool, StoreError> {
        let fut = async {
            let member = format!("{lease:032x}");
            let mut inv = self.inner.release.prepare_invoke();
            let (pinned, offset) = self.clock_args(now);
            inv.key(self.inner.keys.lease(lease));
            if self.inner.opts.cluster {
                // The index lives in another slot.
                let mut zrem = redis::cmd("ZREM");
                zrem.arg(self.inner.keys.lease_index()).arg(&member);
                let _: i64 = self.inner.conn.cmd(&zrem).await.map_err(unavailable)?;
            } else {
                inv.key(self.inner.keys.lease_index());
            }
            inv.arg(pinned).arg(offset).arg(&member);
            let (live, keys): (i64, String) = self.inner.conn.script(&inv).await.map_err(unavailable)?;
            for key in keys.split('\n').filter(|k| !k.is_empty()) {
                let mut zrem = redis::cmd("ZREM");
                zrem.arg(key).arg(&member);
                let _: i64 = self.inner.conn.cmd(&zrem).await.map_err(unavailable)?;
            }
            Ok(live == 1)
        };
        let t = self.inner.opts.command_timeout;
        match tokio::time::timeout(t, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.failed(e)),
            Err(_) => Err(self.failed(StoreError::Unavailable(format!("no answer within {t:?}")))),
        }
    }

    /// Runs a future on the store's runtime and waits for it (the sync
    /// [`Store`] methods: guards, inspect, embedders without async). Hot
    /// paths should call the async methods instead.
    ///
    /// Called from a worker of a multi-threaded runtime (the gateways'
    /// connection decisions and guard releases), the wait goes through
    /// `block_in_place`: otherwise the task spawned here lands in this
    /// worker's LIFO slot, which no other worker steals from, and could
    /// only run once the wait had timed out — every such call failed after
    /// the timeout, and the script then ran anyway (a lease nobody held).
    /// A current-thread runtime cannot hand its thread over; the store's
    /// runtime is then another one (the HTTP gateway's workers) and the
    /// thread simply waits.
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        let wait = self.inner.opts.command_timeout.saturating_mul(2) + Duration::from_millis(50);
        let recv = || {
            rx.recv_timeout(wait)
                .unwrap_or_else(|_| Err(StoreError::Unavailable(format!("no answer within {wait:?}"))))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(recv)
            }
            _ => recv(),
        }
    }
}

/// One release sent without waiting, counted until dropped
/// ([`RedisStore::settle`]).
struct Detached(RedisStore);

impl Drop for Detached {
    fn drop(&mut self) {
        if self.0.inner.detached.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.inner.settled.notify_waiters();
        }
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Protocol(e.to_string())
    }
}

/// The sync face, for the engine's own calls (`inspect`, `release`, guards,
/// metrics) and embedders without async. Decisions on a hot path should
/// use [`RedisStore::decide_async`] with [`sluice_core::Engine::plan`] and
/// [`sluice_core::Engine::finish`].
impl Store for RedisStore {
    fn decide(&self, batch: &Batch, now: Nanos) -> Result<Outcome, StoreError> {
        let this = self.clone();
        let batch = batch.clone();
        self.block(async move { this.decide_async(&batch, now).await })
    }

    fn release(&self, lease: LeaseId, now: Nanos) -> Result<bool, StoreError> {
        let this = self.clone();
        self.block(async move { this.release_async(lease, now).await })
    }

    /// Sent on the store's runtime; nobody waits. A release that fails
    /// is counted and logged like any other store error.
    fn release_detached(&self, lease: LeaseId, now: Nanos) {
        let this = self.clone();
        // Counted until answered: shutdown waits for them
        // ([`RedisStore::settle`]).
        self.inner.detached.fetch_add(1, Ordering::AcqRel);
        self.inner.handle.spawn(async move {
            // Counted down however the task ends (answered, failed,
            // cancelled with the runtime).
            let _out = Detached(this.clone());
            let _ = this.release_async(lease, now).await;
        });
    }

    fn peek(&self, bucket: &Bucket, now: Nanos) -> Result<Nanos, StoreError> {
        let this = self.clone();
        let batch = Batch {
            buckets: smallvec::smallvec![bucket.clone()],
            dry_run: true,
            ..Batch::default()
        };
        let out = self.block(async move { this.remote(&batch, now, &[]).await })?;
        // The bucket's TAT in the caller's clock: its distance from now.
        Ok(out.0.buckets.first().map_or(0, |r| match r.snapshot.reset {
            0 => 0,
            d => now.saturating_add(d),
        }))
    }

    fn held(&self, slot: &Slot, now: Nanos) -> Result<u32, StoreError> {
        let this = self.clone();
        let batch = Batch {
            slots: smallvec::smallvec![slot.clone()],
            dry_run: true,
            ..Batch::default()
        };
        let out = self.block(async move { this.remote(&batch, now, &[]).await })?;
        Ok(out.0.slots.first().map_or(0, |s| s.held))
    }

    fn tracked_keys(&self, _now: Nanos) -> u64 {
        self.inner.db_keys.load(Ordering::Relaxed)
    }

    /// The count [`RedisStore::count_leases`] last saw (every instance's
    /// leases; refreshed every second by [`RedisStore::sync_bans`]).
    fn active_leases(&self, _now: Nanos) -> u64 {
        self.inner.active_leases.load(Ordering::Relaxed)
    }
}

#[cfg(all(test, not(feature = "tls")))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tls_url_without_the_feature_is_a_clear_error() {
        for url in ["rediss://127.0.0.1:6380", "valkeys://h:1"] {
            for cluster in [false, true] {
                let mut o = Options::new(url);
                o.cluster = cluster;
                let e = RedisStore::open(o).expect_err("TLS without the feature");
                assert!(e.to_string().contains("--features sluice-redis/tls"), "{e}");
            }
        }
    }
}

/// A script with the shared clock prelude (`lua/clock.lua`: Redis `TIME` or
/// the pinned test clock, and exact nanosecond arithmetic) in front of it,
/// so every script reads time the same way from one piece of code.
fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("lua/clock.lua")))
}
