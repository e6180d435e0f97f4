//! Bans on disk: `STATE_DIR/bans.json`, written atomically.
//!
//! Written to a temporary file in the same directory, synced, then renamed
//! over the old one, so a crash leaves either the old or the new list, never
//! half of one. A file that does not parse is reported, moved aside as
//! `bans.json.corrupt`, and not trusted: the service starts with no bans
//! rather than with a guess.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_core::{Ban, BanSource, Nanos, Target};

const MS: u64 = 1_000_000;

/// Why the ban file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a ban list; it was moved aside.
    #[error("{path}: corrupt ban list ({reason}); moved to {moved_to}, starting without it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where it went.
        moved_to: PathBuf,
        /// The parse error.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    bans: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    target: String,
    reason: String,
    created_ms: u64,
    expires_ms: Option<u64>,
    source: String,
}

/// The ban file of a state directory.
#[derive(Debug, Clone)]
pub struct BanFile {
    path: PathBuf,
}

impl BanFile {
    /// `dir/bans.json`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            path: dir.join("bans.json"),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the bans still in force at `now`. A missing file is no bans.
    pub fn load(&self, now: Nanos) -> Result<Vec<Ban>, PersistError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(PersistError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        match parse(&text) {
            Ok(bans) => Ok(bans.into_iter().filter(|b| b.active(now)).collect()),
            Err(reason) => {
                let moved_to = self.path.with_extension("json.corrupt");
                let _ = std::fs::rename(&self.path, &moved_to);
                Err(PersistError::Corrupt {
                    path: self.path.clone(),
                    moved_to,
                    reason,
                })
            }
        }
    }

    /// Replaces the file with `bans`, atomically.
    pub fn save(&self, bans: &[Ban]) -> Result<(), PersistError> {
        let io = |source| PersistError::Io {
            path: self.path.clone(),
            source,
        };
        let file = File {
            version: 1,
            bans: bans
                .iter()
                .map(|b| Entry {
                    target: b.target.to_string(),
                    reason: b.reason.to_string(),
                    created_ms: b.created / MS,
                    expires_ms: b.expires.map(|e| e.div_ceil(MS)),
                    source: b.source.as_str().to_owned(),
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| io(std::io::Error::other(e)))?;
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&json).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        Ok(())
    }
}

fn parse(text: &str) -> Result<Vec<Ban>, String> {
    let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if file.version != 1 {
        return Err(format!("unsupported version {}", file.version));
    }
    file.bans
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            // The entry's position, not its value: this error is logged, and
            // a target may be a client's address.
            let target: Target = e
                .target
                .parse()
                .map_err(|_| format!("ban {} of the file: not a valid target", i + 1))?;
            let source = match e.source.as_str() {
                "manual" => BanSource::Manual,
                "auto" => BanSource::Auto,
                other => return Err(format!("unknown ban source {other:?}")),
            };
            Ok(Ban {
                target,
                reason: e.reason.into(),
                created: e.created_ms.saturating_mul(MS),
                expires: e.expires_ms.map(|x| x.saturating_mul(MS)),
                source,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = BanFile::in_dir(dir.path());
        assert!(f.load(0).unwrap().is_empty());
        let ban = Ban {
            target: "ip:203.0.113.0/24".parse().unwrap(),
            reason: "spam".into(),
            created: 5 * MS,
            expires: Some(10 * MS),
            source: BanSource::Manual,
        };
        f.save(std::slice::from_ref(&ban)).unwrap();
        assert_eq!(f.load(6 * MS).unwrap(), vec![ban]);
        assert!(f.load(10 * MS).unwrap().is_empty(), "expired bans not restored");
        std::fs::write(f.path(), "{not json").unwrap();
        assert!(matches!(f.load(0), Err(PersistError::Corrupt { .. })));
        assert!(dir.path().join("bans.json.corrupt").exists());
        assert!(f.load(0).unwrap().is_empty());
    }
}
