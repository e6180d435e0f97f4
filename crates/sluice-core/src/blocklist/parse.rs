//! Parsers of the list formats publishers use, each feeding a
//! [`SourceBuilder`]. Bad lines (or malformed events) are counted and
//! skipped; a body that is not a list at all (an HTML error page, JSON
//! that is not JSON) is refused whole, so the last good set stays.
//!
//! | format | what it reads |
//! |---|---|
//! | `domains` | one domain a line (the JabberSPAM blacklist); `#` comments |
//! | `cidr` | one address or CIDR a line, `;` or `#` comments, the comment as the reason (Spamhaus DROP text, FireHOL `.netset`, CrowdSec plain text) |
//! | `spamhaus_json` | Spamhaus DROP NDJSON: `{"cidr":…,"sblid":…}` a line, the metadata line skipped |
//! | `sha256` | one SHA-256 a line, hex (xmppbl.org) or base64 (MSC4205), of a bare user ID or a server name |
//! | `matrix_policy` | a Matrix policy room's state (`GET /rooms/{id}/state`): `m.policy.rule.server` / `.user` events (and their legacy `m.room.rule.*`, `org.matrix.mjolnir.rule.*` types) whose `recommendation` is accepted; MSC4205 `hashes.sha256` instead of `entity` |

use std::str::FromStr;

use super::{ListAction, SourceBuilder};

/// The list formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListFormat {
    /// One domain a line.
    Domains,
    /// One address or CIDR a line.
    Cidr,
    /// Spamhaus DROP NDJSON.
    SpamhausJson,
    /// One SHA-256 a line, hex or base64.
    Sha256,
    /// A Matrix policy room's state events.
    MatrixPolicy,
}

impl ListFormat {
    /// The name as configs write it.
    pub fn as_str(self) -> &'static str {
        match self {
            ListFormat::Domains => "domains",
            ListFormat::Cidr => "cidr",
            ListFormat::SpamhausJson => "spamhaus_json",
            ListFormat::Sha256 => "sha256",
            ListFormat::MatrixPolicy => "matrix_policy",
        }
    }

    /// Whether entries are networks (the staleness drop applies).
    pub fn is_ip(self) -> bool {
        matches!(self, ListFormat::Cidr | ListFormat::SpamhausJson)
    }
}

impl FromStr for ListFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "domains" => ListFormat::Domains,
            "cidr" => ListFormat::Cidr,
            "spamhaus_json" => ListFormat::SpamhausJson,
            "sha256" => ListFormat::Sha256,
            "matrix_policy" => ListFormat::MatrixPolicy,
            _ => {
                return Err(format!(
                    "unknown format {s:?}: expected domains, cidr, spamhaus_json, sha256 or matrix_policy"
                ))
            }
        })
    }
}

/// A body refused whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// An HTML page (a captive portal, an error page served with 200).
    #[error("the body is an HTML page, not a list")]
    Html,
    /// Not UTF-8.
    #[error("the body is not UTF-8 text")]
    NotText,
    /// Not the JSON the format needs.
    #[error("not valid JSON: {0}")]
    Json(String),
}

/// What a parse made of a body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Entries accepted (before duplicates fold).
    pub entries: usize,
    /// Lines or events refused.
    pub bad: usize,
    /// The first refused line (1-based) and why.
    pub first_bad: Option<(usize, String)>,
    /// Rules skipped on purpose (other recommendations, room rules, removed rules).
    pub ignored: usize,
}

impl Parsed {
    fn bad(&mut self, line: usize, why: impl FnOnce() -> String) {
        self.bad += 1;
        if self.first_bad.is_none() {
            self.first_bad = Some((line, why()));
        }
    }
}

/// The recommendations counted as bans when a source names none.
pub const DEFAULT_RECOMMENDATIONS: &[&str] = &["m.ban", "org.matrix.mjolnir.ban"];

/// Parses `body` in `format` into `b`. `recommendations` applies to
/// `matrix_policy` (empty: [`DEFAULT_RECOMMENDATIONS`]).
pub fn parse(
    format: ListFormat,
    body: &[u8],
    recommendations: &[String],
    b: &mut SourceBuilder,
) -> Result<Parsed, ParseError> {
    let text = std::str::from_utf8(body).map_err(|_| ParseError::NotText)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if looks_like_html(text) {
        return Err(ParseError::Html);
    }
    match format {
        ListFormat::Domains => Ok(domains(text, b)),
        ListFormat::Cidr => Ok(cidr(text, b)),
        ListFormat::SpamhausJson => spamhaus_json(text, b),
        ListFormat::Sha256 => Ok(sha256_lines(text, b)),
        ListFormat::MatrixPolicy => matrix_policy(text, recommendations, b),
    }
}

fn looks_like_html(text: &str) -> bool {
    let head: String = text
        .trim_start()
        .chars()
        .take(16)
        .collect::<String>()
        .to_ascii_lowercase();
    head.starts_with("<!doctype")
        || head.starts_with("<html")
        || head.starts_with("<head")
        || head.starts_with("<?xml")
}

/// Lines with comments (`#`, and `;` when `semicolon`) split off: `(line
/// number, content, comment)`.
fn lines(text: &str, semicolon: bool) -> impl Iterator<Item = (usize, &str, Option<&str>)> {
    text.lines().enumerate().filter_map(move |(i, l)| {
        let cut = l.find(|c| c == '#' || (semicolon && c == ';'));
        let (content, comment) = match cut {
            Some(p) => (&l[..p], Some(l[p + 1..].trim()).filter(|c| !c.is_empty())),
            None => (l, None),
        };
        let content = content.trim();
        (!content.is_empty()).then_some((i + 1, content, comment))
    })
}

fn domains(text: &str, b: &mut SourceBuilder) -> Parsed {
    let mut p = Parsed::default();
    for (n, line, _) in lines(text, false) {
        // Hosts-file lines (`0.0.0.0 name`) name the domain last.
        let d = line.split_whitespace().last().unwrap_or(line);
        match b.add_domain(d, None) {
            Ok(()) => p.entries += 1,
            Err(e) => p.bad(n, || e.to_string()),
        }
    }
    p
}

fn cidr(text: &str, b: &mut SourceBuilder) -> Parsed {
    let mut p = Parsed::default();
    for (n, line, comment) in lines(text, true) {
        let first = line.split_whitespace().next().unwrap_or(line);
        match crate::target::parse_ip_or_net(first) {
            Ok(net) => {
                b.add_network(net, comment);
                p.entries += 1;
            }
            Err(e) => p.bad(n, || e.to_string()),
        }
    }
    p
}

fn spamhaus_json(text: &str, b: &mut SourceBuilder) -> Result<Parsed, ParseError> {
    let mut p = Parsed::default();
    let mut json_lines = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                p.bad(i + 1, || e.to_string());
                continue;
            }
        };
        json_lines += 1;
        if v.get("type").and_then(|t| t.as_str()) == Some("metadata") {
            p.ignored += 1;
            continue;
        }
        let Some(c) = v.get("cidr").and_then(|c| c.as_str()) else {
            p.bad(i + 1, || "no \"cidr\" field".to_owned());
            continue;
        };
        match crate::target::parse_ip_or_net(c) {
            Ok(net) => {
                b.add_network(net, v.get("sblid").and_then(|s| s.as_str()));
                p.entries += 1;
            }
            Err(e) => p.bad(i + 1, || e.to_string()),
        }
    }
    if json_lines == 0 && p.bad > 0 {
        return Err(ParseError::Json("no line is a JSON object".to_owned()));
    }
    Ok(p)
}

/// Decodes a SHA-256 written in hex (64 digits) or base64 (standard or
/// URL-safe, padded or not).
pub fn decode_digest(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
        for (i, pair) in s.as_bytes().chunks(2).enumerate() {
            let hexval = |c: u8| (c as char).to_digit(16).map(|v| v as u8);
            out[i] = hexval(pair[0])? << 4 | hexval(pair[1])?;
        }
        return Some(out);
    }
    use base64::Engine as _;
    let trimmed = s.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
        .ok()?;
    (bytes.len() == 32).then(|| {
        out.copy_from_slice(&bytes);
        out
    })
}

fn sha256_lines(text: &str, b: &mut SourceBuilder) -> Parsed {
    let mut p = Parsed::default();
    for (n, line, comment) in lines(text, false) {
        let first = line.split_whitespace().next().unwrap_or(line);
        match decode_digest(first) {
            Some(d) => {
                b.add_digest(d, comment);
                p.entries += 1;
            }
            None => p.bad(n, || format!("not a SHA-256 in hex or base64: {first:?}")),
        }
    }
    p
}

/// Server rule event types (current, then legacy).
const SERVER_RULES: &[&str] = &[
    "m.policy.rule.server",
    "m.room.rule.server",
    "org.matrix.mjolnir.rule.server",
];
/// User rule event types.
const USER_RULES: &[&str] = &[
    "m.policy.rule.user",
    "m.room.rule.user",
    "org.matrix.mjolnir.rule.user",
];
/// Room rule event types (not targets sluice limits: ignored).
const ROOM_RULES: &[&str] = &[
    "m.policy.rule.room",
    "m.room.rule.room",
    "org.matrix.mjolnir.rule.room",
];

fn matrix_policy(
    text: &str,
    recommendations: &[String],
    b: &mut SourceBuilder,
) -> Result<Parsed, ParseError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| ParseError::Json(e.to_string()))?;
    // The state endpoint answers an array; `/sync`-style bodies and test
    // fixtures an object with the events inside.
    let events = match &v {
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => ["state", "events", "chunk"]
            .iter()
            .find_map(|k| o.get(*k).and_then(|e| e.as_array()))
            .ok_or_else(|| ParseError::Json("expected an array of state events".to_owned()))?,
        _ => return Err(ParseError::Json("expected an array of state events".to_owned())),
    };
    let accepted = |r: &str| {
        if recommendations.is_empty() {
            DEFAULT_RECOMMENDATIONS.contains(&r)
        } else {
            recommendations.iter().any(|a| a == r)
        }
    };
    let mut p = Parsed::default();
    for (i, ev) in events.iter().enumerate() {
        let n = i + 1;
        let Some(kind) = ev.get("type").and_then(|t| t.as_str()) else {
            p.bad(n, || "event without a type".to_owned());
            continue;
        };
        let server = SERVER_RULES.contains(&kind);
        let user = USER_RULES.contains(&kind);
        if !server && !user {
            if ROOM_RULES.contains(&kind) {
                p.ignored += 1;
            }
            continue;
        }
        let Some(content) = ev.get("content").and_then(|c| c.as_object()) else {
            p.bad(n, || "rule without content".to_owned());
            continue;
        };
        // A removed rule is its state key's event with empty content.
        if content.is_empty() {
            p.ignored += 1;
            continue;
        }
        let recommendation = content.get("recommendation").and_then(|r| r.as_str());
        match recommendation {
            Some(r) if accepted(r) => {}
            // Anything else — an allow rule, a takedown this source does not
            // take — is not a ban; it never exempts anything either.
            Some(_) => {
                p.ignored += 1;
                continue;
            }
            None => {
                p.bad(n, || "rule without a recommendation".to_owned());
                continue;
            }
        }
        let reason = content.get("reason").and_then(|r| r.as_str());
        if let Some(entity) = content.get("entity").and_then(|e| e.as_str()) {
            let r = if server {
                b.add_server_glob(entity, reason)
            } else {
                b.add_user_glob(entity, reason)
            };
            match r {
                Ok(()) => p.entries += 1,
                Err(e) => p.bad(n, || e.to_string()),
            }
            continue;
        }
        let hashed = content
            .get("hashes")
            .and_then(|h| h.get("sha256"))
            .and_then(|h| h.as_str())
            .and_then(decode_digest);
        match hashed {
            Some(d) => {
                b.add_digest(d, reason);
                p.entries += 1;
            }
            None => p.bad(n, || "rule without an entity or a sha256 hash".to_owned()),
        }
    }
    Ok(p)
}

/// Parses a whole body into a finished source (the fuzz targets' entry,
/// and a shorthand for tests).
pub fn source(name: &str, format: ListFormat, body: &[u8]) -> Result<(super::Source, Parsed), ParseError> {
    let mut b = SourceBuilder::new(name, ListAction::Deny);
    let p = parse(format, body, &[], &mut b)?;
    Ok((b.build(), p))
}
