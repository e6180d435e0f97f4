//! Presets: complete policies sized for a kind of server.
//!
//! The numbers live in one table ([`ROWS`]) that builds the policies and
//! prints `sluice presets`, so the two cannot disagree. Reasons for each value
//! are in `docs/configuration.md`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sluice_core::{AutobanRule, Limit, LimitKind, Per, Rate, Scope, Side, TargetKind};

/// A preset: the starting policy that a config's overrides adjust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Preset {
    /// A personal or family server: a handful of users (the default).
    #[default]
    PrivateSmall,
    /// A community or company server with closed registration.
    PrivateMedium,
    /// A public server with open registration, thousands of users.
    PublicMedium,
    /// A large public server: tens of thousands of users or more.
    PublicLarge,
}

impl Preset {
    /// Every preset, smallest first.
    pub const ALL: [Preset; 4] = [
        Preset::PrivateSmall,
        Preset::PrivateMedium,
        Preset::PublicMedium,
        Preset::PublicLarge,
    ];

    /// The name written in configs (`private_small`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::PrivateSmall => "private_small",
            Preset::PrivateMedium => "private_medium",
            Preset::PublicMedium => "public_medium",
            Preset::PublicLarge => "public_large",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A preset name that is not one of [`Preset::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown preset {0:?}: expected private_small, private_medium, public_medium or public_large")]
pub struct UnknownPreset(pub String);

impl FromStr for Preset {
    type Err = UnknownPreset;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Preset::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPreset(s.to_owned()))
    }
}

#[derive(Debug, Clone, Copy)]
enum Bound {
    Rate,
    Concurrency,
}

/// One preset limit with its value in each preset (in [`Preset::ALL`] order).
#[derive(Debug, Clone, Copy)]
struct Row {
    side: Side,
    action: &'static str,
    scope: Scope,
    bound: Bound,
    values: [&'static str; 4],
}

const fn per(k: TargetKind) -> Scope {
    Scope::Target(Per::Kind(k))
}

const fn rate(side: Side, action: &'static str, scope: Scope, values: [&'static str; 4]) -> Row {
    Row {
        side,
        action,
        scope,
        bound: Bound::Rate,
        values,
    }
}

const fn cap(side: Side, action: &'static str, scope: Scope, values: [&'static str; 4]) -> Row {
    Row {
        side,
        action,
        scope,
        bound: Bound::Concurrency,
        values,
    }
}

use Side::{Client as C, Federation as F};
use TargetKind::{Ip, Server, User};

/// Every preset limit. Columns: private_small, private_medium, public_medium, public_large.
const ROWS: &[Row] = &[
    rate(C, "registration", per(Ip), ["1/6m", "1/6m", "1/6m", "1/6m"]),
    rate(
        C,
        "registration",
        Scope::Global,
        ["10/1d", "50/1d", "200/1d", "1000/1d"],
    ),
    rate(
        C,
        "registration_token_validity",
        per(Ip),
        ["5/1m", "5/1m", "5/1m", "5/1m"],
    ),
    rate(C, "login", per(Ip), ["10/1m", "10/1m", "10/1m", "10/1m"]),
    rate(
        C,
        "authentication_failure",
        per(Ip),
        ["5/30s", "5/30s", "5/30s", "5/30s"],
    ),
    rate(
        C,
        "request",
        Scope::Target(Per::AnonymousIp),
        ["100/1m", "100/1m", "100/1m", "100/1m"],
    ),
    rate(
        C,
        "request",
        per(User),
        ["1000/1m", "1000/1m", "1000/1m", "1000/1m"],
    ),
    cap(C, "request", per(User), ["4", "4", "4", "4"]),
    rate(C, "send_event", per(User), ["10/1s", "10/1s", "5/1s", "5/1s"]),
    rate(C, "join", per(User), ["10/1m", "10/1m", "6/1m", "6/1m"]),
    rate(C, "invite", per(User), ["20/1d", "10/1d", "5/1d", "5/1d"]),
    rate(
        C,
        "invite",
        Scope::Global,
        ["100/1d", "500/1d", "2000/1d", "10000/1d"],
    ),
    rate(C, "knock", per(User), ["20/1h", "20/1h", "10/1h", "10/1h"]),
    rate(C, "report", per(User), ["20/1h", "20/1h", "10/1h", "10/1h"]),
    rate(C, "create_alias", per(User), ["10/1h", "10/1h", "5/1h", "5/1h"]),
    rate(
        C,
        "media_create",
        per(User),
        ["100MiB/1h", "100MiB/1h", "50MiB/1h", "50MiB/1h"],
    ),
    cap(C, "media_create", per(User), ["4", "4", "4", "4"]),
    rate(
        C,
        "media_download",
        per(Ip),
        ["2GiB/1h", "2GiB/1h", "2GiB/1h", "2GiB/1h"],
    ),
    rate(C, "connection", per(Ip), ["120/1h", "120/1h", "120/1h", "120/1h"]),
    cap(C, "connection", per(Ip), ["20", "30", "50", "50"]),
    rate(
        C,
        "bandwidth",
        per(Ip),
        ["100KiB/1s", "100KiB/1s", "100KiB/1s", "100KiB/1s"],
    ),
    rate(
        F,
        "transaction",
        per(Server),
        ["10/1s", "10/1s", "20/1s", "50/1s"],
    ),
    rate(F, "join", per(Server), ["10/1d", "50/1d", "200/1d", "1000/1d"]),
    rate(F, "knock", per(Server), ["10/1d", "50/1d", "200/1d", "1000/1d"]),
    rate(F, "invite", per(Server), ["10/1d", "50/1d", "200/1d", "1000/1d"]),
    rate(
        F,
        "media_download",
        per(Server),
        ["1GiB/1h", "2GiB/1h", "5GiB/1h", "10GiB/1h"],
    ),
    rate(F, "connection", per(Ip), ["300/1h", "300/1h", "300/1h", "300/1h"]),
    cap(F, "connection", per(Ip), ["20", "30", "50", "100"]),
    rate(F, "outgoing", per(Server), ["20/1s", "20/1s", "50/1s", "100/1s"]),
    rate(F, "outgoing", per(User), ["600/1m", "600/1m", "300/1m", "300/1m"]),
    rate(
        F,
        "outgoing",
        Scope::Global,
        ["100/1s", "200/1s", "1000/1s", "5000/1s"],
    ),
    rate(
        F,
        "outgoing_connection",
        per(Server),
        ["30/1h", "30/1h", "60/1h", "120/1h"],
    ),
    rate(
        F,
        "outgoing_connection",
        Scope::Global,
        ["300/1h", "1000/1h", "5000/1h", "20000/1h"],
    ),
    cap(F, "outgoing_connection", per(Server), ["4", "4", "8", "8"]),
    rate(
        F,
        "outgoing_bandwidth",
        per(Server),
        ["256KiB/1s", "256KiB/1s", "1MiB/1s", "4MiB/1s"],
    ),
    rate(
        F,
        "outgoing_bandwidth",
        Scope::Global,
        ["1MiB/1s", "2MiB/1s", "8MiB/1s", "32MiB/1s"],
    ),
    rate(
        F,
        "request",
        per(Server),
        ["300/1m", "600/1m", "1200/1m", "3000/1m"],
    ),
    rate(
        F,
        "bandwidth",
        per(Ip),
        ["90KiB/1s", "90KiB/1s", "300KiB/1s", "900KiB/1s"],
    ),
];

/// Per-connection bandwidth: `[client, federation]` per preset.
const BANDWIDTH_PER_CONNECTION: [[&str; 4]; 2] = [
    ["10KiB/1s", "10KiB/1s", "10KiB/1s", "10KiB/1s"],
    ["30KiB/1s", "30KiB/1s", "100KiB/1s", "300KiB/1s"],
];

fn parse_rate(s: &str) -> Rate {
    s.parse()
        .unwrap_or_else(|e| unreachable!("preset rate {s:?} is valid (tested): {e}"))
}

/// The preset's limits, in table order.
pub(crate) fn limits(p: Preset) -> Vec<Limit> {
    ROWS.iter()
        .map(|row| {
            let v = row.values[p.index()];
            let kind = match row.bound {
                Bound::Rate => LimitKind::Rate(parse_rate(v)),
                Bound::Concurrency => LimitKind::Concurrency(
                    v.parse()
                        .unwrap_or_else(|e| unreachable!("preset cap {v:?} is valid (tested): {e}")),
                ),
            };
            Limit::new(row.side, row.action, row.scope, kind)
        })
        .collect()
}

/// The preset's per-connection bandwidth: `(client, federation)`.
pub(crate) fn bandwidth_per_connection(p: Preset) -> (Rate, Rate) {
    (
        parse_rate(BANDWIDTH_PER_CONNECTION[0][p.index()]),
        parse_rate(BANDWIDTH_PER_CONNECTION[1][p.index()]),
    )
}

/// The preset's automatic bans: the same in every preset. Ten failed
/// authentications denied within ten minutes ban the address for ten
/// minutes, doubling for repeat offenders up to a day.
pub(crate) fn autobans(_p: Preset) -> Vec<AutobanRule> {
    vec![AutobanRule {
        side: Some(Side::Client),
        action: "authentication_failure".into(),
        per: TargetKind::Ip,
        denials: 10,
        window: Duration::from_secs(600),
        ban: Duration::from_secs(600),
        max_ban: Duration::from_secs(86_400),
        forget_after: Duration::from_secs(86_400),
    }]
}

/// Every preset's limits as an aligned text table: one row per limit, one
/// column per preset. This is what `sluice presets` prints.
pub fn presets_table() -> String {
    let configs: Vec<crate::Config> = Preset::ALL.into_iter().map(crate::Config::from_preset).collect();
    let mut rows: Vec<[String; 5]> = Vec::new();
    let head = |s: &str| -> [String; 5] {
        let mut r: [String; 5] = Default::default();
        r[0] = s.to_owned();
        for (i, p) in Preset::ALL.iter().enumerate() {
            r[i + 1] = p.as_str().to_owned();
        }
        r
    };
    rows.push(head("limit"));
    let Some(first) = configs.first() else {
        return String::new();
    };
    for (i, limit) in first.policy.limits().iter().enumerate() {
        let mut r: [String; 5] = Default::default();
        r[0] = limit.name.to_string();
        for (j, c) in configs.iter().enumerate() {
            r[j + 1] = match c.policy.limits().get(i).map(|l| l.kind) {
                Some(LimitKind::Rate(rate)) => rate.to_string(),
                Some(LimitKind::Concurrency(n)) => n.to_string(),
                None => "-".to_owned(),
            };
        }
        rows.push(r);
    }
    for side in Side::ALL {
        let mut r: [String; 5] = Default::default();
        r[0] = format!("bandwidth.{side}.per_connection");
        for (j, c) in configs.iter().enumerate() {
            r[j + 1] = c
                .bandwidth
                .per_connection(side)
                .map_or_else(|| "-".to_owned(), |r| r.to_string());
        }
        rows.push(r);
    }
    for (i, rule) in first.policy.autobans().iter().enumerate() {
        let mut r: [String; 5] = Default::default();
        let side = rule.side.map_or_else(|| "any".to_owned(), |s| s.to_string());
        r[0] = format!("autoban.{side}.{}.{}", rule.action, rule.per);
        for (j, c) in configs.iter().enumerate() {
            r[j + 1] = c.policy.autobans().get(i).map_or_else(
                || "-".to_owned(),
                |a| {
                    use sluice_core::rate::format_duration as d;
                    format!(
                        "{} in {} -> {}..{}",
                        a.denials,
                        d(a.window),
                        d(a.ban),
                        d(a.max_ban)
                    )
                },
            );
        }
        rows.push(r);
    }
    let mut widths = [0usize; 5];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (k, (w, cell)) in widths.iter().zip(r).enumerate() {
            if k > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::policy::BUILTIN_ACTIONS;

    #[test]
    fn every_preset_value_parses() {
        for p in Preset::ALL {
            assert_eq!(limits(p).len(), ROWS.len());
            bandwidth_per_connection(p);
        }
    }

    #[test]
    fn every_builtin_action_has_a_rate_in_every_preset() {
        for p in Preset::ALL {
            let c = crate::Config::from_preset(p);
            for (side, action, _) in BUILTIN_ACTIONS {
                assert!(
                    c.policy
                        .limits_for(*side, action)
                        .any(|l| matches!(l.kind, LimitKind::Rate(_))),
                    "{p}: no rate limit for {side}.{action}"
                );
            }
        }
    }

    #[test]
    fn presets_follow_the_design_table() {
        let c = crate::Config::from_preset(Preset::PublicMedium);
        let get = |name: &str| {
            c.policy
                .limits()
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.kind)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        let r = |s: &str| LimitKind::Rate(s.parse().unwrap());
        assert_eq!(get("client.target.registration.ip"), r("1/6m"));
        assert_eq!(get("client.global.registration"), r("200/1d"));
        assert_eq!(get("client.target.request.anonymous_ip"), r("100/1m"));
        assert_eq!(get("client.target.request.user"), r("1000/1m"));
        assert_eq!(get("client.concurrent.connection.ip"), LimitKind::Concurrency(50));
        assert_eq!(get("client.concurrent.request.user"), LimitKind::Concurrency(4));
        assert_eq!(
            get("client.concurrent.media_create.user"),
            LimitKind::Concurrency(4)
        );
        assert_eq!(get("federation.target.transaction.server"), r("20/1s"));
        assert_eq!(get("client.target.media_create.user"), r("50MiB/1h"));
        assert_eq!(
            c.bandwidth.federation_per_connection,
            Some("100KiB/1s".parse().unwrap())
        );
        assert_eq!(c.bandwidth.client_per_ip, Some("100KiB/1s".parse().unwrap()));
        assert_eq!(c.policy.autobans().len(), 1);
    }

    #[test]
    fn names_round_trip() {
        for p in Preset::ALL {
            assert_eq!(p.as_str().parse::<Preset>(), Ok(p));
        }
        assert!("huge".parse::<Preset>().is_err());
        assert_eq!(Preset::default(), Preset::PrivateSmall);
    }

    #[test]
    fn table_lists_every_preset_and_limit() {
        let t = presets_table();
        let first = t.lines().next().unwrap();
        for p in Preset::ALL {
            assert!(first.contains(p.as_str()));
        }
        for l in limits(Preset::PrivateSmall) {
            assert!(t.contains(l.name), "{} missing", l.name);
        }
        assert!(t.contains("bandwidth.federation.per_connection"));
        assert!(t.contains("autoban.client.authentication_failure.ip"));
        assert!(t.lines().all(|l| l == l.trim_end()));
    }
}
