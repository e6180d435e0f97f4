//! Parsing API bodies, naming the field at fault.
//!
//! Bodies are parsed into a `serde_json::Value` first and then read field by
//! field, so every refusal says exactly which field is wrong
//! (`targets.ip`, `cost`, …) instead of a serde position.

use std::time::Duration;

use serde_json::{Map, Value};
use sluice_core::{Normalizer, Policy, Side, Target, Targets};

/// A refused input: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field (`body` for the body as a whole).
    pub field: String,
    /// What is wrong, for humans.
    pub message: String,
}

impl FieldError {
    /// A refusal of `field`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

type Result<T> = std::result::Result<T, FieldError>;

/// Parses a JSON object body.
pub fn object(body: &[u8]) -> Result<Map<String, Value>> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| FieldError::new("body", format!("not JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(FieldError::new("body", "expected a JSON object")),
    }
}

/// Refuses keys outside `allowed`.
pub fn only(m: &Map<String, Value>, prefix: &str, allowed: &[&str]) -> Result<()> {
    match m.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(FieldError::new(
            &format!("{prefix}{k}"),
            format!("unknown field; expected one of: {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

/// A required string.
pub fn string<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a str> {
    match m.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(FieldError::new(key, "expected a string")),
        None => Err(FieldError::new(key, "missing")),
    }
}

/// An optional unsigned integer within `min..=max`.
pub fn uint(m: &Map<String, Value>, key: &str, min: u64, max: u64) -> Result<Option<u64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
            _ => Err(FieldError::new(
                key,
                format!("expected an integer from {min} to {max}"),
            )),
        },
        Some(_) => Err(FieldError::new(key, "expected an integer")),
    }
}

/// An optional boolean.
pub fn boolean(m: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(FieldError::new(key, "expected true or false")),
    }
}

/// The most a single request may cost (1 TiB): bounds arithmetic, not policy.
pub const MAX_COST: u64 = 1 << 40;

/// A parsed `/v1/check` or `/v1/acquire` body.
#[derive(Debug, Clone)]
pub struct Ask {
    /// Side.
    pub side: Side,
    /// Action, known to the policy.
    pub action: String,
    /// Targets.
    pub targets: Targets,
    /// Cost.
    pub cost: u64,
    /// Evaluate only.
    pub dry_run: bool,
    /// Lease lifetime (acquire).
    pub ttl: Option<Duration>,
}

/// Longest lease: a day. Longer-lived holders should renew.
pub const MAX_TTL_MS: u64 = 86_400_000;

/// Parses a check (`acquire = false`) or acquire body against `policy`.
pub fn ask(body: &[u8], policy: &Policy, acquire: bool) -> Result<Ask> {
    ask_map(&object(body)?, policy, acquire)
}

/// Parses `/v1/auth` query parameters (`action`, `side`, `ip`, `user`,
/// `server`, `appservice`, `cost`) into a check.
pub fn ask_query(pairs: &[(String, String)], policy: &Policy) -> Result<Ask> {
    let mut m = Map::new();
    let mut targets = Map::new();
    for (k, v) in pairs {
        let dup = || FieldError::new(k, "given more than once");
        match k.as_str() {
            "action" | "side" => {
                if m.insert(k.clone(), Value::String(v.clone())).is_some() {
                    return Err(dup());
                }
            }
            "cost" => {
                let n: u64 = v.parse().map_err(|_| {
                    FieldError::new("cost", format!("expected an integer from 1 to {MAX_COST}"))
                })?;
                if m.insert(k.clone(), Value::from(n)).is_some() {
                    return Err(dup());
                }
            }
            "ip" | "user" | "server" | "appservice" => {
                // nginx passes `$remote_addr` etc. unconditionally: empty means absent.
                if !v.is_empty() && targets.insert(k.clone(), Value::String(v.clone())).is_some() {
                    return Err(dup());
                }
            }
            other => {
                return Err(FieldError::new(
                    other,
                    "unknown parameter; expected action, side, ip, user, server, appservice, cost",
                ))
            }
        }
    }
    m.insert("targets".into(), Value::Object(targets));
    ask_map(&m, policy, false).map_err(|mut e| {
        // Query parameters are flat: `targets.ip` is the `ip` parameter.
        if let Some(rest) = e.field.strip_prefix("targets.") {
            e.field = rest.to_owned();
        }
        e
    })
}

fn ask_map(m: &Map<String, Value>, policy: &Policy, acquire: bool) -> Result<Ask> {
    if acquire {
        only(m, "", &["action", "side", "targets", "ttl_ms"])?;
    } else {
        only(m, "", &["action", "side", "targets", "cost", "dry_run"])?;
    }
    let side = match m.get("side") {
        None | Some(Value::Null) => Side::Client,
        Some(Value::String(s)) => s
            .parse::<Side>()
            .map_err(|_| FieldError::new("side", "expected \"client\" or \"federation\""))?,
        Some(_) => return Err(FieldError::new("side", "expected a string")),
    };
    let action = string(m, "action")?;
    if policy.action(side, action).is_none() {
        return Err(FieldError::new(
            "action",
            format!("unknown {side} action {action:?}"),
        ));
    }
    let targets = match m.get("targets") {
        None | Some(Value::Null) => Targets::default(),
        Some(Value::Object(t)) => targets(t, policy.normalizer())?,
        Some(_) => return Err(FieldError::new("targets", "expected an object")),
    };
    let ttl = if acquire {
        let ms = uint(m, "ttl_ms", 1, MAX_TTL_MS)?.ok_or_else(|| FieldError::new("ttl_ms", "missing"))?;
        Some(Duration::from_millis(ms))
    } else {
        None
    };
    Ok(Ask {
        side,
        action: action.to_owned(),
        targets,
        cost: if acquire {
            1
        } else {
            uint(m, "cost", 1, MAX_COST)?.unwrap_or(1)
        },
        dry_run: !acquire && boolean(m, "dry_run")?.unwrap_or(false),
        ttl,
    })
}

fn targets(t: &Map<String, Value>, norm: Normalizer) -> Result<Targets> {
    only(t, "targets.", &["ip", "user", "server", "appservice"])?;
    let get = |k: &str| -> Result<Option<&str>> {
        match t.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(FieldError::new(&format!("targets.{k}"), "expected a string")),
        }
    };
    let mut out = Targets::default();
    if let Some(ip) = get("ip")? {
        let addr = ip
            .parse()
            .map_err(|_| FieldError::new("targets.ip", "expected an IPv4 or IPv6 address"))?;
        // Grouped to the policy's prefix when planned; parsed here for errors.
        let _ = norm;
        out.ip = Some(addr);
    }
    let field = |k: &str, r: std::result::Result<Target, sluice_core::TargetError>| {
        r.map_err(|e| FieldError::new(&format!("targets.{k}"), e.to_string()))
    };
    if let Some(u) = get("user")? {
        out.user = Some(field("user", Target::user(u))?);
    }
    if let Some(s) = get("server")? {
        out.server = Some(field("server", Target::server(s))?);
    }
    if let Some(a) = get("appservice")? {
        out.appservice = Some(field("appservice", Target::appservice(a))?);
    }
    Ok(out)
}

/// Parses a target for the admin API: `kind:value`, or a hashed address
/// label (`ip#…`) resolved by `resolve`.
pub fn admin_target(
    s: &str,
    field: &str,
    norm: Normalizer,
    resolve: impl Fn(&str) -> Option<Target>,
) -> Result<Target> {
    if s.starts_with("ip#") {
        return resolve(s).ok_or_else(|| {
            FieldError::new(field, format!("{s} matches no recently seen or banned address"))
        });
    }
    norm.parse(s).map_err(|e| FieldError::new(field, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::builder().build()
    }

    #[test]
    fn every_bad_field_is_named() {
        let p = policy();
        let cases: &[(&str, &str)] = &[
            ("nope", "body"),
            ("[]", "body"),
            (r#"{}"#, "action"),
            (r#"{"action":7}"#, "action"),
            (r#"{"action":"teleport"}"#, "action"),
            (r#"{"action":"login","side":"moon"}"#, "side"),
            (r#"{"action":"login","cost":0}"#, "cost"),
            (r#"{"action":"login","cost":-1}"#, "cost"),
            (r#"{"action":"login","cost":"1"}"#, "cost"),
            (r#"{"action":"login","dry_run":1}"#, "dry_run"),
            (r#"{"action":"login","extra":1}"#, "extra"),
            (r#"{"action":"login","targets":[]}"#, "targets"),
            (r#"{"action":"login","targets":{"ip":"300.1.1.1"}}"#, "targets.ip"),
            (r#"{"action":"login","targets":{"ip":5}}"#, "targets.ip"),
            (r#"{"action":"login","targets":{"user":"bob"}}"#, "targets.user"),
            (
                r#"{"action":"login","targets":{"server":"a b"}}"#,
                "targets.server",
            ),
            (
                r#"{"action":"login","targets":{"appservice":""}}"#,
                "targets.appservice",
            ),
            (r#"{"action":"login","targets":{"mac":"x"}}"#, "targets.mac"),
        ];
        for (body, field) in cases {
            let e = ask(body.as_bytes(), &p, false).unwrap_err();
            assert_eq!(e.field, *field, "{body}: {e:?}");
        }
        let e = ask(br#"{"action":"login"}"#, &p, true).unwrap_err();
        assert_eq!(e.field, "ttl_ms");
        let e = ask(br#"{"action":"login","ttl_ms":0}"#, &p, true).unwrap_err();
        assert_eq!(e.field, "ttl_ms");
    }

    #[test]
    fn defaults() {
        let a = ask(
            br#"{"action":"registration","targets":{"ip":"203.0.113.7"}}"#,
            &policy(),
            false,
        )
        .unwrap();
        assert_eq!((a.side, a.cost, a.dry_run), (Side::Client, 1, false));
        assert!(a.targets.ip.is_some());
    }
}
