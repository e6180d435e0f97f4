//! The application state shared by every handler: engine, config, metrics,
//! activity, privacy and persistence.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use sluice_config::Config;
use sluice_core::{Ban, Clock, Decision, Engine, EngineError, MemoryStore, Nanos, Side, Target};
use tokio::sync::Notify;

use crate::metrics::{Gauges, Metrics};
use crate::persist::{BanFile, PersistError};
use crate::privacy::Privacy;
use crate::top::TopTracker;

/// Why the service could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid (reload refused; old one kept).
    #[error(transparent)]
    Config(#[from] sluice_config::ConfigError),
    /// The admin token file could not be read or is empty.
    #[error("admin token file {path}: {reason}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A store kind this build cannot serve.
    #[error("store kind {0:?} is not available in this build")]
    Store(String),
    /// Binding or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The ban file could not be written.
    #[error(transparent)]
    Persist(#[from] PersistError),
}

pub(crate) struct Inner {
    pub engine: Engine,
    pub memory: Option<Arc<MemoryStore>>,
    pub backend: crate::backend::Backend,
    pub config: ArcSwap<Config>,
    pub metrics: Metrics,
    pub top: TopTracker,
    pub privacy: ArcSwap<Privacy>,
    pub bans_file: Option<BanFile>,
    pub persist: Notify,
    /// Held while a reload applies (see [`App::reload`]).
    pub reload_lock: std::sync::Mutex<()>,
    /// Extra metric families (gateways), appended to `/metrics`.
    pub extra_metrics: std::sync::Mutex<Vec<MetricsSource>>,
    /// Flips to `true` when the service starts shutting down.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// Tasks that must finish before the process exits (gateway listeners
    /// draining their connections).
    pub tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Serialises writers of the ban file (the background saver and the
    /// final flush at shutdown).
    pub save_lock: std::sync::Mutex<()>,
    pub admin_token: ArcSwap<Option<String>>,
    /// The blocklist sources and their state.
    pub lists: crate::lists::Lists,
    /// Notified when a reload may have changed the sources (the fetchers
    /// restart those that changed).
    pub lists_changed: Notify,
}

/// Writes extra Prometheus families (a gateway's counters) at scrape time.
pub type MetricsSource = Arc<dyn Fn(&mut String) + Send + Sync>;

/// The decision service's state. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

fn read_token(path: &Option<PathBuf>) -> Result<Option<String>, ServerError> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|e| ServerError::Token {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let token = text.trim().to_owned();
    if token.len() < 16 {
        return Err(ServerError::Token {
            path: path.clone(),
            reason: "token must be at least 16 characters".into(),
        });
    }
    Ok(Some(token))
}

/// Where bans persist when `server.state_dir` is not set: systemd's
/// `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/sluice`, else
/// `~/.local/state/sluice`.
pub fn default_state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return Some(PathBuf::from(d).join("sluice"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/sluice"))
}

impl App {
    /// Builds the service from a config with the production clock.
    ///
    /// The precise clock (a vDSO `clock_gettime`, ~20 ns per decision), not
    /// the coarse one: a service decision costs microseconds of I/O around
    /// it, while the coarse clock's refresher thread wakes 1000 times a
    /// second whether or not anything happens (~1.5% of a core, and twice
    /// the voluntary context switches per proxied request in the HTTP
    /// gateway benchmark). Embedders deciding millions of times a second
    /// keep [`sluice_core::CoarseClock`].
    pub fn new(config: Config) -> Result<Self, ServerError> {
        Self::with_clock(config, Arc::new(sluice_core::MonotonicClock::new()))
    }

    /// Builds the service with an injected clock (tests use a fake one).
    pub fn with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<Self, ServerError> {
        // (Its policy was checked against its store when it was compiled.)
        let backend = crate::backend::Backend::open(&config)?;
        let engine = Engine::new(config.policy.clone(), backend.store(), clock);
        let state_dir = config.server.state_dir.clone().or_else(default_state_dir);
        let bans_file = state_dir.as_deref().map(BanFile::in_dir);
        let admin_token = read_token(&config.server.admin_token_file)?;
        let lists = crate::lists::Lists::new(state_dir.as_deref());
        engine.set_blocklists(lists.load(&config.blocklist, None));
        let app = App {
            inner: Arc::new(Inner {
                metrics: Metrics::new(&config.policy),
                top: TopTracker::new(Duration::from_secs(60)),
                privacy: ArcSwap::from_pointee(Privacy::new(config.privacy.log_ips)),
                engine,
                memory: backend.memory(),
                backend,
                config: ArcSwap::from_pointee(config),
                bans_file,
                persist: Notify::new(),
                reload_lock: std::sync::Mutex::new(()),
                save_lock: std::sync::Mutex::new(()),
                extra_metrics: std::sync::Mutex::new(Vec::new()),
                shutdown: tokio::sync::watch::channel(false).0,
                tasks: std::sync::Mutex::new(Vec::new()),
                admin_token: ArcSwap::from_pointee(admin_token),
                lists,
                lists_changed: Notify::new(),
            }),
        };
        app.restore_bans();
        // After the restore, so the first merge publishes restored bans. A
        // merge that changed the local bans saves the file (a ban lifted
        // elsewhere must not come back from it at the next start); weak, so
        // the merging task does not keep the service alive.
        let weak = Arc::downgrade(&app.inner);
        app.inner.backend.start(&app.inner.engine, move || {
            if let Some(inner) = weak.upgrade() {
                inner.persist.notify_one();
            }
        });
        Ok(app)
    }

    fn restore_bans(&self) {
        let Some(file) = &self.inner.bans_file else {
            tracing::warn!("no state directory: bans will not survive a restart (set server.state_dir)");
            return;
        };
        match file.load(self.now()) {
            Ok(bans) => {
                let n = bans.len();
                for mut b in bans {
                    // Saved under another grouping prefix: regrouped, or a
                    // ban narrower than today's groups would never match.
                    b.target = self
                        .inner
                        .engine
                        .with_policy(|p| p.normalizer().normalize_ban(b.target.clone()));
                    self.inner.engine.bans().insert(b);
                }
                if n > 0 {
                    tracing::info!(bans = n, file = %file.path().display(), "bans restored");
                }
            }
            Err(e) => tracing::error!("{e}"),
        }
    }

    /// The blocklist sources and their state.
    pub fn lists(&self) -> &crate::lists::Lists {
        &self.inner.lists
    }

    /// Re-reads the sources (`name`, or all), keeping the last good set of
    /// any that fails, and swaps the result in.
    pub fn refresh_lists(&self, name: Option<&str>) {
        let cfg = self.config();
        let set = self.inner.lists.load(&cfg.blocklist, Some(name));
        self.inner.engine.set_blocklists(set);
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.inner.config.load_full()
    }

    /// Runs `f` with the current config without taking a reference on it:
    /// on a hot path the `Arc` count [`App::config`] increments is shared
    /// by every thread and bounces between cores.
    pub fn with_config<R>(&self, f: impl FnOnce(&Config) -> R) -> R {
        f(&self.inner.config.load())
    }

    /// The engine's time.
    pub fn now(&self) -> Nanos {
        self.inner.engine.now()
    }

    /// How targets are shown in logs (addresses hashed unless configured).
    pub fn privacy(&self) -> Arc<Privacy> {
        self.inner.privacy.load_full()
    }

    /// Re-reads the config file and applies its policy; counters and bans
    /// are kept. An invalid file is refused and the old config stays.
    pub fn reload(&self) -> Result<(), ServerError> {
        // One reload at a time (SIGHUP and the admin API may race): the
        // engine, token, privacy and config all come from one file.
        let _one = self.inner.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.config();
        let Some(path) = old.source.clone() else {
            tracing::info!("reload: no config file, the built-in preset stays");
            return Ok(());
        };
        let mut new = match sluice_config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload refused, keeping the running config: {e}");
                return Err(e.into());
            }
        };
        let token = match read_token(&new.server.admin_token_file) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("reload refused, keeping the running config: {e}");
                return Err(e);
            }
        };
        if let Err(e) = self.inner.backend.check_policy(&new.policy) {
            tracing::error!("reload refused, keeping the running config: {e}");
            return Err(e);
        }
        // What was set up at start stays as it was until a restart, so the
        // running config says what is really in force (the gateways read
        // `store.on_error` from it; the store keeps the mode it opened with).
        if new.store != old.store {
            tracing::warn!("reload: [store] takes effect on restart only; the running store settings stay");
            new.store = old.store.clone();
        }
        if new.gateway != old.gateway {
            tracing::warn!(
                "reload: [[gateway.*]] listeners take effect on restart only; the running ones stay"
            );
            new.gateway = old.gateway.clone();
        }
        if new.server.listen != old.server.listen || new.server.state_dir != old.server.state_dir {
            tracing::warn!("reload: server.listen and server.state_dir take effect on restart only");
            new.server.listen = old.server.listen;
            new.server.state_dir.clone_from(&old.server.state_dir);
        }
        self.inner.engine.reload(new.policy.clone());
        self.inner
            .engine
            .set_blocklists(self.inner.lists.load(&new.blocklist, None));
        let lists_changed = new.blocklist != old.blocklist;
        self.inner.metrics.update(&new.policy);
        self.inner
            .privacy
            .store(Arc::new(self.privacy().with_log_ips(new.privacy.log_ips)));
        self.inner.admin_token.store(Arc::new(token));
        self.inner.config.store(Arc::new(new));
        if lists_changed {
            self.inner.lists_changed.notify_one();
        }
        tracing::warn!(file = %path.display(), "configuration reloaded");
        Ok(())
    }

    /// One decision on whichever store, for callers on an event loop:
    /// with Redis the round trip is awaited, so the thread serves other
    /// connections meanwhile (the engine's own [`Engine::decide`] would
    /// wait on the thread), and a failing Redis answers `store.on_error`
    /// (allowed, or denied for a second as `store.unavailable`; never an
    /// automatic ban), counted in `sluice_store_errors_total`. The Redis
    /// call runs on the store's runtime, whatever runtime awaits it. With
    /// memory it is the engine's call, nothing awaited.
    pub async fn decide_async(
        &self,
        req: &sluice_core::Request<'_>,
        mode: sluice_core::Mode,
    ) -> Result<Decision, EngineError> {
        match &self.inner.backend {
            // Boxed: a plan is large, and the memory path (every decision
            // of a memory store) should not carry its space.
            crate::backend::Backend::Redis(_) => {
                Box::pin(crate::backend::decide(self, req, mode, true)).await
            }
            crate::backend::Backend::Memory(_) => self.engine().decide(req, mode),
        }
    }

    /// [`Engine::acquire_guard`] for callers on an event loop (see
    /// [`App::decide_async`]). The guard's release when dropped is sent
    /// without waiting either ([`sluice_core::Store::release_detached`]).
    pub async fn acquire_guard_async(
        &self,
        req: &sluice_core::Request<'_>,
    ) -> Result<Result<sluice_core::Guard, Decision>, EngineError> {
        // What `Engine::acquire_guard` does, the decision awaited.
        let d = self
            .decide_async(req, sluice_core::Mode::Acquire { ttl: None })
            .await?;
        Ok(self.engine().guard(d))
    }

    /// Whether a gateway refuses a connection whose decision failed with
    /// `e`: as the store's `on_error` says, except that a full lease table
    /// always refuses — it is not an outage to ride through, and admitting
    /// would skip every connection limit, caps and rates alike.
    pub fn refuse_on_error(&self, e: &EngineError) -> bool {
        let full = matches!(e, EngineError::Store(sluice_core::StoreError::LeasesFull(_)));
        full || self.config().store.on_error == sluice_config::OnError::Deny
    }

    /// Records a decision in metrics, activity and logs. Gateways call it
    /// for their own decisions so `/metrics`, `top` and the logs see them.
    pub fn observe(&self, side: Side, action: &str, targets: &[Target], d: &Decision) {
        self.inner.metrics.record(side, action, d);
        let now = self.now();
        for t in targets {
            self.inner.top.record(t, !d.allowed, now);
        }
        if !d.allowed && tracing::enabled!(tracing::Level::INFO) {
            let privacy = self.privacy();
            let shown: Vec<String> = targets.iter().map(|t| privacy.show(t)).collect();
            let fired: Vec<&str> = d.fired().map(|l| l.name).collect();
            match &d.reason {
                sluice_core::Reason::Blocked(b) if b.list.is_some() => {
                    let hit = b.list.as_ref().expect("matched just above");
                    tracing::info!(
                        side = %side, action, targets = ?shown, reason = "blocked",
                        source = %hit.source, entry = %shown_entry(&privacy, hit),
                        list_reason = hit.reason.as_deref().unwrap_or(""),
                        "denied: listed"
                    );
                }
                _ => {
                    tracing::info!(side = %side, action, targets = ?shown, limits = ?fired, reason = ?reason_str(d), "denied")
                }
            }
        }
        if let Some(ban) = &d.banned {
            self.inner
                .metrics
                .autobans
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(target = %self.privacy().show(&ban.target), reason = %ban.reason, "automatic ban");
            self.bans_changed();
        }
    }

    /// Schedules writing the ban list (coalesced; see [`App::flush_bans`]).
    pub(crate) fn bans_changed(&self) {
        self.inner.persist.notify_one();
    }

    /// Writes the ban list now.
    pub fn flush_bans(&self) -> Result<(), ServerError> {
        if let Some(file) = &self.inner.bans_file {
            let _guard = self.inner.save_lock.lock().unwrap_or_else(|p| p.into_inner());
            let bans: Vec<Ban> = self.inner.engine.bans().list(self.now());
            file.save(&bans)?;
        }
        Ok(())
    }

    /// Runs until dropped: writes the ban list whenever it changes.
    pub(crate) async fn persist_loop(self) {
        loop {
            self.inner.persist.notified().await;
            let app = self.clone();
            // File I/O and fsync stay off the async workers.
            match tokio::task::spawn_blocking(move || app.flush_bans()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("saving bans: {e}"),
                Err(e) => tracing::error!("saving bans: {e}"),
            }
        }
    }

    /// Adds a metrics source, rendered after the service's own families.
    pub fn add_metrics(&self, source: MetricsSource) {
        self.inner
            .extra_metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(source);
    }

    /// A receiver that turns `true` when the service begins to shut down:
    /// gateways stop accepting and drain when it does.
    pub fn shutdown_watch(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Runs `task` alongside the service; [`crate::serve`] waits for it to
    /// finish after signalling shutdown, before writing the ban list.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task);
        self.inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    pub(crate) fn render_extra_metrics(&self, out: &mut String) {
        let sources = self
            .inner
            .extra_metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for s in sources {
            s(out);
        }
    }

    /// Gauges for `/metrics`.
    pub(crate) fn gauges(&self) -> Gauges {
        let now = self.now();
        let store = self.inner.engine.store();
        let (evictions, capacity) = self
            .inner
            .memory
            .as_ref()
            .map(|m| {
                let s = m.stats();
                (s.evictions, s.capacity)
            })
            .unwrap_or_default();
        Gauges {
            tracked_keys: store.tracked_keys(now),
            active_leases: store.active_leases(now),
            bans: self.inner.engine.bans().list(now).len() as u64,
            evictions,
            capacity,
        }
    }

    /// Resolves a hashed address label through recent activity and bans.
    pub(crate) fn resolve_label(&self, label: &str) -> Option<Target> {
        let privacy = self.privacy();
        if let Some(t) = self.inner.top.find(|t| privacy.matches(label, t)) {
            return Some(t);
        }
        self.inner
            .engine
            .bans()
            .list(self.now())
            .into_iter()
            .map(|b| b.target)
            .find(|t| privacy.matches(label, t))
    }
}

/// A list entry as logs show it: an entry naming one address (a /32 or
/// /128) is the client's own address, so it goes through [`Privacy`] like
/// the target; networks, names and digests are the publisher's, shown as
/// they are.
pub(crate) fn shown_entry(privacy: &Privacy, hit: &sluice_core::blocklist::ListHit) -> String {
    if let Ok(net) = hit.entry.parse::<ipnet::IpNet>() {
        if net.prefix_len() == net.max_prefix_len() {
            return privacy.show(&Target::Ip(net));
        }
    }
    hit.entry.clone()
}

pub(crate) fn reason_str(d: &Decision) -> &'static str {
    use sluice_core::Reason;
    match d.reason {
        Reason::Allowed => "allowed",
        Reason::Exempt(_) => "exempt",
        Reason::Banned(_) => "banned",
        Reason::Blocked(_) => "blocked",
        Reason::Limited(_) => "limited",
        Reason::TooLarge(_) => "too_large",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reload applies the policy but not what was set up at start: the
    /// running config keeps the store it opened (the gateways read
    /// `store.on_error` from it) and the listeners it bound.
    #[test]
    fn reload_keeps_restart_only_sections() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("sluice.toml");
        let state = dir.path().join("state");
        let write = |extra: &str| {
            std::fs::write(
                &path,
                format!("[server]\nstate_dir = {:?}\n{extra}", state.display().to_string()),
            )
            .expect("config written");
        };
        write("[store]\non_error = \"allow\"\n");
        let config = sluice_config::load(&path).expect("a valid config");
        let app = App::with_clock(config, Arc::new(sluice_core::FakeClock::new())).expect("an app");
        write(
            "[store]\non_error = \"deny\"\n\n[limits.client.global]\nregistration = \"2/1d\"\n\n[[gateway.tcp]]\nlisten = \"127.0.0.1:15222\"\nupstream = \"127.0.0.1:5222\"\nside = \"client\"\n",
        );
        app.reload().expect("the new file is valid");
        let c = app.config();
        assert_eq!(
            c.store.on_error,
            sluice_config::OnError::Allow,
            "store settings changed by a reload"
        );
        assert!(
            c.gateway.tcp.is_empty(),
            "a listener appeared in the running config"
        );
        let rate = |app: &App| {
            app.engine().with_policy(|p| {
                p.limits()
                    .iter()
                    .find(|l| l.name == "client.global.registration")
                    .map(|l| format!("{:?}", l.kind))
            })
        };
        assert_eq!(
            rate(&app).as_deref(),
            Some("Rate(Rate(2/1d))"),
            "the new policy was not applied"
        );
    }
}
