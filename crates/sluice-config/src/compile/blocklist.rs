//! `[[blocklist.source]]` and `[blocklist] except`: community lists as live
//! sources (the sets themselves are built by whoever loads the bodies; see
//! `sluice_core::blocklist`).

use std::path::PathBuf;
use std::time::Duration;

use sluice_core::blocklist::parse::ListFormat;
use sluice_core::blocklist::{DomainMatch, ListAction};
use sluice_core::{Normalizer, Side, Target};
use toml::Spanned;

use super::{span_of, Compiler, Result};
use crate::raw::{RawBlocklist, RawSource};

/// The shortest refresh of a URL source: publishers (Spamhaus among them)
/// ask for no more than one fetch an hour.
pub const MIN_URL_REFRESH: Duration = Duration::from_secs(3600);

/// Where a source's body comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceLocation {
    /// Fetched: `https://…`, or `http://` to a loopback address only.
    Url(String),
    /// Read from a file.
    Path(PathBuf),
}

/// One `[[blocklist.source]]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct BlocklistSource {
    /// Unique name (metrics, logs, `sluice blocklist …`).
    pub name: String,
    /// `url` or `path`.
    pub location: SourceLocation,
    /// The body's format.
    pub format: ListFormat,
    /// `match` (domain formats): `exact` (default) or `subdomains`.
    pub domain_match: DomainMatch,
    /// The side it applies to (`None`: both).
    pub side: Option<Side>,
    /// `deny` (default) or `shadow`.
    pub action: ListAction,
    /// How often the body is fetched again (URL: at least 1 h, default 1 h;
    /// path: default 1 min).
    pub refresh: Duration,
    /// The reason given for entries whose list gives none.
    pub reason: Option<String>,
    /// `matrix_policy`: the file holding the access token for the room.
    pub token_file: Option<PathBuf>,
    /// `matrix_policy`: recommendations that ban (default `m.ban`,
    /// `org.matrix.mjolnir.ban`).
    pub recommendations: Vec<String>,
    /// Largest body accepted (default 64 MiB).
    pub max_bytes: u64,
    /// Most entries accepted (default 5,000,000).
    pub max_entries: u64,
    /// An update keeping less than this share of the entries in force is
    /// refused (default 0.5: a list does not halve overnight).
    pub min_keep: f64,
    /// Reported stale after this long without a successful refresh
    /// (default: 3 × refresh).
    pub stale_after: Duration,
    /// IP lists only: a stale list stops blocking (default false).
    pub drop_when_stale: bool,
    /// A fetch taking longer is abandoned (default 30 s).
    pub timeout: Duration,
}

/// `[blocklist]`'s live part.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlocklistConfig {
    /// The sources, in check order.
    pub sources: Vec<BlocklistSource>,
    /// Targets whose list hits are cancelled (not exempt from limits).
    pub except: Vec<Target>,
}

/// Whether `url` is `https://`, or `http://` to a loopback host.
fn check_url(url: &str) -> std::result::Result<(), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("not a URL: {url:?}"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']')
            .map(|(h, _)| h)
            .ok_or_else(|| format!("bad host in {url:?}"))?
    } else {
        authority.split(':').next().unwrap_or("")
    };
    if host.is_empty() {
        return Err(format!("no host in {url:?}"));
    }
    match scheme {
        "https" => Ok(()),
        "http" => {
            let loopback =
                host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "http:// only to a loopback address (a list fetched in clear can be rewritten on the way): use https:// for {host}"
                ))
            }
        }
        other => Err(format!(
            "unsupported scheme {other:?}: expected https (or http to loopback)"
        )),
    }
}

impl Compiler<'_> {
    pub(super) fn blocklist(&self, raw: &RawBlocklist, norm: &Normalizer) -> Result<BlocklistConfig> {
        let mut sources: Vec<BlocklistSource> = Vec::new();
        for s in &raw.source {
            let src = self.blocklist_source(s)?;
            if sources.iter().any(|o| o.name == src.name) {
                return Err(self.err(
                    span_of(&s.get_ref().name),
                    format!("source {:?} is defined twice", src.name),
                ));
            }
            sources.push(src);
        }
        let mut except = Vec::new();
        for e in &raw.except {
            except.push(self.target(e, norm, "an except entry")?);
        }
        Ok(BlocklistConfig { sources, except })
    }

    fn blocklist_source(&self, s: &Spanned<RawSource>) -> Result<BlocklistSource> {
        let r = s.get_ref();
        let name = r.name.get_ref().trim();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(self.err(
                span_of(&r.name),
                "a source name is 1–64 letters, digits, '-', '_' or '.' (it names metrics and files)",
            ));
        }
        let location = match (&r.url, &r.path) {
            (Some(u), None) => {
                check_url(u.get_ref()).map_err(|e| self.err(span_of(u), e))?;
                SourceLocation::Url(u.get_ref().clone())
            }
            (None, Some(p)) => SourceLocation::Path(self.path(p)?),
            (Some(u), Some(_)) => return Err(self.err(span_of(u), "a source has a url or a path, not both")),
            (None, None) => return Err(self.err(span_of(s), "a source needs a url or a path")),
        };
        let format: ListFormat = r
            .format
            .get_ref()
            .parse()
            .map_err(|e| self.err(span_of(&r.format), e))?;
        let domain_match = match &r.match_ {
            None => DomainMatch::Exact,
            Some(m) if !matches!(format, ListFormat::Domains) => {
                return Err(self.err(
                    span_of(m),
                    "match applies to the domains format only (Matrix globs say it themselves)",
                ))
            }
            Some(m) => m.get_ref().parse().map_err(|e| self.err(span_of(m), e))?,
        };
        let side = match &r.side {
            None => None,
            Some(v) if v.get_ref() == "both" => None,
            Some(v) => Some(
                v.get_ref()
                    .parse::<Side>()
                    .map_err(|e| self.err(span_of(v), format!("{e} (or both)")))?,
            ),
        };
        let action = match &r.action {
            None => ListAction::Deny,
            Some(a) => a.get_ref().parse().map_err(|e| self.err(span_of(a), e))?,
        };
        let is_url = matches!(location, SourceLocation::Url(_));
        let refresh = match &r.refresh {
            None if is_url => MIN_URL_REFRESH,
            None => Duration::from_secs(60),
            Some(d) => {
                let v = self.duration(d)?;
                if is_url && v < MIN_URL_REFRESH {
                    return Err(self.err(
                        span_of(d),
                        "refresh of a URL source must be at least 1h (publishers such as Spamhaus ask for no more than one fetch an hour)",
                    ));
                }
                if v.is_zero() {
                    return Err(self.err(span_of(d), "refresh must be more than zero"));
                }
                v
            }
        };
        let matrix = format == ListFormat::MatrixPolicy;
        if let (Some(t), false) = (&r.token_file, matrix) {
            return Err(self.err(span_of(t), "token_file applies to matrix_policy sources only"));
        }
        if let (Some(rs), false) = (&r.recommendations, matrix) {
            let span = rs.first().map_or(span_of(s), span_of);
            return Err(self.err(span, "recommendations apply to matrix_policy sources only"));
        }
        let recommendations: Vec<String> = r
            .recommendations
            .iter()
            .flatten()
            .map(|x| x.get_ref().clone())
            .collect();
        if let Some(bad) = r
            .recommendations
            .iter()
            .flatten()
            .find(|x| x.get_ref().trim().is_empty())
        {
            return Err(self.err(span_of(bad), "an empty recommendation"));
        }
        let min_keep = match &r.min_keep {
            None => 0.5,
            Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                return Err(self.err(
                    span_of(v),
                    "min_keep is a share from 0 to 1 (0 turns the shrink check off)",
                ))
            }
        };
        let positive = |v: &Option<Spanned<u64>>, default: u64, key: &str| match v {
            None => Ok(default),
            Some(n) if *n.get_ref() > 0 => Ok(*n.get_ref()),
            Some(n) => Err(self.err(span_of(n), format!("{key} must be more than zero"))),
        };
        let stale_after = r
            .stale_after
            .as_ref()
            .map(|d| self.duration(d))
            .transpose()?
            .unwrap_or(refresh * 3);
        if let (Some(d), false) = (&r.drop_when_stale, format.is_ip()) {
            if *d.get_ref() {
                return Err(self.err(
                    span_of(d),
                    "drop_when_stale applies to IP lists (cidr, spamhaus_json) only",
                ));
            }
        }
        Ok(BlocklistSource {
            name: name.to_owned(),
            location,
            format,
            domain_match,
            side,
            action,
            refresh,
            reason: r.reason.as_ref().map(|x| x.get_ref().clone()),
            token_file: r.token_file.as_ref().map(|p| self.path(p)).transpose()?,
            recommendations,
            max_bytes: positive(&r.max_bytes, 64 << 20, "max_bytes")?,
            max_entries: positive(&r.max_entries, 5_000_000, "max_entries")?,
            min_keep,
            stale_after,
            drop_when_stale: r.drop_when_stale.as_ref().is_some_and(|d| *d.get_ref()),
            timeout: r
                .timeout
                .as_ref()
                .map(|d| self.duration(d))
                .transpose()?
                .unwrap_or(Duration::from_secs(30)),
        })
    }
}
