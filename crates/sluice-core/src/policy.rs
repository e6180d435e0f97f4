//! Policy: which limits apply to a request, and who is exempt, overridden or banned.
//!
//! A policy is plain data, built once (by `sluice-config` or by hand) and
//! swapped atomically on reload. Counters live in the store and bans in the
//! engine, so replacing the policy keeps both.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasher;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ipnet::IpNet;

use crate::rate::Rate;
use crate::target::{Normalizer, Target, TargetKind};

/// Client-side (users' own requests) or federation-side (other servers').
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// Requests from a server's own users and anonymous clients.
    Client,
    /// Requests from (or to) other servers.
    Federation,
}

impl Side {
    /// Both sides.
    pub const ALL: [Side; 2] = [Side::Client, Side::Federation];

    /// The side's name in configs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Federation => "federation",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Side {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "client" => Ok(Side::Client),
            "federation" => Ok(Side::Federation),
            _ => Err(format!("unknown side {s:?}: expected client or federation")),
        }
    }
}

/// Which target of a request a per-target limit counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Per {
    /// The target of this kind, when the request carries one.
    Kind(TargetKind),
    /// The client address, but only for requests with no user or appservice:
    /// a per-IP cap for anonymous traffic that does not lock out a company's
    /// logged-in users behind one NAT.
    AnonymousIp,
}

impl Per {
    /// The name as written in configs (`ip`, `user`, …, `anonymous_ip`).
    pub fn as_str(self) -> &'static str {
        match self {
            Per::Kind(k) => k.as_str(),
            Per::AnonymousIp => "anonymous_ip",
        }
    }
}

impl FromStr for Per {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "anonymous_ip" {
            return Ok(Per::AnonymousIp);
        }
        match s.parse::<TargetKind>() {
            Ok(TargetKind::Global) | Err(_) => Err(format!(
                "unknown target kind {s:?}: expected ip, anonymous_ip, user, server or appservice"
            )),
            Ok(k) => Ok(Per::Kind(k)),
        }
    }
}

/// The built-in actions of each side and the target each is counted per by default.
pub const BUILTIN_ACTIONS: &[(Side, &str, Per)] = &[
    (Side::Client, "registration", Per::Kind(TargetKind::Ip)),
    (
        Side::Client,
        "registration_token_validity",
        Per::Kind(TargetKind::Ip),
    ),
    (Side::Client, "login", Per::Kind(TargetKind::Ip)),
    (Side::Client, "authentication_failure", Per::Kind(TargetKind::Ip)),
    (Side::Client, "request", Per::Kind(TargetKind::User)),
    (Side::Client, "send_event", Per::Kind(TargetKind::User)),
    (Side::Client, "join", Per::Kind(TargetKind::User)),
    (Side::Client, "invite", Per::Kind(TargetKind::User)),
    (Side::Client, "knock", Per::Kind(TargetKind::User)),
    (Side::Client, "report", Per::Kind(TargetKind::User)),
    (Side::Client, "create_alias", Per::Kind(TargetKind::User)),
    (Side::Client, "media_create", Per::Kind(TargetKind::User)),
    (Side::Client, "media_download", Per::Kind(TargetKind::Ip)),
    (Side::Client, "connection", Per::Kind(TargetKind::Ip)),
    (Side::Client, "bandwidth", Per::Kind(TargetKind::Ip)),
    (Side::Federation, "transaction", Per::Kind(TargetKind::Server)),
    (Side::Federation, "join", Per::Kind(TargetKind::Server)),
    (Side::Federation, "knock", Per::Kind(TargetKind::Server)),
    (Side::Federation, "invite", Per::Kind(TargetKind::Server)),
    (Side::Federation, "media_download", Per::Kind(TargetKind::Server)),
    (Side::Federation, "connection", Per::Kind(TargetKind::Ip)),
    (Side::Federation, "outgoing", Per::Kind(TargetKind::Server)),
    (
        Side::Federation,
        "outgoing_connection",
        Per::Kind(TargetKind::Server),
    ),
    (
        Side::Federation,
        "outgoing_bandwidth",
        Per::Kind(TargetKind::Server),
    ),
    (Side::Federation, "request", Per::Kind(TargetKind::Server)),
    (Side::Federation, "bandwidth", Per::Kind(TargetKind::Ip)),
];

/// Whom a limit counts: each target separately, or everyone together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One bucket per target.
    Target(Per),
    /// One bucket shared by all.
    Global,
}

/// What a limit bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// A rate (GCRA bucket).
    Rate(Rate),
    /// Simultaneous holders (connections, in-flight requests, uploads).
    Concurrency(u32),
}

/// One limit of the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    /// Stable name: `client.target.registration.ip`, `client.global.invite`,
    /// `client.concurrent.request.user`. Counters are keyed by name, so a
    /// reload that keeps a name keeps its counters. Interned (see [`intern`]).
    pub name: &'static str,
    /// Client or federation.
    pub side: Side,
    /// The action it limits (interned).
    pub action: &'static str,
    /// Per target or global.
    pub scope: Scope,
    /// Rate or concurrency.
    pub kind: LimitKind,
    /// Evaluate and report, never deny.
    pub shadow: bool,
}

impl Limit {
    /// A limit named by the convention above.
    pub fn new(side: Side, action: &str, scope: Scope, kind: LimitKind) -> Self {
        let name = match (kind, scope) {
            (LimitKind::Rate(_), Scope::Target(per)) => format!("{side}.target.{action}.{}", per.as_str()),
            (LimitKind::Rate(_), Scope::Global) => format!("{side}.global.{action}"),
            (LimitKind::Concurrency(_), Scope::Target(per)) => {
                format!("{side}.concurrent.{action}.{}", per.as_str())
            }
            (LimitKind::Concurrency(_), Scope::Global) => format!("{side}.concurrent.{action}.global"),
        };
        Self {
            name: intern(&name),
            side,
            action: intern(action),
            scope,
            kind,
            shadow: false,
        }
    }

    /// The same limit in shadow mode (or not).
    pub fn shadow(self, shadow: bool) -> Self {
        Self { shadow, ..self }
    }
}

/// What an override matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Matcher {
    /// Exactly this target.
    Target(Target),
    /// Any IP target inside this network.
    Network(IpNet),
}

impl Matcher {
    /// Whether `t` is matched.
    pub fn matches(&self, t: &Target) -> bool {
        match self {
            Matcher::Target(m) => m == t,
            Matcher::Network(net) => t.overlaps(net),
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matcher::Target(t) => t.fmt(f),
            Matcher::Network(n) => write!(f, "ip:{n}"),
        }
    }
}

/// What an override does to the limits of the targets it matches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Effect {
    /// Scale count and burst (`4.0` = four times as generous).
    Multiply(f64),
    /// Use this rate instead.
    Replace(Rate),
    /// No per-target limit at all (global limits still apply).
    Unlimited,
}

/// A per-target adjustment of limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// Which targets.
    pub matcher: Matcher,
    /// Which actions (empty = all).
    pub actions: Vec<Arc<str>>,
    /// What happens.
    pub effect: Effect,
}

/// N denials of an action within a window ban the target, doubling for
/// repeat offenders up to a cap.
#[derive(Debug, Clone, PartialEq)]
pub struct AutobanRule {
    /// Side of the action watched (`None` = both).
    pub side: Option<Side>,
    /// The action whose denials are counted.
    pub action: Arc<str>,
    /// Which target of the request is banned.
    pub per: TargetKind,
    /// How many denials…
    pub denials: u32,
    /// …within how long.
    pub window: Duration,
    /// The first ban's length.
    pub ban: Duration,
    /// The longest ban a repeat offender gets.
    pub max_ban: Duration,
    /// A clean record after this long resets the doubling.
    pub forget_after: Duration,
}

/// Interns a name: limit and action names live for the whole process, so
/// decisions carry `&'static str` instead of reference-counted strings — no
/// shared counter for every thread to bump on every decision. Names are
/// few and reloads rare; a reload with the same names adds nothing.
pub fn intern(s: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(n) = set.get(s) {
        return n;
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

#[derive(Debug, Clone, Default)]
struct ActionEntry {
    per: [Option<Per>; 2],
    limits: [Vec<usize>; 2],
}

/// The whole policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    limits: Vec<Limit>,
    /// Per action: its default target and limit indexes, `[client,
    /// federation]`. One lookup on the hot path, keyed by `str` so it does
    /// not allocate; foldhash because the keys are few and fixed.
    actions: HashMap<&'static str, ActionEntry, foldhash::fast::RandomState>,
    exempt_networks: Vec<IpNet>,
    exempt_targets: HashSet<Target>,
    blocked: Vec<Matcher>,
    overrides: Vec<Override>,
    autobans: Vec<AutobanRule>,
    normalizer: Normalizer,
}

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A limit names an action that is neither built in nor declared.
    #[error("unknown {side} action {action:?}")]
    UnknownAction {
        /// Side.
        side: Side,
        /// Action.
        action: String,
    },
    /// Two limits share a name.
    #[error("limit {0:?} is defined twice")]
    Duplicate(String),
}

impl Policy {
    /// An empty policy with the built-in actions: nothing limited.
    pub fn builder() -> PolicyBuilder {
        let mut actions: HashMap<&'static str, ActionEntry, _> = HashMap::default();
        for (side, action, per) in BUILTIN_ACTIONS {
            actions.entry(*action).or_insert_with(ActionEntry::default).per[*side as usize] = Some(*per);
        }
        PolicyBuilder {
            policy: Policy {
                actions,
                ..Policy::default()
            },
            names: HashSet::new(),
        }
    }

    /// Every limit, in definition order.
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }

    /// The limits of one action.
    pub fn limits_for<'a>(&'a self, side: Side, action: &str) -> impl Iterator<Item = &'a Limit> + 'a {
        self.limit_indexes(side, action)
            .iter()
            .map(move |i| &self.limits[*i])
    }

    /// Indexes into [`Policy::limits`] of one action's limits.
    pub fn limit_indexes(&self, side: Side, action: &str) -> &[usize] {
        self.action_limits(side, action).unwrap_or(&[])
    }

    /// The limit indexes of an action, or `None` if the action is unknown
    /// on that side: the hot path's one lookup.
    #[inline]
    pub fn action_limits(&self, side: Side, action: &str) -> Option<&[usize]> {
        let e = self.actions.get(action)?;
        e.per[side as usize].map(|_| &e.limits[side as usize][..])
    }

    /// Whether an action exists on a side, and whom it counts by default.
    pub fn action(&self, side: Side, action: &str) -> Option<Per> {
        self.actions.get(action).and_then(|a| a.per[side as usize])
    }

    /// Every known action, sorted: `(side, action, default target)`.
    pub fn actions(&self) -> Vec<(Side, String, Per)> {
        let mut v: Vec<_> = self
            .actions
            .iter()
            .flat_map(|(a, e)| {
                Side::ALL
                    .into_iter()
                    .filter_map(move |s| e.per[s as usize].map(|p| (s, a.to_string(), p)))
            })
            .collect();
        v.sort();
        v
    }

    /// How client addresses are grouped.
    pub fn normalizer(&self) -> Normalizer {
        self.normalizer
    }

    /// Whether a target is exempt from every limit and ban.
    pub fn is_exempt(&self, t: &Target) -> bool {
        (!self.exempt_targets.is_empty() && self.exempt_targets.contains(t))
            || self.exempt_networks.iter().any(|n| t.overlaps(n))
    }

    /// Exempt networks.
    pub fn exempt_networks(&self) -> &[IpNet] {
        &self.exempt_networks
    }

    /// Exempt targets.
    pub fn exempt_targets(&self) -> impl Iterator<Item = &Target> {
        self.exempt_targets.iter()
    }

    /// The blocklist entry matching `t`, if any (permanent, from config).
    pub fn blocked(&self, t: &Target) -> Option<&Matcher> {
        self.blocked.iter().find(|m| m.matches(t))
    }

    /// Blocklist entries.
    pub fn blocklist(&self) -> &[Matcher] {
        &self.blocked
    }

    /// The first override for `t` and `action`, if any.
    pub fn override_for(&self, t: &Target, action: &str) -> Option<&Override> {
        self.overrides.iter().find(|o| {
            (o.actions.is_empty() || o.actions.iter().any(|a| &**a == action)) && o.matcher.matches(t)
        })
    }

    /// Overrides, in match order.
    pub fn overrides(&self) -> &[Override] {
        &self.overrides
    }

    /// Automatic-ban rules.
    pub fn autobans(&self) -> &[AutobanRule] {
        &self.autobans
    }

    /// Hash seed for a limit name (stable for the life of `hasher`).
    pub(crate) fn name_hash<S: BuildHasher>(hasher: &S, name: &str) -> u64 {
        hasher.hash_one(name)
    }
}

/// Builds a [`Policy`], checking names as it goes.
#[derive(Debug)]
pub struct PolicyBuilder {
    policy: Policy,
    names: HashSet<&'static str>,
}

impl PolicyBuilder {
    /// Declares a custom action (or changes a built-in's default target).
    pub fn action(mut self, side: Side, action: &str, per: Per) -> Self {
        self.policy.actions.entry(intern(action)).or_default().per[side as usize] = Some(per);
        self
    }

    /// Adds a limit. Its action must be known.
    pub fn limit(mut self, limit: Limit) -> Result<Self, PolicyError> {
        if self.policy.action(limit.side, limit.action).is_none() {
            return Err(PolicyError::UnknownAction {
                side: limit.side,
                action: limit.action.to_string(),
            });
        }
        if !self.names.insert(limit.name) {
            return Err(PolicyError::Duplicate(limit.name.to_string()));
        }
        let i = self.policy.limits.len();
        self.policy.actions.entry(limit.action).or_default().limits[limit.side as usize].push(i);
        self.policy.limits.push(limit);
        Ok(self)
    }

    /// Removes a limit by name (used when a config overrides a preset entry).
    pub fn remove(mut self, name: &str) -> Self {
        if self.names.remove(name) {
            let limits = std::mem::take(&mut self.policy.limits);
            for e in self.policy.actions.values_mut() {
                e.limits = Default::default();
            }
            for l in limits.into_iter().filter(|l| l.name != name) {
                let i = self.policy.limits.len();
                self.policy.actions.entry(l.action).or_default().limits[l.side as usize].push(i);
                self.policy.limits.push(l);
            }
        }
        self
    }

    /// Whether a limit of that name exists.
    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    /// Exempts a network from every limit and ban.
    pub fn exempt_network(mut self, net: IpNet) -> Self {
        self.policy.exempt_networks.push(net.trunc());
        self
    }

    /// Exempts a target from every limit and ban.
    pub fn exempt_target(mut self, t: Target) -> Self {
        self.policy.exempt_targets.insert(t);
        self
    }

    /// Blocks a target or network permanently.
    pub fn block(mut self, m: Matcher) -> Self {
        self.policy.blocked.push(m);
        self
    }

    /// Adds an override (first match wins).
    pub fn override_limit(mut self, o: Override) -> Self {
        self.policy.overrides.push(o);
        self
    }

    /// Adds an automatic-ban rule.
    pub fn autoban(mut self, r: AutobanRule) -> Self {
        self.policy.autobans.push(r);
        self
    }

    /// Sets how client addresses are grouped.
    pub fn normalizer(mut self, n: Normalizer) -> Self {
        self.policy.normalizer = n;
        self
    }

    /// The finished policy.
    pub fn build(self) -> Policy {
        self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_names_follow_the_convention() {
        let r: Rate = "1/6m".parse().unwrap();
        let l = Limit::new(
            Side::Client,
            "registration",
            Scope::Target(Per::Kind(TargetKind::Ip)),
            LimitKind::Rate(r),
        );
        assert_eq!(l.name, "client.target.registration.ip");
        let g = Limit::new(Side::Client, "invite", Scope::Global, LimitKind::Rate(r));
        assert_eq!(g.name, "client.global.invite");
        let c = Limit::new(
            Side::Client,
            "request",
            Scope::Target(Per::Kind(TargetKind::User)),
            LimitKind::Concurrency(4),
        );
        assert_eq!(c.name, "client.concurrent.request.user");
    }

    #[test]
    fn unknown_actions_and_duplicates_refused() {
        let r: Rate = "1/6m".parse().unwrap();
        let bad = Limit::new(Side::Client, "teleport", Scope::Global, LimitKind::Rate(r));
        assert!(matches!(
            Policy::builder().limit(bad.clone()),
            Err(PolicyError::UnknownAction { .. })
        ));
        let ok = Policy::builder()
            .action(Side::Client, "teleport", Per::Kind(TargetKind::User))
            .limit(bad.clone());
        let dup = ok.unwrap().limit(bad);
        assert!(matches!(dup, Err(PolicyError::Duplicate(_))));
    }

    #[test]
    fn overrides_match_networks_and_actions() {
        let p = Policy::builder()
            .override_limit(Override {
                matcher: Matcher::Network("10.0.0.0/8".parse().unwrap()),
                actions: vec!["login".into()],
                effect: Effect::Multiply(4.0),
            })
            .build();
        let inside: Target = "ip:10.1.2.3".parse().unwrap();
        let outside: Target = "ip:11.1.2.3".parse().unwrap();
        assert!(p.override_for(&inside, "login").is_some());
        assert!(p.override_for(&inside, "registration").is_none());
        assert!(p.override_for(&outside, "login").is_none());
    }
}
