use super::parse::{decode_digest, parse, source, ListFormat};
use super::*;
use proptest::prelude::*;

fn t(s: &str) -> Target {
    s.parse().unwrap()
}

fn lists(sources: Vec<Source>) -> Blocklists {
    Blocklists::new(sources.into_iter().map(Arc::new).collect(), Except::default())
}

fn domains(name: &str, m: DomainMatch, entries: &[&str]) -> Source {
    let mut b = SourceBuilder::new(name, ListAction::Deny).domain_match(m);
    for e in entries {
        b.add_domain(e, None).unwrap();
    }
    b.build()
}

#[test]
fn domains_are_normalised_on_both_sides() {
    let l = lists(vec![domains(
        "l",
        DomainMatch::Exact,
        &["Evil.Example.", "spam.example:5269", "bücher.example"],
    )]);
    for hit in [
        "server:evil.example",
        "server:EVIL.example.",
        "server:spam.example",
        "server:spam.example:8448",
    ] {
        assert!(l.check(Side::Federation, &t(hit)).is_some(), "{hit}");
    }
    // IDNs in A-label form, whichever form each side wrote.
    let h = l
        .check(Side::Federation, &t("server:xn--bcher-kva.example"))
        .unwrap();
    assert_eq!(h.entry, "xn--bcher-kva.example");
    assert!(l
        .check(Side::Federation, &Target::server("BÜCHER.example").unwrap())
        .is_some());
    assert!(
        l.check(Side::Federation, &t("server:a.evil.example")).is_none(),
        "exact"
    );
}

#[test]
fn subdomains_walk_the_labels_and_users_go_through_their_domain() {
    let l = lists(vec![domains(
        "jabberspam",
        DomainMatch::Subdomains,
        &["evil.example"],
    )]);
    let h = l.check(Side::Client, &t("server:a.b.evil.example")).unwrap();
    assert_eq!(h.entry, "evil.example");
    assert!(l.check(Side::Client, &t("server:notevil.example")).is_none());
    assert!(l.check(Side::Client, &t("server:example")).is_none());
    assert!(l
        .check(Side::Client, &t("user:spammer@chat.evil.example"))
        .is_some());
    assert!(l
        .check(Side::Client, &t("user:@spammer:evil.example:8448"))
        .is_some());
    assert!(l.check(Side::Client, &t("user:@fine:example.org")).is_none());
}

#[test]
fn sides_and_actions() {
    let fed = SourceBuilder::new("fed", ListAction::Deny).side(Some(Side::Federation));
    let mut fed = fed;
    fed.add_domain("evil.example", None).unwrap();
    let mut sh = SourceBuilder::new("advisory", ListAction::Shadow);
    sh.add_domain("evil.example", None).unwrap();
    sh.add_domain("grey.example", None).unwrap();
    let l = lists(vec![sh.build(), fed.build()]);
    // Deny wins over an earlier shadow source.
    assert_eq!(
        &*l.check(Side::Federation, &t("server:evil.example"))
            .unwrap()
            .source,
        "fed"
    );
    let h = l.check(Side::Client, &t("server:evil.example")).unwrap();
    assert_eq!((&*h.source, h.action), ("advisory", ListAction::Shadow));
    assert_eq!(l.matches(None, &t("server:evil.example")).len(), 2);
    assert_eq!(l.matches(Some(Side::Client), &t("server:evil.example")).len(), 1);
}

#[test]
fn except_cancels_hits_on_servers_their_users_and_networks() {
    let mut b = SourceBuilder::new("l", ListAction::Deny).domain_match(DomainMatch::Subdomains);
    b.add_domain("example", None).unwrap();
    b.add_network("192.0.2.0/24".parse().unwrap(), None);
    let mut except = Except::default();
    except.add(t("server:friend.example"));
    except.add(t("ip:192.0.2.8/29"));
    let l = Blocklists::new(vec![Arc::new(b.build())], except);
    assert!(l.check(Side::Client, &t("server:friend.example")).is_none());
    assert!(l.check(Side::Client, &t("user:@a:friend.example")).is_none());
    assert!(l.check(Side::Client, &t("server:foe.example")).is_some());
    assert!(l.check(Side::Client, &t("ip:192.0.2.9")).is_none());
    assert!(l.check(Side::Client, &t("ip:192.0.2.1")).is_some());
    // `matches` still shows what the lists say.
    assert_eq!(l.matches(None, &t("server:friend.example")).len(), 1);
}

#[test]
fn networks_report_the_outermost_entry_and_its_reason() {
    let (s, p) = source(
        "drop",
        ListFormat::Cidr,
        b"; Spamhaus DROP List\n1.10.16.0/20 ; SBL256894\n1.10.17.0/24\n2001:db8::/32 ; SBL1\n192.0.2.7\nnot-a-net\n",
    )
    .unwrap();
    assert_eq!((p.entries, p.bad), (4, 1));
    let l = lists(vec![s]);
    let h = l.check(Side::Client, &t("ip:1.10.17.5")).unwrap();
    assert_eq!(
        (h.entry.as_str(), h.reason.as_deref()),
        ("1.10.16.0/20", Some("SBL256894"))
    );
    assert_eq!(
        l.check(Side::Client, &t("ip:2001:db8:1::/64")).unwrap().entry,
        "2001:db8::/32"
    );
    assert_eq!(
        l.check(Side::Client, &t("ip:192.0.2.7")).unwrap().entry,
        "192.0.2.7/32"
    );
    assert!(l.check(Side::Client, &t("ip:192.0.2.8")).is_none());
    // A /64 target overlapping a listed /128 is the listed group.
    let (s, _) = source("one", ListFormat::Cidr, b"2001:db8:5::1\n").unwrap();
    assert!(lists(vec![s])
        .check(Side::Client, &t("ip:2001:db8:5::/64"))
        .is_some());
}

#[test]
fn spamhaus_ndjson() {
    let body = br#"{"cidr":"1.10.16.0/20","sblid":"SBL256894","rir":"apnic"}
{"cidr":"2a06:e480::/29","sblid":"SBL301771","rir":"ripencc"}
{"type":"metadata","timestamp":1700000000,"size":2,"records":2,"copyright":"(c) Spamhaus"}
"#;
    let (s, p) = source("drop", ListFormat::SpamhausJson, body).unwrap();
    assert_eq!((p.entries, p.bad, p.ignored), (2, 0, 1));
    let h = lists(vec![s])
        .check(Side::Client, &t("ip:2a06:e480:1::/64"))
        .unwrap();
    assert_eq!(h.reason.as_deref(), Some("SBL301771"));
    assert!(source("x", ListFormat::SpamhausJson, b"nope\n").is_err());
}

/// SHA-256 known answers: the digests of `example.org` and of
/// `@alice:example.org`, written the two ways lists write them.
const EXAMPLE_ORG_HEX: &str = "bfabc37432958b063360d3ad6461c9c4735ae7f8edd46592a5e0f01452b2e4b5";

#[test]
fn known_answers_for_both_hash_encodings() {
    assert_eq!(hex(&sha256("example.org")), EXAMPLE_ORG_HEX);
    assert_eq!(
        hex(&sha256("abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    // The same digest in base64 (MSC4205), padded and unpadded, and URL-safe.
    let d = decode_digest(EXAMPLE_ORG_HEX).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(d);
    assert_eq!(b64, "v6vDdDKViwYzYNOtZGHJxHNa5/jt1GWSpeDwFFKy5LU=");
    assert_eq!(decode_digest(&b64), Some(d));
    assert_eq!(decode_digest(b64.trim_end_matches('=')), Some(d));
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
    assert_eq!(decode_digest(&url), Some(d));
    assert_eq!(decode_digest("abc"), None);
    assert_eq!(decode_digest(&EXAMPLE_ORG_HEX[..62]), None);
}

#[test]
fn hashed_lists_match_server_names_and_bare_user_ids() {
    let body = format!("{EXAMPLE_ORG_HEX} # spam server\n{}\n", {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(sha256("@bob:good.example"))
    });
    let (s, p) = source("xmppbl", ListFormat::Sha256, body.as_bytes()).unwrap();
    assert_eq!(p.entries, 2);
    let l = lists(vec![s]);
    let h = l.check(Side::Federation, &t("server:Example.org:8448")).unwrap();
    assert_eq!(
        (h.entry.as_str(), h.reason.as_deref()),
        (EXAMPLE_ORG_HEX, Some("spam server"))
    );
    assert!(l
        .check(Side::Client, &t("user:alice@example.org/phone"))
        .is_some());
    assert!(l.check(Side::Client, &t("user:@bob:good.example")).is_some());
    assert!(l.check(Side::Client, &t("user:@carol:good.example")).is_none());
}

fn policy_event(kind: &str, key: &str, content: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"type": kind, "state_key": key, "content": content, "sender": "@mod:example.org", "event_id": "$x"})
}

#[test]
fn matrix_policy_rules() {
    let events = serde_json::json!([
        policy_event(
            "m.policy.rule.server",
            "r1",
            serde_json::json!({"entity": "*.Evil.example", "recommendation": "m.ban", "reason": "spam"})
        ),
        policy_event(
            "m.policy.rule.server",
            "r2",
            serde_json::json!({"entity": "bad?.example", "recommendation": "org.matrix.mjolnir.ban"})
        ),
        policy_event(
            "m.policy.rule.user",
            "r3",
            serde_json::json!({"entity": "@spam*:users.example", "recommendation": "m.ban", "reason": "bot"})
        ),
        policy_event(
            "m.policy.rule.user",
            "r4",
            serde_json::json!({"entity": "@troll:Users.example", "recommendation": "m.ban"})
        ),
        // An allow-style rule for everything: never an exemption, never a ban.
        policy_event(
            "m.policy.rule.server",
            "r5",
            serde_json::json!({"entity": "*", "recommendation": "org.example.allow"})
        ),
        // A ban of everything is refused as malformed.
        policy_event(
            "m.policy.rule.server",
            "r6",
            serde_json::json!({"entity": "*", "recommendation": "m.ban"})
        ),
        // A removed rule.
        policy_event("m.policy.rule.server", "r7", serde_json::json!({})),
        policy_event(
            "m.policy.rule.room",
            "r8",
            serde_json::json!({"entity": "!r:x", "recommendation": "m.ban"})
        ),
        // MSC4205: a hashed server rule.
        policy_event(
            "m.policy.rule.server",
            "r9",
            serde_json::json!({"hashes": {"sha256": "v6vDdDKViwYzYNOtZGHJxHNa5/jt1GWSpeDwFFKy5LU="}, "recommendation": "m.ban"})
        ),
        serde_json::json!({"type": 5}),
    ]);
    let (s, p) = source("policy", ListFormat::MatrixPolicy, events.to_string().as_bytes()).unwrap();
    assert_eq!((p.entries, p.bad, p.ignored), (5, 2, 3), "{p:?}");
    let l = lists(vec![s]);
    let h = l.check(Side::Federation, &t("server:a.EVIL.example")).unwrap();
    assert_eq!(
        (h.entry.as_str(), h.reason.as_deref()),
        ("*.evil.example", Some("spam"))
    );
    assert!(
        l.check(Side::Federation, &t("server:evil.example")).is_none(),
        "anchored"
    );
    assert!(l.check(Side::Federation, &t("server:bad1.example")).is_some());
    assert!(l.check(Side::Federation, &t("server:bad12.example")).is_none());
    assert_eq!(
        l.check(Side::Client, &t("user:@spammer:users.example"))
            .unwrap()
            .entry,
        "@spam*:users.example"
    );
    assert!(
        l.check(Side::Client, &t("user:@Spammer:users.example")).is_none(),
        "localparts as written"
    );
    assert!(l.check(Side::Client, &t("user:@troll:users.example")).is_some());
    assert!(
        l.check(Side::Client, &t("server:example.org")).is_some(),
        "hashed rule"
    );
    assert!(l.check(Side::Client, &t("server:fine.example")).is_none());
    // Only the configured recommendations count.
    let mut b = SourceBuilder::new("p", ListAction::Deny);
    let p = parse(
        ListFormat::MatrixPolicy,
        events.to_string().as_bytes(),
        &["org.example.allow".to_owned()],
        &mut b,
    )
    .unwrap();
    assert_eq!(p.entries, 0, "the `*` allow rule is refused even when accepted");
    assert!(source("p", ListFormat::MatrixPolicy, b"{\"x\":1}").is_err());
}

#[test]
fn html_and_binary_bodies_are_refused_whole() {
    for f in [
        ListFormat::Domains,
        ListFormat::Cidr,
        ListFormat::MatrixPolicy,
        ListFormat::Sha256,
    ] {
        assert!(matches!(
            source("x", f, b"\n  <!DOCTYPE html><html><body>502</body></html>"),
            Err(parse::ParseError::Html)
        ));
        assert!(matches!(
            source("x", f, b"\xff\xfe"),
            Err(parse::ParseError::NotText)
        ));
    }
}

#[test]
fn the_cache_forgets_nothing_that_matters() {
    let l = lists(vec![domains("l", DomainMatch::Exact, &["evil.example"])]);
    let good = t("server:good.example");
    let evil = t("server:evil.example");
    for _ in 0..3 {
        assert!(l.check_cached(Side::Client, &good, 42, true).is_none());
        assert!(l.check_cached(Side::Client, &evil, 43, true).is_some());
    }
    assert_eq!(l.sources()[0].stats().denied(), 3);
}

fn naive_suffix(entries: &[String], m: DomainMatch, name: &str) -> bool {
    entries
        .iter()
        .any(|e| name == e || (m == DomainMatch::Subdomains && name.ends_with(&format!(".{e}"))))
}

proptest! {
    #[test]
    fn suffix_matching_agrees_with_a_naive_oracle(
        entries in proptest::collection::vec("[ab]{1,2}(\\.[ab]{1,2}){0,2}", 1..30),
        probes in proptest::collection::vec("[ab]{1,2}(\\.[ab]{1,2}){0,3}", 1..30),
        sub in any::<bool>(),
    ) {
        let m = if sub { DomainMatch::Subdomains } else { DomainMatch::Exact };
        let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let l = lists(vec![domains("p", m, &refs)]);
        for p in probes.iter().chain(&entries) {
            let got = l.check(Side::Client, &Target::server(p).unwrap()).is_some();
            prop_assert_eq!(got, naive_suffix(&entries, m, p), "{}", p);
        }
    }

    /// What the fuzz target `blocklist_source` does, on stable: any body,
    /// any format, never a panic.
    #[test]
    fn any_body_in_any_format_parses_or_is_refused(
        f in 0usize..5,
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        text in "[ -~\n]{0,256}",
    ) {
        use super::parse::{source, ListFormat::*};
        let format = [Domains, Cidr, SpamhausJson, Sha256, MatrixPolicy][f];
        let _ = source("fuzz", format, &body);
        let _ = source("fuzz", format, text.as_bytes());
    }
}
