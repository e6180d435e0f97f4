//! Blocklist sources in the service: bodies read from `path`, or for `url`
//! sources from the last accepted body kept under `state_dir/blocklists/`
//! (written atomically, loaded first at start-up, so a restart blocks from
//! the cache with the publisher down), compiled per source and swapped into
//! the engine as one set. A reload keeps the compiled set of every source
//! whose settings did not change.
//!
//! Fetched bodies come in through [`Lists::accept`] (see `refresh` for the
//! loop that fetches them): judged against the set in force, written to the
//! cache with their validators (`<name>.meta`), then swapped in.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sluice_config::{BlocklistConfig, BlocklistSource, SourceLocation};
use sluice_core::blocklist::parse::{self, Parsed};
use sluice_core::blocklist::{Blocklists, Except, ListStats, Source, SourceBuilder};

use crate::fetch::Validators;

/// Why a body was not taken (the last good set stays).
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The file or cache could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No body yet: a URL source not fetched since the cache was empty.
    #[error("no accepted body yet (nothing cached under the state directory)")]
    NoBody,
    /// Larger than `max_bytes`.
    #[error("body of {0} bytes is over max_bytes")]
    TooLarge(u64),
    /// Not a list.
    #[error(transparent)]
    Parse(#[from] parse::ParseError),
    /// No entry at all.
    #[error("the body holds no entry")]
    Empty,
    /// More than `max_entries`.
    #[error("{0} entries is over max_entries")]
    TooMany(usize),
    /// Shrank past `min_keep`.
    #[error("{new} entries would replace {old}: below min_keep, refused")]
    Shrunk {
        /// Entries in force.
        old: usize,
        /// Entries offered.
        new: usize,
    },
    /// The source was removed or changed by a reload while it was fetched.
    #[error("the source changed while it was fetched")]
    Changed,
}

impl ListError {
    /// The label of `sluice_blocklist_fetches_total{result=…}` for a
    /// refused body.
    pub fn kind(&self) -> &'static str {
        match self {
            ListError::Io { .. } => "io",
            ListError::NoBody => "no_body",
            ListError::TooLarge(_) | ListError::TooMany(_) => "too_large",
            ListError::Parse(parse::ParseError::Html) => "html",
            ListError::Parse(_) => "malformed",
            ListError::Empty => "empty",
            ListError::Shrunk { .. } => "shrunk",
            ListError::Changed => "changed",
        }
    }
}

/// One source's state, for `sluice blocklist status`.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    /// Settings.
    pub config: BlocklistSource,
    /// The compiled set in force, if any.
    pub set: Option<Arc<Source>>,
    /// Hit counters (kept across refreshes).
    pub stats: Arc<ListStats>,
    /// When a body was last accepted.
    pub last_success: Option<SystemTime>,
    /// The last refusal or failure.
    pub last_error: Option<String>,
    /// The last parse's counts.
    pub parsed: Option<Parsed>,
    /// The validators of the body in force (URL sources).
    pub validators: Option<Validators>,
    /// When the set in force was last confirmed current (accepted, or a
    /// 304), on tokio's clock: what staleness is measured from.
    pub fresh_at: Option<tokio::time::Instant>,
    /// A stale IP list with `drop_when_stale`, out of force until a
    /// refresh succeeds.
    pub dropped: bool,
    /// Fetch results by kind (`ok`, `not_modified`, `timeout`, `shrunk`…),
    /// kept across reloads.
    pub fetches: BTreeMap<&'static str, u64>,
}

impl SourceStatus {
    /// Whether no refresh succeeded for longer than `stale_after` (or none
    /// ever did).
    pub fn stale(&self) -> bool {
        self.fresh_at
            .is_none_or(|t| t.elapsed() > self.config.stale_after)
    }

    fn count(&mut self, kind: &'static str) {
        *self.fetches.entry(kind).or_default() += 1;
    }
}

/// The sources of the service.
#[derive(Debug)]
pub struct Lists {
    dir: Option<PathBuf>,
    state: Mutex<HashMap<String, SourceStatus>>,
    client: crate::fetch::Client,
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Writes `body` to `path` atomically (a temporary file renamed over it).
pub fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}

impl Lists {
    /// Sources cached under `state_dir/blocklists` (none without a state dir).
    pub fn new(state_dir: Option<&Path>) -> Self {
        Self {
            dir: state_dir.map(|d| d.join("blocklists")),
            state: Mutex::new(HashMap::new()),
            client: crate::fetch::Client::new(),
            fetching: Mutex::new(HashMap::new()),
        }
    }

    /// The HTTP client URL sources are fetched with.
    pub fn client(&self) -> &crate::fetch::Client {
        &self.client
    }

    /// Held while source `name` is fetched (one fetch of a source at a time).
    pub fn fetch_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.fetching.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(name.to_owned()).or_default().clone()
    }

    /// Where a URL source's last accepted body is kept.
    pub fn cache_path(&self, name: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{name}.list")))
    }

    fn meta_path(&self, name: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{name}.meta")))
    }

    /// The validators kept beside a cached body, if they are still `url`'s.
    fn cached_validators(&self, name: &str, url: &str) -> Option<Validators> {
        let text = std::fs::read(self.meta_path(name)?).ok()?;
        let v: Validators = serde_json::from_slice(&text).ok()?;
        (v.url == url).then_some(v)
    }

    /// When the cached body was written, on the system clock and on
    /// tokio's (a restart counts a cache's age from its write).
    fn cached_at(&self, name: &str) -> Option<(SystemTime, tokio::time::Instant)> {
        let written = std::fs::metadata(self.cache_path(name)?).ok()?.modified().ok()?;
        let age = SystemTime::now().duration_since(written).unwrap_or_default();
        let now = tokio::time::Instant::now();
        Some((written, now.checked_sub(age).unwrap_or(now)))
    }

    fn body(&self, c: &BlocklistSource) -> Result<Vec<u8>, ListError> {
        let path = match &c.location {
            SourceLocation::Path(p) => p.clone(),
            SourceLocation::Url(_) => self.cache_path(&c.name).ok_or(ListError::NoBody)?,
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && matches!(c.location, SourceLocation::Url(_)) =>
            {
                return Err(ListError::NoBody)
            }
            Err(source) => return Err(ListError::Io { path, source }),
        };
        if meta.len() > c.max_bytes {
            return Err(ListError::TooLarge(meta.len()));
        }
        std::fs::read(&path).map_err(|source| ListError::Io { path, source })
    }

    /// Compiles `body` for source `c`, checking it against the set in force.
    pub fn compile(
        c: &BlocklistSource,
        body: &[u8],
        stats: Arc<ListStats>,
        old: Option<&Source>,
    ) -> Result<(Source, Parsed), ListError> {
        if body.len() as u64 > c.max_bytes {
            return Err(ListError::TooLarge(body.len() as u64));
        }
        let mut b = SourceBuilder::new(&c.name, c.action)
            .side(c.side)
            .domain_match(c.domain_match)
            .reason(c.reason.as_deref())
            .stats(stats);
        let parsed = parse::parse(c.format, body, &c.recommendations, &mut b)?;
        let source = b.build();
        let n = source.len();
        if n == 0 {
            return Err(ListError::Empty);
        }
        if n as u64 > c.max_entries {
            return Err(ListError::TooMany(n));
        }
        if let Some(old) = old {
            if (n as f64) < old.len() as f64 * c.min_keep {
                return Err(ListError::Shrunk {
                    old: old.len(),
                    new: n,
                });
            }
        }
        Ok((source, parsed))
    }

    /// Loads every source of `cfg` — unchanged ones keep their set unless
    /// `force` names them (or is `Some(None)`: all) — and returns the set to
    /// swap into the engine.
    pub fn load(&self, cfg: &BlocklistConfig, force: Option<Option<&str>>) -> Arc<Blocklists> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        for c in &cfg.sources {
            let prev = state.remove(&c.name);
            let forced = match force {
                Some(None) => true,
                Some(Some(n)) => n == c.name,
                None => false,
            };
            let mut st = match prev {
                Some(p) if p.config == *c && p.set.is_some() && !forced => p,
                Some(p) => SourceStatus {
                    config: c.clone(),
                    // A changed source starts over: its old set was built
                    // with other settings.
                    set: if p.config == *c { p.set } else { None },
                    ..p
                },
                None => SourceStatus {
                    config: c.clone(),
                    set: None,
                    stats: Arc::default(),
                    last_success: None,
                    last_error: None,
                    parsed: None,
                    validators: None,
                    fresh_at: None,
                    dropped: false,
                    fetches: BTreeMap::new(),
                },
            };
            if st.set.is_none() || forced {
                let result = self
                    .body(c)
                    .and_then(|body| Self::compile(c, &body, st.stats.clone(), st.set.as_deref()));
                match result {
                    Ok((s, parsed)) => {
                        if parsed.bad > 0 {
                            tracing::warn!(source = %c.name, bad = parsed.bad, first = ?parsed.first_bad, "blocklist: lines skipped");
                        }
                        tracing::info!(source = %c.name, entries = s.len(), "blocklist loaded");
                        st.set = Some(Arc::new(s));
                        st.last_error = None;
                        st.parsed = Some(parsed);
                        st.dropped = false;
                        st.count("ok");
                        match &c.location {
                            // A cached body is as fresh as its fetch was.
                            SourceLocation::Url(url) => {
                                let at = self.cached_at(&c.name);
                                st.last_success = at.map(|a| a.0);
                                st.fresh_at = at.map(|a| a.1);
                                st.validators = self.cached_validators(&c.name, url);
                            }
                            SourceLocation::Path(_) => {
                                st.last_success = Some(SystemTime::now());
                                st.fresh_at = Some(tokio::time::Instant::now());
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(source = %c.name, "blocklist not loaded, the last good set stays: {e}");
                        st.count(e.kind());
                        st.last_error = Some(e.to_string());
                    }
                }
            }
            next.insert(c.name.clone(), st);
        }
        *state = next;
        drop(state);
        self.current(cfg)
    }

    /// The set to swap into the engine: every source's set in force (a
    /// dropped stale list aside), in config order, and `except`.
    pub fn current(&self, cfg: &BlocklistConfig) -> Arc<Blocklists> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let sources = cfg
            .sources
            .iter()
            .filter_map(|c| state.get(&c.name))
            .filter(|st| !st.dropped)
            .filter_map(|st| st.set.clone())
            .collect();
        let mut except = Except::default();
        for t in &cfg.except {
            except.add(t.clone());
        }
        Arc::new(Blocklists::new(sources, except))
    }

    /// The set in force for `c` and what the next GET sends back, if `c`
    /// is still the configured source.
    pub fn for_fetch(&self, c: &BlocklistSource) -> Option<(Option<Arc<Source>>, Option<Validators>)> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = state.get(&c.name).filter(|st| st.config == *c)?;
        // Without a set in force a 304 would leave us with nothing.
        let v = st.set.as_ref().and(st.validators.clone());
        Some((st.set.clone(), v))
    }

    /// Judges a fetched `body` for `c` against the set in force and, when
    /// taken, writes it (and its validators) to the cache and makes it
    /// the source's set: the caller swaps [`Lists::current`] in. Compiling
    /// runs without the lock (a large list takes a while).
    pub fn accept(
        &self,
        c: &BlocklistSource,
        body: &[u8],
        validators: Validators,
    ) -> Result<usize, ListError> {
        let (old, stats) = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let st = state
                .get(&c.name)
                .filter(|st| st.config == *c)
                .ok_or(ListError::Changed)?;
            (st.set.clone(), st.stats.clone())
        };
        let result = Self::compile(c, body, stats, old.as_deref());
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = state
            .get_mut(&c.name)
            .filter(|st| st.config == *c)
            .ok_or(ListError::Changed)?;
        let (source, parsed) = match result {
            Ok(ok) => ok,
            Err(e) => {
                st.count(e.kind());
                st.last_error = Some(e.to_string());
                return Err(e);
            }
        };
        if let Some(path) = self.cache_path(&c.name) {
            // The set is taken even if the cache cannot be written (it is
            // only a restart that would miss it): said, not refused.
            let written = write_atomic(&path, body).and_then(|()| {
                let meta = serde_json::to_vec(&validators).map_err(std::io::Error::other)?;
                match self.meta_path(&c.name) {
                    Some(m) => write_atomic(&m, &meta),
                    None => Ok(()),
                }
            });
            if let Err(e) = written {
                tracing::error!(source = %c.name, "blocklist: the accepted body could not be cached ({}): {e}", path.display());
            }
        }
        if parsed.bad > 0 {
            tracing::warn!(source = %c.name, bad = parsed.bad, first = ?parsed.first_bad, "blocklist: lines skipped");
        }
        let n = source.len();
        st.set = Some(Arc::new(source));
        st.parsed = Some(parsed);
        st.validators = Some(validators);
        st.last_success = Some(SystemTime::now());
        st.fresh_at = Some(tokio::time::Instant::now());
        st.last_error = None;
        st.dropped = false;
        st.count("ok");
        Ok(n)
    }

    /// A 304: the set in force is current. Returns whether a dropped
    /// stale set came back (the caller swaps).
    pub fn not_modified(&self, c: &BlocklistSource) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(st) = state.get_mut(&c.name).filter(|st| st.config == *c) else {
            return false;
        };
        st.last_success = Some(SystemTime::now());
        st.fresh_at = Some(tokio::time::Instant::now());
        st.last_error = None;
        st.count("not_modified");
        std::mem::take(&mut st.dropped)
    }

    /// A fetch that brought nothing: counted, the last good set stays.
    pub fn failed(&self, c: &BlocklistSource, kind: &'static str, error: String) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(st) = state.get_mut(&c.name).filter(|st| st.config == *c) {
            st.count(kind);
            st.last_error = Some(error);
        }
    }

    /// Takes stale IP lists with `drop_when_stale` out of force; returns
    /// the names newly dropped (the caller swaps when any).
    pub fn drop_stale(&self) -> Vec<String> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for st in state.values_mut() {
            if st.config.drop_when_stale && !st.dropped && st.set.is_some() && st.stale() {
                st.dropped = true;
                out.push(st.config.name.clone());
            }
        }
        out
    }

    /// The per-source Prometheus families: entries, last success, fetch
    /// results by kind, matches by action, stale.
    pub fn render_metrics(&self, cfg: &BlocklistConfig, out: &mut String) {
        use std::fmt::Write as _;
        let all = self.status(cfg);
        if all.is_empty() {
            return;
        }
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            out,
            "sluice_blocklist_entries",
            "gauge",
            "Entries of each source's set in force (0 when none, or dropped as stale).",
        );
        for s in &all {
            let n = if s.dropped {
                0
            } else {
                s.set.as_ref().map_or(0, |x| x.len())
            };
            let _ = writeln!(
                out,
                "sluice_blocklist_entries{{source=\"{}\"}} {n}",
                s.config.name
            );
        }
        family(
            out,
            "sluice_blocklist_last_success_timestamp_seconds",
            "gauge",
            "When each source was last refreshed (a body taken, or a 304), Unix time; 0 never.",
        );
        for s in &all {
            let t = s
                .last_success
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let _ = writeln!(
                out,
                "sluice_blocklist_last_success_timestamp_seconds{{source=\"{}\"}} {t}",
                s.config.name
            );
        }
        family(
            out,
            "sluice_blocklist_stale",
            "gauge",
            "1 when a source was not refreshed within its stale_after.",
        );
        for s in &all {
            let _ = writeln!(
                out,
                "sluice_blocklist_stale{{source=\"{}\"}} {}",
                s.config.name,
                u8::from(s.stale())
            );
        }
        family(
            out,
            "sluice_blocklist_fetches_total",
            "counter",
            "Refresh results by kind: ok, not_modified, or why nothing was taken.",
        );
        for s in &all {
            for (kind, n) in &s.fetches {
                let _ = writeln!(
                    out,
                    "sluice_blocklist_fetches_total{{source=\"{}\",result=\"{kind}\"}} {n}",
                    s.config.name
                );
            }
        }
        family(
            out,
            "sluice_blocklist_matches_total",
            "counter",
            "Decisions a source's hit decided, by the source's action.",
        );
        for s in &all {
            for (action, n) in [("deny", s.stats.denied()), ("shadow", s.stats.shadowed())] {
                let _ = writeln!(
                    out,
                    "sluice_blocklist_matches_total{{source=\"{}\",action=\"{action}\"}} {n}",
                    s.config.name
                );
            }
        }
    }

    /// One source's state.
    pub fn get(&self, name: &str) -> Option<SourceStatus> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.get(name).cloned()
    }

    /// Every source's state, in config order.
    pub fn status(&self, cfg: &BlocklistConfig) -> Vec<SourceStatus> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        cfg.sources
            .iter()
            .filter_map(|c| state.get(&c.name).cloned())
            .collect()
    }
}
