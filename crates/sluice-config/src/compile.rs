//! Raw document → validated [`Config`]: every check, each error at the span
//! of the value at fault.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use sluice_core::policy::BUILTIN_ACTIONS;
use sluice_core::rate::parse_duration;
use sluice_core::target::{normalize_server, parse_ip_or_net};
use sluice_core::{
    AutobanRule, Effect, Limit, LimitKind, Matcher, Normalizer, Override, Per, Policy, Rate, Scope, Side,
    Target, TargetKind, Unit,
};
use toml::Spanned;

use crate::error::{ConfigError, Source};
use crate::preset::{self, Preset};
use crate::raw::*;
use crate::settings::*;
use crate::Config;

pub(crate) mod blocklist;
mod http_gateway;
mod tcp_gateway;

type Result<T> = std::result::Result<T, ConfigError>;

/// Built-in actions whose cost is a number of bytes.
const BYTE_ACTIONS: &[&str] = &["media_create", "media_download", "bandwidth"];

fn is_builtin(side: Side, action: &str) -> bool {
    BUILTIN_ACTIONS.iter().any(|(s, a, _)| *s == side && *a == action)
}

/// The unit an action's rates must be written in (`None`: custom, any).
fn unit_of(side: Side, action: &str) -> Option<Unit> {
    if !is_builtin(side, action) {
        None
    } else if BYTE_ACTIONS.contains(&action) {
        Some(Unit::Bytes)
    } else {
        Some(Unit::Events)
    }
}

/// Parses and validates a whole document.
pub(crate) fn compile(text: &str, origin: &str) -> Result<Config> {
    let src = Source { text, origin };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        src.error(span, tidy(e.message()))
    })?;
    Compiler {
        src,
        actions: BUILTIN_ACTIONS
            .iter()
            .map(|(s, a, p)| ((*s, (*a).to_owned()), *p))
            .collect(),
    }
    .run(raw)
}

/// Speaks TOML in serde's messages: tables and arrays, not maps, sequences
/// and our internal struct names.
pub(crate) fn tidy(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("expected struct ") {
        out.push_str(&rest[..i]);
        out.push_str("expected a table");
        rest = &rest[i + "expected struct ".len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out.replace("invalid type: map", "invalid type: table")
        .replace("expected a map", "expected a table")
        .replace("invalid type: sequence", "invalid type: array")
        .replace("expected a sequence", "expected an array")
}

struct Compiler<'a> {
    src: Source<'a>,
    /// Every known action and its default target.
    actions: HashMap<(Side, String), Per>,
}

fn span_of<T>(s: &Spanned<T>) -> Range<usize> {
    s.span()
}

/// Sorts named entries into document order (errors then come first-first).
/// Each configured `[limits|concurrency.<side>.<scope>] action = …` entry
/// replaces every limit of that side, scope, action and kind (`of_kind`)
/// that the preset had, in the order the entries are written.
fn replace_entries<V>(
    limits: &mut Vec<Limit>,
    raw: &Sides<Scopes<Named<V>>>,
    of_kind: impl Fn(&LimitKind) -> bool,
    entry: impl Fn(Side, bool, &Spanned<String>, &Spanned<V>) -> Result<Vec<Limit>>,
) -> Result<()> {
    for (side, scopes) in [(Side::Client, &raw.client), (Side::Federation, &raw.federation)] {
        let Some(scopes) = scopes else { continue };
        for (global, table) in [(false, &scopes.target), (true, &scopes.global)] {
            let Some(table) = table else { continue };
            for (action, spec) in in_order(table) {
                let new = entry(side, global, action, spec)?;
                limits.retain(|l| {
                    !(l.side == side
                        && *l.action == **action.get_ref()
                        && of_kind(&l.kind)
                        && matches!(l.scope, Scope::Global) == global)
                });
                limits.extend(new);
            }
        }
    }
    Ok(())
}

fn in_order<V>(map: &Named<V>) -> Vec<(&Spanned<String>, &Spanned<V>)> {
    let mut v: Vec<_> = map.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}

impl Compiler<'_> {
    fn err(&self, span: Range<usize>, msg: impl std::fmt::Display) -> ConfigError {
        self.src.error(span, msg)
    }

    fn run(mut self, raw: RawConfig) -> Result<Config> {
        let preset = match &raw.preset {
            None => Preset::default(),
            Some(p) => p.get_ref().parse().map_err(|e| self.err(span_of(p), e))?,
        };
        let server = self.server(&raw.server)?;
        let store = self.store(&raw.store)?;
        let network = self.network(&raw.network)?;
        let privacy = PrivacyConfig {
            log_ips: raw.privacy.log_ips.unwrap_or(false),
        };
        let normalizer = Normalizer::new(network.ipv4_prefix, network.ipv6_prefix).unwrap_or_default();

        self.declare_actions(&raw.actions)?;
        let mut limits = preset::limits(preset);
        self.apply_limits(&mut limits, &raw.limits)?;
        self.apply_concurrency(&mut limits, &raw.concurrency)?;
        let (client_conn, fed_conn) = preset::bandwidth_per_connection(preset);
        let mut per_connection = [Some(client_conn), Some(fed_conn)];
        self.apply_bandwidth(&mut limits, &mut per_connection, &raw.bandwidth, &raw.limits)?;
        let per_ip = |side: Side| {
            let name = format!("{side}.target.bandwidth.ip");
            limits
                .iter()
                .find(|l| *l.name == name)
                .and_then(|l| match l.kind {
                    LimitKind::Rate(r) => Some(r),
                    LimitKind::Concurrency(_) => None,
                })
        };
        let bandwidth = BandwidthConfig {
            client_per_connection: per_connection[0],
            federation_per_connection: per_connection[1],
            client_per_ip: per_ip(Side::Client),
            federation_per_ip: per_ip(Side::Federation),
        };

        // The Redis store is exact for bucket spans up to ~104 days
        // (doubles in Lua); `serve` refuses more, so the check does too.
        let redis = store.kind == StoreKind::Redis;
        let too_long = |r: &Rate| redis && !sluice_core::store::exact_in_doubles(&r.gcra());
        let too_long_why = |what: &str, r: &Rate| {
            format!("{what} ({r}): its bucket spans more than the Redis store keeps exact (about 104 days); use a shorter period or a smaller burst")
        };
        for l in &limits {
            if let LimitKind::Rate(r) = &l.kind {
                if too_long(r) {
                    let span = raw.store.kind.as_ref().map_or(0..0, span_of);
                    return Err(self.err(span, too_long_why(&format!("limit {}", l.name), r)));
                }
            }
        }
        let mut builder = Policy::builder().normalizer(normalizer);
        let mut customs: Vec<_> = self
            .actions
            .iter()
            .filter(|((s, a), _)| !is_builtin(*s, a))
            .collect();
        customs.sort();
        for ((side, action), per) in customs {
            builder = builder.action(*side, action, *per);
        }
        for limit in limits {
            builder = builder
                .limit(limit)
                .map_err(|e| self.err(0..0, format!("internal error building the policy: {e}")))?;
        }
        for net in self.networks(&raw.exempt.networks)? {
            builder = builder.exempt_network(net);
        }
        for t in &raw.exempt.targets {
            match self.target(t, &normalizer, "an exemption")? {
                Target::Ip(net) => builder = builder.exempt_network(net),
                other => builder = builder.exempt_target(other),
            }
        }
        for s in &raw.blocklist.servers {
            let t = Target::server(s.get_ref()).map_err(|e| self.err(span_of(s), e))?;
            builder = builder.block(Matcher::Target(t));
        }
        for net in self.networks(&raw.blocklist.networks)? {
            builder = builder.block(Matcher::Network(net));
        }
        for o in &raw.overrides {
            let o_ = self.override_(o, &normalizer)?;
            if let Effect::Replace(r) = &o_.effect {
                if too_long(r) {
                    return Err(self.err(span_of(o), too_long_why("this override's rate", r)));
                }
            }
            builder = builder.override_limit(o_);
        }
        for rule in self.autobans(preset, &raw.autoban)? {
            builder = builder.autoban(rule);
        }
        let gateway = self.gateways(&raw.gateway, &server, &network)?;
        let blocklist = self.blocklist(&raw.blocklist, &normalizer)?;
        Ok(Config {
            preset,
            policy: builder.build(),
            server,
            store,
            network,
            privacy,
            bandwidth,
            gateway,
            blocklist,
            source: None,
        })
    }

    // ----- [server], [store], [network] -------------------------------------------------

    fn socket_addr(&self, s: &Spanned<String>) -> Result<SocketAddr> {
        s.get_ref().parse().map_err(|_| {
            self.err(
                span_of(s),
                format!(
                    "not an address with a port: {:?} (expected e.g. \"127.0.0.1:8470\" or \"[::1]:8470\")",
                    s.get_ref()
                ),
            )
        })
    }

    fn path(&self, s: &Spanned<String>) -> Result<PathBuf> {
        if s.get_ref().is_empty() {
            return Err(self.err(span_of(s), "empty path"));
        }
        Ok(PathBuf::from(s.get_ref()))
    }

    fn duration(&self, s: &Spanned<String>) -> Result<Duration> {
        parse_duration(s.get_ref()).map_err(|e| self.err(span_of(s), e))
    }

    fn server(&self, raw: &RawServer) -> Result<ServerConfig> {
        let mut c = ServerConfig::default();
        if let Some(l) = &raw.listen {
            c.listen = self.socket_addr(l)?;
        }
        c.admin_token_file = raw.admin_token_file.as_ref().map(|p| self.path(p)).transpose()?;
        c.state_dir = raw.state_dir.as_ref().map(|p| self.path(p)).transpose()?;
        if let Some(n) = &raw.max_body_bytes {
            c.max_body_bytes = match usize::try_from(*n.get_ref()) {
                Ok(n) if (1024..=64 << 20).contains(&n) => n,
                _ => {
                    return Err(self.err(
                        span_of(n),
                        "max_body_bytes must be between 1024 and 67108864 (64 MiB)",
                    ))
                }
            };
        }
        Ok(c)
    }

    fn store(&self, raw: &RawStore) -> Result<StoreConfig> {
        let mut c = StoreConfig::default();
        if let Some(k) = &raw.kind {
            c.kind = *k.get_ref();
        }
        let kind_span = raw.kind.as_ref().map_or(0..0, span_of);
        match (&c.kind, &raw.url) {
            (StoreKind::Redis, None) => {
                return Err(self.err(
                    kind_span,
                    "kind = \"redis\" needs a `url` (e.g. url = \"redis://127.0.0.1:6379\")",
                ))
            }
            (StoreKind::Memory, Some(u)) => {
                return Err(self.err(span_of(u), "`url` is only used with kind = \"redis\""))
            }
            (StoreKind::Redis, Some(u)) => {
                const SCHEMES: [&str; 6] = [
                    "redis://",
                    "rediss://",
                    "redis+unix://",
                    "unix://",
                    "valkey://",
                    "valkeys://",
                ];
                let url = u.get_ref();
                let rest = SCHEMES.iter().find_map(|s| url.strip_prefix(s));
                if rest.is_none_or(str::is_empty) {
                    return Err(self.err(
                        span_of(u),
                        format!(
                            "not a Redis URL: {url:?} (expected redis://, rediss://, redis+unix://, unix://, valkey:// or valkeys://)"
                        ),
                    ));
                }
                c.url = Some(url.clone());
            }
            (StoreKind::Memory, None) => {}
        }
        if let Some(cl) = &raw.cluster {
            if *cl.get_ref() && c.kind != StoreKind::Redis {
                return Err(self.err(span_of(cl), "`cluster` is only used with kind = \"redis\""));
            }
            c.cluster = *cl.get_ref();
        }
        if let Some(n) = &raw.max_keys {
            c.max_keys = match usize::try_from(*n.get_ref()) {
                Ok(n) if (1024..=1 << 32).contains(&(n as u64)) => n,
                _ => return Err(self.err(span_of(n), "max_keys must be between 1024 and 4294967296")),
            };
        }
        if let Some(o) = raw.on_error {
            c.on_error = o;
        }
        // Settings of the Redis store are errors with the memory store, as
        // `url` and `cluster` are: silently ignored, they would mislead.
        if c.kind == StoreKind::Memory {
            for (name, span) in [
                ("key_prefix", raw.key_prefix.as_ref().map(span_of)),
                ("connect_timeout", raw.connect_timeout.as_ref().map(span_of)),
                ("command_timeout", raw.command_timeout.as_ref().map(span_of)),
            ] {
                if let Some(span) = span {
                    return Err(self.err(span, format!("`{name}` is only used with kind = \"redis\"")));
                }
            }
        }
        if let Some(p) = &raw.key_prefix {
            // No braces: the store puts each target in a `{…}` hash tag,
            // and a brace in the prefix would make Redis Cluster hash it.
            let p_ok = p.get_ref().len() <= 64
                && p.get_ref()
                    .chars()
                    .all(|c| c.is_ascii_graphic() && c != '{' && c != '}');
            if !p_ok {
                return Err(self.err(
                    span_of(p),
                    "key_prefix must be at most 64 printable ASCII characters without spaces or braces",
                ));
            }
            c.key_prefix = p.get_ref().clone();
        }
        if let Some(t) = &raw.connect_timeout {
            c.connect_timeout = self.duration(t)?;
        }
        if let Some(t) = &raw.command_timeout {
            c.command_timeout = self.duration(t)?;
        }
        if let Some(n) = &raw.local_admission {
            if c.kind != StoreKind::Redis {
                return Err(self.err(span_of(n), "`local_admission` is only used with kind = \"redis\""));
            }
            c.local_admission = match u32::try_from(*n.get_ref()) {
                Ok(n) if (1..=10_000).contains(&n) => n,
                _ => {
                    return Err(self.err(
                        span_of(n),
                        "local_admission must be between 1 (off) and 10000 requests per Redis call",
                    ))
                }
            };
        }
        if let Some(t) = &raw.local_hold {
            if c.kind != StoreKind::Redis {
                return Err(self.err(span_of(t), "`local_hold` is only used with kind = \"redis\""));
            }
            let d = self.duration(t)?;
            if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&d) {
                return Err(self.err(span_of(t), "local_hold must be between 10ms and 60s"));
            }
            c.local_hold = d;
        }
        Ok(c)
    }

    fn networks(&self, list: &[Spanned<String>]) -> Result<Vec<IpNet>> {
        list.iter()
            .map(|s| parse_ip_or_net(s.get_ref()).map_err(|e| self.err(span_of(s), e)))
            .collect()
    }

    fn network(&self, raw: &RawNetwork) -> Result<NetworkConfig> {
        let mut c = NetworkConfig::default();
        if let Some(list) = &raw.trusted_proxies {
            c.trusted_proxies = self.networks(list)?;
        }
        if let Some(p) = &raw.ipv4_prefix {
            if !(16..=32).contains(p.get_ref()) {
                return Err(self.err(
                    span_of(p),
                    "ipv4_prefix must be between 16 and 32 (shorter prefixes turn per-IP limits into shared ones)",
                ));
            }
            c.ipv4_prefix = *p.get_ref();
        }
        if let Some(p) = &raw.ipv6_prefix {
            if !(32..=128).contains(p.get_ref()) {
                return Err(self.err(
                    span_of(p),
                    "ipv6_prefix must be between 32 and 128 (shorter prefixes turn per-IP limits into shared ones)",
                ));
            }
            c.ipv6_prefix = *p.get_ref();
        }
        Ok(c)
    }

    // ----- actions and limits ------------------------------------------------------------

    fn declare_actions(&mut self, raw: &Sides<Named<String>>) -> Result<()> {
        for (side, table) in [(Side::Client, &raw.client), (Side::Federation, &raw.federation)] {
            let Some(table) = table else { continue };
            for (name, per) in in_order(table) {
                let n = name.get_ref();
                let name_ok = !n.is_empty()
                    && n.len() <= 64
                    && n.starts_with(|c: char| c.is_ascii_lowercase())
                    && n.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                if !name_ok {
                    return Err(self.err(
                        span_of(name),
                        format!("bad action name {n:?}: use 1-64 lower-case letters, digits and _, starting with a letter"),
                    ));
                }
                if is_builtin(side, n) {
                    return Err(self.err(
                        span_of(name),
                        format!("{side} action {n:?} is built in; declare only new actions here"),
                    ));
                }
                let p: Per = per.get_ref().parse().map_err(|e| self.err(span_of(per), e))?;
                self.actions.insert((side, n.clone()), p);
            }
        }
        Ok(())
    }

    /// The default target of a known action, or an error at `name`.
    fn known_action(&self, side: Side, name: &Spanned<String>) -> Result<Per> {
        let a = name.get_ref();
        if let Some(p) = self.actions.get(&(side, a.clone())) {
            return Ok(*p);
        }
        let other = match side {
            Side::Client => Side::Federation,
            Side::Federation => Side::Client,
        };
        let hint = if self.actions.contains_key(&(other, a.clone())) {
            format!(" (it is a {other} action)")
        } else {
            format!(" (declare it under [actions.{side}])")
        };
        Err(self.err(span_of(name), format!("unknown {side} action {a:?}{hint}")))
    }

    fn rate(&self, s: &Spanned<String>, side: Side, action: &str) -> Result<Rate> {
        let r: Rate = s.get_ref().parse().map_err(|e| self.err(span_of(s), e))?;
        match (unit_of(side, action), r.unit()) {
            (Some(Unit::Bytes), Unit::Events) => Err(self.err(
                span_of(s),
                format!("{side}.{action} counts bytes: write the count with a unit, e.g. \"100MiB/1h\""),
            )),
            (Some(Unit::Events), Unit::Bytes) => Err(self.err(
                span_of(s),
                format!("{side}.{action} counts events, not bytes: drop the byte unit"),
            )),
            _ => Ok(r),
        }
    }

    fn scope(&self, per: Option<&Spanned<String>>, global: bool, default: Per) -> Result<Scope> {
        match (per, global) {
            (Some(p), true) => Err(self.err(
                span_of(p),
                "`per` only applies to target limits: a global limit is shared by everyone",
            )),
            (None, true) => Ok(Scope::Global),
            (None, false) => Ok(Scope::Target(default)),
            (Some(p), false) => p
                .get_ref()
                .parse()
                .map(Scope::Target)
                .map_err(|e| self.err(span_of(p), e)),
        }
    }

    /// The limits one entry of `[limits.<side>.<scope>]` stands for.
    fn rate_entry(
        &self,
        side: Side,
        global: bool,
        action: &Spanned<String>,
        spec: &Spanned<Spec<RawRate>>,
    ) -> Result<Vec<Limit>> {
        let default = self.known_action(side, action)?;
        let a = action.get_ref().as_str();
        let scope_word = if global { "global" } else { "target" };
        let one = |t: &RawRate| -> Result<Limit> {
            let mut rate = self.rate(&t.rate, side, a)?;
            if let Some(b) = &t.burst {
                rate = rate
                    .with_burst(*b.get_ref())
                    .map_err(|e| self.err(span_of(b), e))?;
            }
            let scope = self.scope(t.per.as_ref(), global, default)?;
            Ok(Limit::new(side, a, scope, LimitKind::Rate(rate)).shadow(t.shadow.unwrap_or(false)))
        };
        let limits = match spec.get_ref() {
            Spec::Str(s) if s == "off" => Vec::new(),
            Spec::Str(s) => {
                let text = Spanned::new(spec.span(), s.clone());
                let rate = self.rate(&text, side, a)?;
                let scope = if global {
                    Scope::Global
                } else {
                    Scope::Target(default)
                };
                vec![Limit::new(side, a, scope, LimitKind::Rate(rate))]
            }
            Spec::Int(_) => {
                return Err(self.err(
                    span_of(spec),
                    "a rate needs a period: write it as a string such as \"10/1m\" (or \"off\")",
                ))
            }
            Spec::Table(t) => vec![one(t)?],
            Spec::List(list) => {
                if list.is_empty() {
                    return Err(self.err(span_of(spec), "empty list: write \"off\" to remove the limit"));
                }
                let mut out: Vec<Limit> = Vec::new();
                for t in list {
                    let l = one(t.get_ref())?;
                    if out.iter().any(|o| o.name == l.name) {
                        return Err(self.err(
                            span_of(t),
                            format!(
                                "{side}.{scope_word}.{a} already has a limit counted the same way ({}): give each entry a different `per`",
                                l.name
                            ),
                        ));
                    }
                    out.push(l);
                }
                out
            }
        };
        Ok(limits)
    }

    fn apply_limits(&self, limits: &mut Vec<Limit>, raw: &Sides<Scopes<Named<Spec<RawRate>>>>) -> Result<()> {
        replace_entries(
            limits,
            raw,
            |k| matches!(k, LimitKind::Rate(_)),
            |side, global, action, spec| self.rate_entry(side, global, action, spec),
        )
    }

    fn concurrency_entry(
        &self,
        side: Side,
        global: bool,
        action: &Spanned<String>,
        spec: &Spanned<Spec<RawConcurrency>>,
    ) -> Result<Vec<Limit>> {
        let default = self.known_action(side, action)?;
        let a = action.get_ref().as_str();
        let max = |n: i64, span: Range<usize>| -> Result<u32> {
            u32::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| self.err(span, "a concurrency cap must be between 1 and 4294967295"))
        };
        let one = |t: &RawConcurrency| -> Result<Limit> {
            let n = max(*t.max.get_ref(), span_of(&t.max))?;
            let scope = self.scope(t.per.as_ref(), global, default)?;
            Ok(Limit::new(side, a, scope, LimitKind::Concurrency(n)).shadow(t.shadow.unwrap_or(false)))
        };
        Ok(match spec.get_ref() {
            Spec::Str(s) if s == "off" => Vec::new(),
            Spec::Str(_) => {
                return Err(self.err(
                    span_of(spec),
                    "expected a number of simultaneous holders (e.g. 20), a table { max = 20 }, or \"off\"",
                ))
            }
            Spec::Int(n) => {
                let scope = if global {
                    Scope::Global
                } else {
                    Scope::Target(default)
                };
                vec![Limit::new(
                    side,
                    a,
                    scope,
                    LimitKind::Concurrency(max(*n, span_of(spec))?),
                )]
            }
            Spec::Table(t) => vec![one(t)?],
            Spec::List(list) => {
                if list.is_empty() {
                    return Err(self.err(span_of(spec), "empty list: write \"off\" to remove the cap"));
                }
                let mut out: Vec<Limit> = Vec::new();
                for t in list {
                    let l = one(t.get_ref())?;
                    if out.iter().any(|o| o.name == l.name) {
                        return Err(self.err(
                            span_of(t),
                            format!("{} is defined twice: give each entry a different `per`", l.name),
                        ));
                    }
                    out.push(l);
                }
                out
            }
        })
    }

    fn apply_concurrency(
        &self,
        limits: &mut Vec<Limit>,
        raw: &Sides<Scopes<Named<Spec<RawConcurrency>>>>,
    ) -> Result<()> {
        replace_entries(
            limits,
            raw,
            |k| matches!(k, LimitKind::Concurrency(_)),
            |side, global, action, spec| self.concurrency_entry(side, global, action, spec),
        )
    }

    fn byte_rate_or_off(&self, s: &Spanned<String>) -> Result<Option<Rate>> {
        if s.get_ref() == "off" {
            return Ok(None);
        }
        self.rate(s, Side::Client, "bandwidth").map(Some)
    }

    fn apply_bandwidth(
        &self,
        limits: &mut Vec<Limit>,
        per_connection: &mut [Option<Rate>; 2],
        raw: &Sides<RawBandwidth>,
        raw_limits: &Sides<Scopes<Named<Spec<RawRate>>>>,
    ) -> Result<()> {
        for (side, bw, lim) in [
            (Side::Client, &raw.client, &raw_limits.client),
            (Side::Federation, &raw.federation, &raw_limits.federation),
        ] {
            let Some(bw) = bw else { continue };
            if let Some(pc) = &bw.per_connection {
                per_connection[side as usize] = self.byte_rate_or_off(pc)?;
            }
            let Some(pi) = &bw.per_ip else { continue };
            let in_limits = lim
                .as_ref()
                .and_then(|s| s.target.as_ref())
                .is_some_and(|t| t.keys().any(|k| k.get_ref() == "bandwidth"));
            if in_limits {
                return Err(self.err(
                    span_of(pi),
                    format!(
                        "bandwidth per IP is set twice: here and as `bandwidth` in [limits.{side}.target]; keep one"
                    ),
                ));
            }
            let rate = self.byte_rate_or_off(pi)?;
            limits.retain(|l| {
                !(l.side == side
                    && l.action == "bandwidth"
                    && matches!(l.kind, LimitKind::Rate(_))
                    && !matches!(l.scope, Scope::Global))
            });
            if let Some(r) = rate {
                limits.push(Limit::new(
                    side,
                    "bandwidth",
                    Scope::Target(Per::Kind(TargetKind::Ip)),
                    LimitKind::Rate(r),
                ));
            }
        }
        Ok(())
    }

    // ----- targets, overrides, autobans ------------------------------------------------

    fn target(&self, s: &Spanned<String>, norm: &Normalizer, what: &str) -> Result<Target> {
        let t = norm.parse(s.get_ref()).map_err(|e| self.err(span_of(s), e))?;
        if t == Target::Global {
            return Err(self.err(
                span_of(s),
                format!("`global` cannot be {what}: change the global limits instead"),
            ));
        }
        Ok(t)
    }

    fn any_action(&self, s: &Spanned<String>) -> Result<Vec<Side>> {
        let sides: Vec<Side> = Side::ALL
            .into_iter()
            .filter(|side| self.actions.contains_key(&(*side, s.get_ref().clone())))
            .collect();
        if sides.is_empty() {
            return Err(self.err(
                span_of(s),
                format!(
                    "unknown action {:?} (declare it under [actions.client] or [actions.federation])",
                    s.get_ref()
                ),
            ));
        }
        Ok(sides)
    }

    fn override_(&self, o: &Spanned<RawOverride>, norm: &Normalizer) -> Result<Override> {
        let raw = o.get_ref();
        let t = self.target(&raw.target, norm, "overridden")?;
        let matcher = match t {
            // IP targets match by containment, so `ip:10.0.0.0/8` covers its
            // addresses and an IPv6 address covers its configured prefix.
            Target::Ip(net) => Matcher::Network(net),
            other => Matcher::Target(other),
        };
        let mut actions: Vec<(Arc<str>, Vec<Side>)> = Vec::new();
        if let Some(list) = &raw.actions {
            if list.get_ref().is_empty() {
                return Err(self.err(
                    span_of(list),
                    "empty `actions`: leave the key out to match every action",
                ));
            }
            for a in list.get_ref() {
                let sides = self.any_action(a)?;
                actions.push((a.get_ref().as_str().into(), sides));
            }
        }
        let given: Vec<Range<usize>> = [
            raw.multiply.as_ref().map(span_of),
            raw.rate.as_ref().map(span_of),
            raw.unlimited.as_ref().map(span_of),
        ]
        .into_iter()
        .flatten()
        .collect();
        if given.len() > 1 {
            return Err(self.err(
                given[1].clone(),
                "an override has exactly one of `multiply`, `rate` or `unlimited`",
            ));
        }
        let effect = if let Some(m) = &raw.multiply {
            let f = *m.get_ref();
            if !(f.is_finite() && f > 0.0 && f <= 1e6) {
                return Err(self.err(
                    span_of(m),
                    "multiply must be a number above 0 and at most 1000000",
                ));
            }
            Effect::Multiply(f)
        } else if let Some(r) = &raw.rate {
            if actions.is_empty() {
                return Err(self.err(
                    span_of(r),
                    "a `rate` override needs `actions`: one rate cannot suit every action",
                ));
            }
            let rate: Rate = r.get_ref().parse().map_err(|e| self.err(span_of(r), e))?;
            for (a, sides) in &actions {
                for side in sides {
                    // Checks the unit against each action it replaces.
                    self.rate(r, *side, a)?;
                }
            }
            Effect::Replace(rate)
        } else if let Some(u) = &raw.unlimited {
            if !*u.get_ref() {
                return Err(self.err(span_of(u), "unlimited = false does nothing: remove the override"));
            }
            Effect::Unlimited
        } else {
            return Err(self.err(
                span_of(o),
                "an override needs one of `multiply`, `rate` or `unlimited`",
            ));
        };
        Ok(Override {
            matcher,
            actions: actions.into_iter().map(|(a, _)| a).collect(),
            effect,
        })
    }

    fn autobans(&self, preset: Preset, raw: &[Spanned<RawAutoban>]) -> Result<Vec<AutobanRule>> {
        let mut rules = preset::autobans(preset);
        let mut seen: BTreeMap<(String, Option<Side>), Range<usize>> = BTreeMap::new();
        let mut configured = Vec::new();
        for entry in raw {
            let r = entry.get_ref();
            let side = match &r.side {
                None => None,
                Some(s) => Some(s.get_ref().parse::<Side>().map_err(|e| self.err(span_of(s), e))?),
            };
            match side {
                Some(side) => {
                    self.known_action(side, &r.action)?;
                }
                None => {
                    self.any_action(&r.action)?;
                }
            }
            let key = (r.action.get_ref().clone(), side);
            // A rule without a side covers both: another for the same action
            // overlaps it whatever its side, and both would apply.
            let overlaps = seen
                .keys()
                .any(|(a, s)| a == r.action.get_ref() && (s.is_none() || side.is_none() || *s == side));
            if overlaps || seen.insert(key, span_of(entry)).is_some() {
                return Err(self.err(
                    span_of(&r.action),
                    format!(
                        "a second [[autoban]] for {:?}: merge them into one",
                        r.action.get_ref()
                    ),
                ));
            }
            // A configured rule replaces the preset's rules for its action (and side).
            rules.retain(|p| {
                !(*p.action == **r.action.get_ref() && (side.is_none() || p.side.is_none() || p.side == side))
            });
            if r.off.as_ref().is_some_and(|o| *o.get_ref()) {
                let extra = [
                    r.per.as_ref().map(span_of),
                    r.denials.as_ref().map(span_of),
                    r.within.as_ref().map(span_of),
                    r.ban.as_ref().map(span_of),
                    r.max_ban.as_ref().map(span_of),
                    r.forget_after.as_ref().map(span_of),
                ]
                .into_iter()
                .flatten()
                .min_by_key(|s| s.start);
                if let Some(span) = extra {
                    return Err(self.err(span, "`off = true` takes only `action` and `side`"));
                }
                continue;
            }
            let need = |v: &Option<Spanned<String>>, key: &str| -> Result<Duration> {
                match v {
                    Some(s) => self.duration(s),
                    None => Err(self.err(span_of(entry), format!("[[autoban]] needs `{key}`"))),
                }
            };
            let per = match &r.per {
                None => TargetKind::Ip,
                Some(p) => match p.get_ref().parse::<TargetKind>() {
                    Ok(TargetKind::Global) | Err(_) => {
                        return Err(self.err(
                            span_of(p),
                            format!(
                                "cannot ban per {:?}: expected ip, user, server or appservice",
                                p.get_ref()
                            ),
                        ))
                    }
                    Ok(k) => k,
                },
            };
            let denials = match &r.denials {
                None => return Err(self.err(span_of(entry), "[[autoban]] needs `denials`")),
                Some(d) => u32::try_from(*d.get_ref())
                    .ok()
                    .filter(|d| *d > 0)
                    .ok_or_else(|| self.err(span_of(d), "denials must be between 1 and 4294967295"))?,
            };
            let window = need(&r.within, "within")?;
            let ban = need(&r.ban, "ban")?;
            let max_ban = match &r.max_ban {
                None => ban,
                Some(m) => {
                    let m_d = self.duration(m)?;
                    if m_d < ban {
                        return Err(self.err(span_of(m), "max_ban is shorter than ban"));
                    }
                    m_d
                }
            };
            let forget_after = match &r.forget_after {
                None => Duration::from_secs(86_400).max(max_ban),
                Some(f) => self.duration(f)?,
            };
            configured.push(AutobanRule {
                side,
                action: r.action.get_ref().as_str().into(),
                per,
                denials,
                window,
                ban,
                max_ban,
                forget_after,
            });
        }
        rules.extend(configured);
        Ok(rules)
    }

    // ----- gateways ------------------------------------------------------------------

    fn gateways(
        &self,
        raw: &RawGateway,
        server: &ServerConfig,
        network: &NetworkConfig,
    ) -> Result<GatewayConfig> {
        let mut listens: Vec<SocketAddr> = vec![server.listen];
        let mut check_listen = |addr: SocketAddr, span: Range<usize>| -> Result<()> {
            // Two listeners on one port clash when either is a wildcard
            // (`0.0.0.0`, `[::]`, which also takes IPv4 by default) or
            // both name the same address: the second bind would fail.
            let clash = |other: &SocketAddr| {
                other.port() == addr.port()
                    && (other.ip() == addr.ip() || other.ip().is_unspecified() || addr.ip().is_unspecified())
                    && (other.is_ipv4() == addr.is_ipv4()
                        || (other.is_ipv6() && other.ip().is_unspecified())
                        || (addr.is_ipv6() && addr.ip().is_unspecified()))
            };
            if addr.port() != 0 && listens.iter().any(clash) {
                return Err(self.err(span, format!("{addr} is already used by another listener")));
            }
            listens.push(addr);
            Ok(())
        };
        let mut c = GatewayConfig::default();
        for g in &raw.tcp {
            let r = g.get_ref();
            let listen = self.socket_addr(&r.listen)?;
            check_listen(listen, span_of(&r.listen))?;
            let up = self.tcp_upstream(g, r)?;
            let side: Side = r
                .side
                .get_ref()
                .parse()
                .map_err(|e| self.err(span_of(&r.side), e))?;
            let accept_proxy = r.accept_proxy.as_ref().is_some_and(|a| *a.get_ref());
            if accept_proxy && network.trusted_proxies.is_empty() {
                return Err(self.err(
                    r.accept_proxy.as_ref().map_or(span_of(g), span_of),
                    "accept_proxy needs [network] trusted_proxies: a PROXY header from anyone else would let clients pick their own address",
                ));
            }
            c.tcp.push(self.tcp_gateway(r, listen, up, side, accept_proxy)?);
        }
        for g in &raw.http {
            let r = g.get_ref();
            let listen = self.socket_addr(&r.listen)?;
            check_listen(listen, span_of(&r.listen))?;
            let up = r.upstream.get_ref();
            let authority = up
                .strip_prefix("http://")
                .or_else(|| up.strip_prefix("https://"))
                .map(|rest| rest.strip_suffix('/').unwrap_or(rest));
            if authority.is_none_or(|a| a.contains('/') || normalize_server(a).is_none()) {
                return Err(self.err(
                    span_of(&r.upstream),
                    format!(
                        "upstream must be a base URL such as \"http://127.0.0.1:8008\" (no path), got {up:?}"
                    ),
                ));
            }
            c.http.push(self.http_gateway(r, listen)?);
        }
        Ok(c)
    }
}
