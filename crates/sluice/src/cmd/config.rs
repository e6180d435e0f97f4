//! Configuration commands: `check-config`, `presets`, `explain`.

use std::fmt::Write as _;
use std::process::ExitCode;

use sluice_config::{presets_table, Config, ConfigError, EXIT_CONFIG};
use sluice_core::rate::format_duration;
use sluice_core::{
    Effect, Engine, LimitKind, Mode, Per, Policy, Reason, Request, Scope, Side, Target, Targets,
};

use crate::cli::{CheckConfigArgs, ExplainArgs};

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1))
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `sluice check-config FILE`: `FILE: ok` and a summary, or the error and 64.
pub fn check_config(args: &CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let config = match sluice_config::load(&args.file) {
        Ok(c) => c,
        Err(e) => return Ok(config_failure(&e)),
    };
    println!("{}: ok", args.file.display());
    println!("{}", summary(&config));
    Ok(ExitCode::SUCCESS)
}

/// One line describing a valid configuration.
fn summary(c: &Config) -> String {
    let p = &c.policy;
    let store = match c.store.kind {
        sluice_config::StoreKind::Memory => format!("memory store ({} keys)", c.store.max_keys),
        sluice_config::StoreKind::Redis => "redis store".to_owned(),
    };
    format!(
        "preset {}: {}, {}, {}, {}, {}; {store}; listening on {}",
        c.preset,
        plural(p.limits().len(), "limit", "limits"),
        plural(p.overrides().len(), "override", "overrides"),
        plural(p.autobans().len(), "autoban rule", "autoban rules"),
        plural(
            p.exempt_networks().len() + p.exempt_targets().count(),
            "exemption",
            "exemptions"
        ),
        plural(c.gateway.tcp.len() + c.gateway.http.len(), "gateway", "gateways"),
        c.server.listen,
    )
}

/// `sluice presets`.
pub fn presets() -> anyhow::Result<ExitCode> {
    print!("{}", presets_table());
    Ok(ExitCode::SUCCESS)
}

/// `sluice explain`: which limits apply to a request, nothing consumed.
pub fn explain(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let (config, origin) = match (&args.config, args.preset) {
        (Some(path), _) => match sluice_config::load(path) {
            Ok(c) => (c, path.display().to_string()),
            Err(e) => return Ok(config_failure(&e)),
        },
        (None, Some(p)) => (Config::from_preset(p), "built-in".to_owned()),
        (None, None) => (Config::default(), "built-in (no --config)".to_owned()),
    };
    let policy = config.policy.clone();
    let action = args.action.as_str();
    let Some(default_per) = policy.action(args.side, action) else {
        eprintln!("error: {}", unknown_action(&policy, args.side, action));
        return Ok(ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1)));
    };
    let req = Request {
        side: args.side,
        action,
        targets: Targets {
            ip: args.ip,
            user: args.user.clone(),
            server: args.server.clone(),
            appservice: args.appservice.clone(),
            without_global: false,
        },
        cost: args.cost,
    };
    print!("{}", render(&config, &origin, &req, default_per)?);
    Ok(ExitCode::SUCCESS)
}

fn unknown_action(policy: &Policy, side: Side, action: &str) -> String {
    let other = match side {
        Side::Client => Side::Federation,
        Side::Federation => Side::Client,
    };
    if policy.action(other, action).is_some() {
        return format!("unknown {side} action {action:?}: it is a {other} action (add --side {other})");
    }
    let known: Vec<String> = policy
        .actions()
        .into_iter()
        .filter(|(s, _, _)| *s == side)
        .map(|(_, a, _)| a)
        .collect();
    format!(
        "unknown {side} action {action:?}; {side} actions: {}",
        known.join(", ")
    )
}

fn describe_kind(k: LimitKind) -> String {
    match k {
        LimitKind::Rate(r) => r.to_string(),
        LimitKind::Concurrency(n) => format!("{n} at once"),
    }
}

/// The explanation as text (separate from printing so it is easy to test).
fn render(config: &Config, origin: &str, req: &Request<'_>, default_per: Per) -> anyhow::Result<String> {
    let policy = &config.policy;
    let engine = Engine::in_memory(policy.clone(), 1024);
    let mut out = String::new();
    writeln!(
        out,
        "{} action {:?} (counted per {} unless a limit says otherwise)",
        req.side,
        req.action,
        default_per.as_str()
    )?;
    writeln!(out, "config: {origin}, preset {}", config.preset)?;

    // Rates come from a dry run; concurrency caps are only planned for
    // acquisitions, so a second plan (which touches no store) lists them.
    let plan = engine.plan(req, Mode::DryRun)?;
    let targets: Vec<String> = plan.targets().iter().map(Target::to_string).collect();
    writeln!(
        out,
        "request: {}, cost {}",
        if targets.is_empty() {
            "no targets".to_owned()
        } else {
            targets.join(", ")
        },
        req.cost
    )?;
    if let Some(early) = plan.early() {
        match &early.reason {
            Reason::Exempt(t) => writeln!(
                out,
                "\n{t} is exempt: no limit or ban applies, every such request is allowed"
            )?,
            Reason::Blocked(b) => match &b.list {
                Some(hit) => writeln!(out, "\n{hit}: every such request is denied")?,
                None => {
                    let t = &b.target;
                    let entry = policy.blocked(t).map(ToString::to_string).unwrap_or_default();
                    writeln!(
                        out,
                        "\n{t} is blocked (blocklist entry {entry}): every such request is denied"
                    )?
                }
            },
            Reason::Banned(b) => writeln!(out, "\n{} is banned: {}", b.target, b.reason)?,
            other => writeln!(out, "\ndecided before any limit: {other:?}")?,
        }
        return Ok(out);
    }
    let mut applied = plan.applied();
    let leases = engine.plan(req, Mode::Acquire { ttl: None })?;
    applied.extend(
        leases
            .applied()
            .into_iter()
            .filter(|(_, _, k, _)| matches!(k, LimitKind::Concurrency(_))),
    );

    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut skipped: Vec<(String, String)> = Vec::new();
    let anonymous = req.targets.user.is_none() && req.targets.appservice.is_none();
    for limit in policy.limits_for(req.side, req.action) {
        let Some((_, target, effective, shadow)) = applied.iter().find(|a| a.0 == limit.name) else {
            let why = match limit.scope {
                Scope::Target(Per::AnonymousIp) if req.targets.ip.is_none() => {
                    "the request has no ip".to_owned()
                }
                Scope::Target(Per::AnonymousIp) if !anonymous => {
                    "counts only requests without a user or appservice".to_owned()
                }
                Scope::Target(per) => match plan.targets().iter().find(|t| {
                    Per::Kind(t.kind()) == per
                        || (per == Per::AnonymousIp && t.kind() == sluice_core::TargetKind::Ip)
                }) {
                    Some(t) => match policy.override_for(t, req.action) {
                        Some(o) if o.effect == Effect::Unlimited => {
                            format!("{t} is unlimited by an override ({})", o.matcher)
                        }
                        _ => "not planned".to_owned(),
                    },
                    None => format!("the request has no {}", per.as_str()),
                },
                Scope::Global => "not planned".to_owned(),
            };
            skipped.push((limit.name.to_string(), why));
            continue;
        };
        let mut notes = Vec::new();
        if *effective != limit.kind {
            let by = match limit.scope {
                Scope::Target(_) => policy.override_for(target, req.action),
                Scope::Global => None,
            };
            match by.map(|o| (o.effect, o.matcher.to_string())) {
                Some((Effect::Multiply(f), m)) => notes.push(format!("x{f} by override for {m}")),
                Some((Effect::Replace(_), m)) => notes.push(format!("replaced by override for {m}")),
                _ => {}
            }
            notes.push(format!("configured {}", describe_kind(limit.kind)));
        }
        if let LimitKind::Rate(r) = effective {
            if req.cost > r.burst() {
                notes.push(format!(
                    "cost {} exceeds the bucket ({}): never allowed",
                    req.cost,
                    r.burst()
                ));
            }
        }
        rows.push([
            limit.name.to_string(),
            target.to_string(),
            describe_kind(*effective),
            if *shadow { "shadow" } else { "enforced" }.to_owned(),
            notes.join("; "),
        ]);
    }

    if rows.is_empty() {
        writeln!(out, "\nno limit applies to this request")?;
    } else {
        writeln!(out, "\nlimits that apply:")?;
        let header = ["LIMIT", "TARGET", "RATE", "MODE", "NOTE"].map(str::to_owned);
        out.push_str(&table(std::iter::once(&header).chain(rows.iter())));
    }
    if !skipped.is_empty() {
        writeln!(out, "\nlimits of this action that do not apply:")?;
        for (name, why) in &skipped {
            writeln!(out, "  {name}: {why}")?;
        }
    }
    let rules: Vec<_> = policy
        .autobans()
        .iter()
        .filter(|r| &*r.action == req.action && r.side.is_none_or(|s| s == req.side))
        .collect();
    if !rules.is_empty() {
        writeln!(out, "\nautomatic bans:")?;
        for r in rules {
            let doubling = if r.max_ban > r.ban {
                format!(
                    ", doubling for repeat offenders up to {}",
                    format_duration(r.max_ban)
                )
            } else {
                String::new()
            };
            writeln!(
                out,
                "  {} denials within {} ban the {} for {}{doubling}",
                r.denials,
                format_duration(r.window),
                r.per,
                format_duration(r.ban)
            )?;
        }
    }
    Ok(out)
}

fn table<'a>(rows: impl Iterator<Item = &'a [String; 5]> + Clone) -> String {
    let mut widths = [0usize; 5];
    for r in rows.clone() {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::from(" ");
        for (w, c) in widths.iter().zip(r) {
            line.push(' ');
            line.push_str(c);
            line.extend(std::iter::repeat_n(' ', w + 1 - c.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn explain_text(toml: &str, req: &Request<'_>) -> String {
        let c = sluice_config::parse(toml, "t.toml").unwrap();
        let per = c.policy.action(req.side, req.action).unwrap();
        render(&c, "t.toml", req, per).unwrap()
    }

    #[test]
    fn shows_overrides_and_skipped_limits() {
        let t = explain_text(
            "[[override]]\ntarget = \"ip:10.0.0.0/8\"\nactions = [\"request\"]\nmultiply = 2\n",
            &Request::client("request").ip("10.1.2.3".parse().unwrap()),
        );
        assert!(t.contains("client.target.request.anonymous_ip"), "{t}");
        assert!(t.contains("200/1m"), "{t}");
        assert!(
            t.contains("x2 by override for ip:10.0.0.0/8; configured 100/1m"),
            "{t}"
        );
        assert!(
            t.contains("client.target.request.user: the request has no user"),
            "{t}"
        );
        assert!(
            t.contains("client.concurrent.request.user: the request has no user"),
            "{t}"
        );
    }

    #[test]
    fn shows_concurrency_caps_and_autobans() {
        let t = explain_text(
            "",
            &Request::client("authentication_failure").ip("203.0.113.7".parse().unwrap()),
        );
        assert!(t.contains("client.target.authentication_failure.ip"), "{t}");
        assert!(t.contains("10 denials within 10m ban the ip for 10m"), "{t}");
        let t = explain_text(
            "",
            &Request::client("connection").ip("203.0.113.7".parse().unwrap()),
        );
        assert!(t.contains("client.concurrent.connection.ip"), "{t}");
        assert!(t.contains("20 at once"), "{t}");
    }

    #[test]
    fn exempt_and_blocked() {
        let t = explain_text(
            "[exempt]\nnetworks = [\"192.0.2.0/24\"]\n",
            &Request::client("login").ip("192.0.2.1".parse().unwrap()),
        );
        assert!(t.contains("ip:192.0.2.1 is exempt"), "{t}");
        let t = explain_text(
            "[blocklist]\nservers = [\"evil.example\"]\n",
            &Request::federation("transaction").server(Target::server("evil.example").unwrap()),
        );
        assert!(t.contains("server:evil.example is blocked"), "{t}");
    }

    #[test]
    fn unknown_action_hints_the_side() {
        let p = Config::default().policy;
        assert!(unknown_action(&p, Side::Client, "transaction").contains("--side federation"));
        assert!(unknown_action(&p, Side::Client, "fly").contains("registration"));
    }
}
