//! Blocklist sources in the service: bodies read from `path`, or for `url`
//! sources from the last accepted body kept under `state_dir/blocklists/`
//! (written atomically, loaded first at start-up, so a restart blocks from
//! the cache with the publisher down), compiled per source and swapped into
//! the engine as one set. A reload keeps the compiled set of every source
//! whose settings did not change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sluice_config::{BlocklistConfig, BlocklistSource, SourceLocation};
use sluice_core::blocklist::parse::{self, Parsed};
use sluice_core::blocklist::{Blocklists, Except, ListStats, Source, SourceBuilder};

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
}

/// The sources of the service.
#[derive(Debug)]
pub struct Lists {
    dir: Option<PathBuf>,
    state: Mutex<HashMap<String, SourceStatus>>,
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
        }
    }

    /// Where a URL source's last accepted body is kept.
    pub fn cache_path(&self, name: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{name}.list")))
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
        let mut sources = Vec::new();
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
                        st.last_success = Some(SystemTime::now());
                        st.last_error = None;
                        st.parsed = Some(parsed);
                    }
                    Err(e) => {
                        tracing::warn!(source = %c.name, "blocklist not loaded, the last good set stays: {e}");
                        st.last_error = Some(e.to_string());
                    }
                }
            }
            if let Some(s) = &st.set {
                sources.push(s.clone());
            }
            next.insert(c.name.clone(), st);
        }
        *state = next;
        let mut except = Except::default();
        for t in &cfg.except {
            except.add(t.clone());
        }
        Arc::new(Blocklists::new(sources, except))
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
