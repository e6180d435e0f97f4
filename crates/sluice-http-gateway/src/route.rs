//! Endpoint → action tables: what a request is, from its method and path.
//!
//! Every request is the `request` action of its side; some are also a
//! specific action (`send_event`, `join`, `media_create`, …). Matrix paths
//! are matched with any version prefix (`r0`, `v1`, `v3`, `unstable`, …),
//! so old and new clients count alike. Configured rules
//! (`[[gateway.http.rule]]`) are tried first, for every protocol.

use hyper::Method;
use sluice_config::{HttpProtocol, HttpRule};
use sluice_core::Side;

/// What the specific action costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// One event.
    One,
    /// The request body's bytes (uploads), counted as they flow.
    RequestBytes,
    /// The response body's bytes (downloads), counted as they flow.
    ResponseBytes,
}

/// When the specific action is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Before forwarding (denied: never reaches the upstream).
    Before,
    /// Checked before forwarding without consuming, charged when the upstream
    /// reports success: registration and login, whose user-interactive steps
    /// answer 401 before the final 200.
    OnSuccess,
}

/// What a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Client or federation.
    pub side: Side,
    /// The action charged besides `request`, if any.
    pub action: Option<String>,
    /// Its cost.
    pub cost: Cost,
    /// When it is charged.
    pub charge: Charge,
    /// A long poll (Matrix `/sync`, JMAP push): it holds a long-poll slot,
    /// not one of the account's request slots.
    pub long_poll: bool,
    /// A login: an upstream 401 or 403 is an authentication failure.
    pub login: bool,
    /// A Matrix route (errors in Matrix's form).
    pub matrix: bool,
}

impl Route {
    fn new(side: Side, action: Option<&str>) -> Self {
        Self {
            side,
            action: action.map(str::to_owned),
            cost: Cost::One,
            charge: Charge::Before,
            long_poll: false,
            login: false,
            matrix: false,
        }
    }

    fn cost(mut self, c: Cost) -> Self {
        self.cost = c;
        self
    }

    fn on_success(mut self) -> Self {
        self.charge = Charge::OnSuccess;
        self
    }

    fn long_poll(mut self) -> Self {
        self.long_poll = true;
        self
    }

    fn login(mut self) -> Self {
        self.login = true;
        self
    }
}

/// Classifies a request. `upgrade`: the request asks for a protocol upgrade.
pub fn classify(
    protocol: HttpProtocol,
    rules: &[HttpRule],
    method: &Method,
    path: &str,
    upgrade: bool,
) -> Route {
    let mut route = rules
        .iter()
        .find(|r| rule_matches(r, method, path))
        .map(|r| {
            // Bytes of the answer for a download, of the request otherwise.
            let cost = match (r.bytes, r.action.as_str()) {
                (false, _) => Cost::One,
                (true, "media_download") => Cost::ResponseBytes,
                (true, _) => Cost::RequestBytes,
            };
            let mut route = Route::new(r.side, Some(&r.action)).cost(cost);
            if r.long_poll {
                route = route.long_poll();
            }
            if r.action == "login" && r.side == Side::Client {
                route = route.login();
            }
            route
        })
        .unwrap_or_else(|| match protocol {
            HttpProtocol::Matrix => matrix(method, path),
            HttpProtocol::Jmap => jmap(method, path, upgrade),
            HttpProtocol::Generic => Route::new(Side::Client, None),
        });
    route.matrix = protocol == HttpProtocol::Matrix;
    if upgrade {
        // A WebSocket stays open: it must not hold a request slot.
        route.long_poll = true;
    }
    route
}

fn rule_matches(r: &HttpRule, method: &Method, path: &str) -> bool {
    if r.method.as_deref().is_some_and(|m| m != method.as_str()) {
        return false;
    }
    match r.path.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == r.path,
    }
}

/// A Matrix API version segment: `r0`, `v1`, `v3`, `unstable`, …
fn is_version(s: &str) -> bool {
    s == "unstable"
        || (s.len() >= 2
            && matches!(s.as_bytes()[0], b'r' | b'v')
            && s[1..].bytes().all(|b| b.is_ascii_digit()))
}

/// Segments of a path looked at: every table pattern names fewer, so a
/// longer path matches only patterns ending in `..`, which read the first
/// ones — the same as if all were kept.
const SEGMENTS: usize = 8;

/// The path after `prefix` and a version segment, split into segments (on
/// the stack: this runs for every request).
fn versioned<'a>(path: &'a str, prefix: &str) -> Option<([&'a str; SEGMENTS], usize)> {
    let rest = path.strip_prefix(prefix)?;
    let mut segs = rest.split('/');
    let version = segs.next()?;
    if !is_version(version) {
        return None;
    }
    let mut out = [""; SEGMENTS];
    let mut n = 0;
    for s in segs.filter(|s| !s.is_empty()).take(SEGMENTS) {
        out[n] = s;
        n += 1;
    }
    Some((out, n))
}

fn matrix(method: &Method, path: &str) -> Route {
    use Side::{Client as C, Federation as F};
    let post = method == Method::POST;
    let put = method == Method::PUT;
    let get = method == Method::GET || method == Method::HEAD;
    if let Some((s, n)) = versioned(path, "/_matrix/client/") {
        let r = |a: &str| Route::new(C, Some(a));
        return match &s[..n] {
            ["register"] if post => r("registration").on_success(),
            ["register", "m.login.registration_token", "validity"] => r("registration_token_validity"),
            ["login"] if post => r("login").on_success().login(),
            ["rooms", _, "send", _, ..] if put || post => r("send_event"),
            ["rooms", _, "state", _, ..] if put => r("send_event"),
            ["join", _] | ["rooms", _, "join"] if post => r("join"),
            ["rooms", _, "invite"] if post => r("invite"),
            ["knock", _] if post => r("knock"),
            ["rooms", _, "report", ..] | ["users", _, "report"] if post => r("report"),
            ["directory", "room", _] if put => r("create_alias"),
            // Authenticated media (Matrix 1.11).
            ["media", "download" | "thumbnail", ..] if get => r("media_download").cost(Cost::ResponseBytes),
            ["sync"] | ["events"] if get => Route::new(C, None).long_poll(),
            _ => Route::new(C, None),
        };
    }
    if let Some((s, n)) = versioned(path, "/_matrix/media/") {
        return match &s[..n] {
            ["upload"] if post => Route::new(C, Some("media_create")).cost(Cost::RequestBytes),
            ["upload", _, _] if put => Route::new(C, Some("media_create")).cost(Cost::RequestBytes),
            ["download" | "thumbnail", ..] if get => {
                Route::new(C, Some("media_download")).cost(Cost::ResponseBytes)
            }
            _ => Route::new(C, None),
        };
    }
    if let Some((s, n)) = versioned(path, "/_matrix/federation/") {
        let r = |a: &str| Route::new(F, Some(a));
        return match &s[..n] {
            ["send", _] if put => r("transaction"),
            ["send_join", _, _] if put => r("join"),
            ["send_knock", _, _] if put => r("knock"),
            ["invite", _, _] if put => r("invite"),
            ["media", "download" | "thumbnail", ..] if get => r("media_download").cost(Cost::ResponseBytes),
            _ => Route::new(F, None),
        };
    }
    if path.starts_with("/_matrix/key/") {
        return Route::new(F, None);
    }
    Route::new(C, None)
}

fn jmap(method: &Method, path: &str, upgrade: bool) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let post = method == Method::POST;
    let get = method == Method::GET || method == Method::HEAD;
    // Servers choose their URLs (the session resource says where); these are
    // the common shapes (Stalwart, Cyrus, Fastmail): `/jmap/upload/{account}/`,
    // `/jmap/download/…`, `/jmap/eventsource/`, `/jmap/ws`.
    let has = |name: &str| segs.contains(&name);
    if post && has("upload") {
        return Route::new(Side::Client, Some("media_create")).cost(Cost::RequestBytes);
    }
    if get && has("download") {
        return Route::new(Side::Client, Some("media_download")).cost(Cost::ResponseBytes);
    }
    if get && (has("eventsource") || (upgrade && has("ws"))) {
        return Route::new(Side::Client, None).long_poll();
    }
    Route::new(Side::Client, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(method: &str, path: &str) -> Route {
        let method: Method = method.parse().expect("method");
        classify(HttpProtocol::Matrix, &[], &method, path, false)
    }

    #[test]
    fn every_version_prefix() {
        for v in ["r0", "v1", "v3", "unstable", "v4"] {
            let r = m("POST", &format!("/_matrix/client/{v}/register"));
            assert_eq!(r.action.as_deref(), Some("registration"), "{v}");
            assert_eq!(r.charge, Charge::OnSuccess);
        }
        assert_eq!(m("POST", "/_matrix/client/x1/register").action, None);
        assert_eq!(m("POST", "/_matrix/clientv3/register").action, None);
    }

    /// Paths longer than the segments kept still match the patterns that
    /// end in `..`, and no exact one.
    #[test]
    fn long_paths_match_as_with_every_segment() {
        let long = "/_matrix/client/v1/media/download/example.org/abc/1/2/3/4/5/6/7";
        assert_eq!(m("GET", long).action.as_deref(), Some("media_download"));
        let send = "/_matrix/client/v3/rooms/!r:x/send/m.room.message/t/1/2/3/4/5/6";
        assert_eq!(m("PUT", send).action.as_deref(), Some("send_event"));
        let not_join = "/_matrix/client/v3/join/a/b/c/d/e/f/g/h/i";
        assert_eq!(m("POST", not_join).action, None);
    }

    #[test]
    fn sync_is_a_long_poll_and_not_an_action() {
        let r = m("GET", "/_matrix/client/v3/sync");
        assert!(r.long_poll);
        assert_eq!(r.action, None);
        assert!(r.matrix);
    }

    #[test]
    fn rules_come_first() {
        let rules = vec![HttpRule {
            method: Some("POST".into()),
            path: "/_matrix/client/v3/sync*".into(),
            side: Side::Client,
            action: "report".into(),
            bytes: false,
            long_poll: false,
        }];
        let r = classify(
            HttpProtocol::Matrix,
            &rules,
            &Method::POST,
            "/_matrix/client/v3/sync/x",
            false,
        );
        assert_eq!(r.action.as_deref(), Some("report"));
        let r = classify(
            HttpProtocol::Generic,
            &rules,
            &Method::GET,
            "/_matrix/client/v3/sync/x",
            false,
        );
        assert_eq!(r.action, None);
        // A rule may mark its route a long poll.
        let rules = vec![HttpRule {
            method: None,
            path: "/events".into(),
            side: Side::Client,
            action: "request".into(),
            bytes: false,
            long_poll: true,
        }];
        let r = classify(HttpProtocol::Generic, &rules, &Method::GET, "/events", false);
        assert!(r.long_poll);
    }
}
