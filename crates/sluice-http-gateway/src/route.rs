//! Endpoint → action tables: what a request is, from its method and path.
//!
//! Every request is the `request` action of its side; some are also a
//! specific action (`send_event`, `join`, `media_create`, …). The Matrix
//! tables are Synapse's own routes (each row names its servlet; a test
//! against the real Synapse derives every spelling of every route from
//! Synapse's registered regexes and checks this module agrees): any version
//! prefix (`api/v1`, `r0`, `v1`, `v3`, `unstable`, …), every method and
//! transaction-id form that creates the event, empty segments where the
//! server's regexes allow them. Where it cannot know, it fails closed: a
//! path whose tail names a limited action under an unknown prefix, or
//! whose normalised spelling does (decoded escapes, merged slashes, dot
//! segments), counts as that action. Configured rules
//! (`[[gateway.http.rule]]`) are tried first, for every protocol, on the
//! raw and the normalised path.

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
    /// The body lists invites (Matrix `createRoom`'s `invite` and
    /// `invite_3pid`): each one is charged as an `invite`, so a room created
    /// with a hundred invitees costs what a hundred invites cost.
    pub invites_in_body: bool,
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
            invites_in_body: false,
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

    fn invites_in_body(mut self) -> Self {
        self.invites_in_body = true;
        self
    }
}

/// Classifies a request. `upgrade`: the request asks for a protocol upgrade.
///
/// The path is matched as the upstream's router sees it (raw: no decoding,
/// empty segments kept, as Synapse's regexes do), and then, failing closed,
/// as a normalising intermediary or a prefix sluice does not know could make
/// the upstream see it ([`Spellings`]): a request that matches a limited
/// action under any of those spellings counts as that action.
pub fn classify(
    protocol: HttpProtocol,
    rules: &[HttpRule],
    method: &Method,
    path: &str,
    upgrade: bool,
) -> Route {
    let verb = Verb::of(method);
    // The normalised spelling, computed only when a raw match left it
    // needed (a limited request usually matches as it is).
    let normal = std::cell::OnceCell::new();
    let normal = || normal.get_or_init(|| normalize(path)).as_deref();
    let mut route = rules
        .iter()
        .find(|r| rule_matches(r, method, path) || normal().is_some_and(|n| rule_matches(r, method, n)))
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
            HttpProtocol::Matrix => matrix(verb, path, normal),
            HttpProtocol::Jmap => match jmap(verb, path, upgrade) {
                r if r.action.is_some() || r.long_poll => r,
                r => normal().map_or(r, |n| jmap(verb, n, upgrade)),
            },
            HttpProtocol::Generic => Route::new(Side::Client, None),
        });
    route.matrix = protocol == HttpProtocol::Matrix;
    if upgrade {
        // A WebSocket stays open: it must not hold a request slot.
        route.long_poll = true;
    }
    route
}

/// A request method as the tables read it. `HEAD` is `GET` (Synapse and
/// hyper-based servers answer it with the GET handler), and a method in
/// another case (`post`) is read as the method it spells: an upstream that
/// folds case must not see an unlimited `post /login`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Post,
    Put,
    Other,
}

impl Verb {
    fn of(m: &Method) -> Self {
        match *m {
            Method::GET | Method::HEAD => Self::Get,
            Method::POST => Self::Post,
            Method::PUT => Self::Put,
            _ => {
                let s = m.as_str();
                if s.eq_ignore_ascii_case("get") || s.eq_ignore_ascii_case("head") {
                    Self::Get
                } else if s.eq_ignore_ascii_case("post") {
                    Self::Post
                } else if s.eq_ignore_ascii_case("put") {
                    Self::Put
                } else {
                    Self::Other
                }
            }
        }
    }
}

fn rule_matches(r: &HttpRule, method: &Method, path: &str) -> bool {
    if r.method.as_deref().is_some_and(|m| !method_matches(m, method)) {
        return false;
    }
    match r.path.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == r.path,
    }
}

/// A rule's method matches in any case, and a `GET` rule covers `HEAD`
/// (servers answer HEAD with their GET handler): the spellings an upstream
/// may serve as the rule's method.
fn method_matches(rule: &str, method: &Method) -> bool {
    let m = method.as_str();
    rule.eq_ignore_ascii_case(m) || (rule.eq_ignore_ascii_case("GET") && m.eq_ignore_ascii_case("HEAD"))
}

/// The path as an intermediary that normalises could hand it on: percent
/// escapes decoded, empty and `.` segments dropped, `..` applied. `None`
/// when that is the path itself (the usual case: nothing allocated).
///
/// Synapse matches the raw path, so these spellings are not what it serves
/// when it faces sluice directly; but an nginx between sluice and the
/// server (`merge_slashes`, a `proxy_pass` with a URI part) or another
/// server's router may serve them, and counting them costs an honest client
/// nothing.
fn normalize(path: &str) -> Option<String> {
    if !needs_normalizing(path.as_bytes()) {
        return None;
    }
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut n = String::with_capacity(path.len());
    for s in out {
        n.push('/');
        n.push_str(s);
    }
    (n != path).then_some(n)
}

/// Whether [`normalize`] could change `path`: an escape, an empty segment
/// (`//`, a trailing `/`) or a dot segment. One pass: this runs for every
/// request.
fn needs_normalizing(b: &[u8]) -> bool {
    if b.len() > 1 && b.last() == Some(&b'/') {
        return true;
    }
    let mut prev = 0;
    for (i, &c) in b.iter().enumerate() {
        let dot_segment = c == b'.' && matches!(b.get(i + 1), None | Some(b'/' | b'.'));
        if c == b'%' || (prev == b'/' && (c == b'/' || dot_segment)) {
            return true;
        }
        prev = c;
    }
    false
}

/// Path segments: on the stack for the paths clients send.
type Segs<'a> = smallvec::SmallVec<[&'a str; 16]>;

/// How many segments the API version takes: `r0`, `v1`, `v3`, `unstable`
/// (1) or `api/v1` (2, the client API's first prefix, which Synapse still
/// serves for login, events, joins, invites and room creation); 0 when the
/// path does not start with one.
fn version_len(s: &[&str]) -> usize {
    match s {
        ["api", "v1", ..] => 2,
        [v, ..] if is_version(v) => 1,
        _ => 0,
    }
}

/// A Matrix API version segment: `r0`, `v1`, `v3`, `unstable`, …
fn is_version(s: &str) -> bool {
    s == "unstable"
        || (s.len() >= 2
            && matches!(s.as_bytes()[0], b'r' | b'v')
            && s[1..].bytes().all(|b| b.is_ascii_digit()))
}

/// The Matrix APIs, by the prefix their server mounts them at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Client,
    Media,
    Federation,
}

impl Api {
    fn side(self) -> Side {
        match self {
            Self::Client | Self::Media => Side::Client,
            Self::Federation => Side::Federation,
        }
    }

    fn table(self, v: Verb, s: &[&str]) -> Option<Route> {
        match self {
            Self::Client => client_table(v, s),
            Self::Media => media_table(v, s),
            Self::Federation => federation_table(v, s),
        }
    }
}

/// Finds the route of `rest` (the path after the API's prefix): first
/// right after its version, exactly as the server matches; then, failing
/// closed, the same tables at every later segment (an unknown version, an
/// `unstable/<namespace>` prefix: whatever the prefix, the rest of the path
/// names the action).
fn lookup(api: Api, v: Verb, rest: &str) -> Option<Route> {
    let segs: Segs<'_> = rest.split('/').collect();
    let at = version_len(&segs);
    if at > 0 {
        if let Some(r) = api.table(v, &segs[at..]) {
            return Some(r);
        }
    }
    // A trailing slash Synapse tolerates where a regex ends in `/?$`
    // (federation `send/{txnId}/`), and an empty last capture before it.
    let trimmed = match segs.last() {
        Some(&"") => &segs[..segs.len() - 1],
        _ => &segs[..],
    };
    // (The version's own offset was tried above, unless a trailing empty
    // segment was trimmed since.)
    let tried = (trimmed.len() == segs.len()).then_some(at);
    (1..trimmed.len())
        .filter(|&i| Some(i) != tried)
        .find_map(|i| api.table(v, &trimmed[i..]))
}

fn matrix<'a>(v: Verb, path: &str, normal: impl FnOnce() -> Option<&'a str>) -> Route {
    match matrix_route(v, path) {
        Some(r) if r.action.is_some() => r,
        // Failing closed: the normalised spelling's action, if it has one.
        found => match normal().and_then(|n| matrix_route(v, n)) {
            Some(r) if r.action.is_some() => r,
            _ => found.unwrap_or_else(|| Route::new(api_side(path), None)),
        },
    }
}

/// The side of a path no table knows: federation for the server-server and
/// key APIs, client otherwise.
fn api_side(path: &str) -> Side {
    if path.starts_with("/_matrix/federation/") || path.starts_with("/_matrix/key/") {
        Side::Federation
    } else {
        Side::Client
    }
}

fn matrix_route(v: Verb, path: &str) -> Option<Route> {
    let (api, rest) = if let Some(rest) = path.strip_prefix("/_matrix/client/") {
        (Api::Client, rest)
    } else if let Some(rest) = path.strip_prefix("/_matrix/media/") {
        (Api::Media, rest)
    } else if let Some(rest) = path.strip_prefix("/_matrix/federation/") {
        (Api::Federation, rest)
    } else {
        return None;
    };
    lookup(api, v, rest).map(|mut r| {
        r.side = api.side();
        r
    })
}

/// The client API after its version. Each row names the Synapse servlet
/// it comes from (`synapse/rest/client/`; docs/gateway-http.md has the
/// table with Conduit's and Dendrite's routes). Rows are as wide as the
/// servlet's regexes or wider (`..`): a spelling the server does not serve
/// may count, one it serves may not escape.
fn client_table(v: Verb, s: &[&str]) -> Option<Route> {
    use Verb::{Get, Post, Put};
    let r = |a: &str| Route::new(Side::Client, Some(a));
    let write = v == Post || v == Put;
    Some(match s {
        // RegisterRestServlet
        ["register"] if v == Post => r("registration").on_success(),
        // RegistrationTokenValidityRestServlet
        // (its regex leaves the dots unescaped: any character matches them)
        ["register", t, "validity"] if regex_dots(t, "m.login.registration_token") => {
            r("registration_token_validity")
        }
        // LoginRestServlet
        ["login"] if v == Post => r("login").on_success().login(),
        // RoomSendEventRestServlet (POST …/send/{type}, PUT …/send/{type}/{txnId})
        ["rooms", _, "send", _, ..] if write => r("send_event"),
        // RoomStateEventRestServlet
        ["rooms", _, "state", _, ..] if v == Put => r("send_event"),
        // RoomRedactEventRestServlet: a redaction is an event.
        ["rooms", _, "redact", _, ..] if write => r("send_event"),
        // RoomMembershipRestServlet (and its txn form), JoinRoomAliasServlet
        ["rooms", _, "join", ..] | ["join", _, ..] if write => r("join"),
        ["rooms", _, "invite", ..] if write => r("invite"),
        // The other membership changes are events in the room.
        ["rooms", _, "leave" | "ban" | "unban" | "kick", ..] if write => r("send_event"),
        // KnockRoomAliasServlet
        ["knock", _, ..] if write => r("knock"),
        // RoomCreateRestServlet (POST, and PUT …/createRoom/{txnId}): the
        // room's first events, and an invite for each one the body lists.
        ["createRoom"] if v == Post => r("send_event").invites_in_body(),
        ["createRoom", _] if v == Put => r("send_event").invites_in_body(),
        // RoomUpgradeRestServlet: a new room and a tombstone.
        ["rooms", _, "upgrade"] if v == Post => r("send_event"),
        // ProfileFieldRestServlet: a display name or avatar change is a
        // membership event in every room the user is in.
        ["profile", _, "displayname" | "avatar_url"] if v == Put => r("send_event"),
        // ReportEventRestServlet, ReportRoomRestServlet, ReportUserRestServlet
        ["rooms", _, "report", ..] | ["users", _, "report"] if v == Post => r("report"),
        // ClientDirectoryServer
        ["directory", "room", _] if v == Put => r("create_alias"),
        // Authenticated media (Matrix 1.11): DownloadResource, ThumbnailResource
        ["media", "download" | "thumbnail", ..] if v == Get => r("media_download").cost(Cost::ResponseBytes),
        // SyncRestServlet, EventStreamRestServlet; SlidingSyncRestServlet
        // (`unstable/org.matrix.simplified_msc3575/sync`, a POST).
        ["sync"] | ["events"] if v == Get => Route::new(Side::Client, None).long_poll(),
        [ns, "sync"] if v == Post && ns.contains('.') => Route::new(Side::Client, None).long_poll(),
        _ => return None,
    })
}

/// `seg` matches `pattern` as a regex whose `.` are unescaped: each `.`
/// stands for any one character.
fn regex_dots(seg: &str, pattern: &str) -> bool {
    seg.len() == pattern.len() && seg.bytes().zip(pattern.bytes()).all(|(s, p)| p == b'.' || s == p)
}

/// The media repository after its version (`synapse/rest/media/`).
fn media_table(v: Verb, s: &[&str]) -> Option<Route> {
    let create = || Route::new(Side::Client, Some("media_create")).cost(Cost::RequestBytes);
    Some(match s {
        // UploadServlet, AsyncUploadServlet
        ["upload"] if v == Verb::Post => create(),
        ["upload", _, _] if v == Verb::Put => create(),
        // DownloadResource, ThumbnailResource
        ["download" | "thumbnail", ..] if v == Verb::Get => {
            Route::new(Side::Client, Some("media_download")).cost(Cost::ResponseBytes)
        }
        _ => return None,
    })
}

/// The federation API after its version
/// (`synapse/federation/transport/server/federation.py`).
fn federation_table(v: Verb, s: &[&str]) -> Option<Route> {
    let r = |a: &str| Route::new(Side::Federation, Some(a));
    if v != Verb::Put && v != Verb::Get {
        return None;
    }
    let put = v == Verb::Put;
    Some(match s {
        // FederationSendServlet
        ["send", _] if put => r("transaction"),
        // FederationV1SendJoinServlet, FederationV2SendJoinServlet
        ["send_join", _, _] if put => r("join"),
        // FederationV1SendKnockServlet
        ["send_knock", _, _] if put => r("knock"),
        // FederationV1InviteServlet, FederationV2InviteServlet,
        // FederationThirdPartyInviteExchangeServlet (it makes the invite)
        ["invite", _, _] | ["exchange_third_party_invite", _] if put => r("invite"),
        // FederationMediaDownloadServlet, FederationMediaThumbnailServlet
        ["media", "download" | "thumbnail", ..] if !put => r("media_download").cost(Cost::ResponseBytes),
        _ => return None,
    })
}

fn jmap(verb: Verb, path: &str, upgrade: bool) -> Route {
    let segs: Segs<'_> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Servers choose their URLs (the session resource says where); these are
    // the common shapes (Stalwart, Cyrus, Fastmail): `/jmap/upload/{account}/`,
    // `/jmap/download/…`, `/jmap/eventsource/`, `/jmap/ws`.
    let has = |name: &str| segs.contains(&name);
    if verb == Verb::Post && has("upload") {
        return Route::new(Side::Client, Some("media_create")).cost(Cost::RequestBytes);
    }
    if verb == Verb::Get && has("download") {
        return Route::new(Side::Client, Some("media_download")).cost(Cost::ResponseBytes);
    }
    if verb == Verb::Get && (has("eventsource") || (upgrade && has("ws"))) {
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

    fn action(method: &str, path: &str) -> Option<String> {
        m(method, path).action
    }

    #[test]
    fn every_version_prefix() {
        for v in ["r0", "v1", "v3", "unstable", "v4", "api/v1"] {
            let r = m("POST", &format!("/_matrix/client/{v}/register"));
            assert_eq!(r.action.as_deref(), Some("registration"), "{v}");
            assert_eq!(r.charge, Charge::OnSuccess);
        }
        assert_eq!(m("POST", "/_matrix/clientv3/register").action, None);
    }

    /// Finding 1 of the route audit: `api/v1` reached Synapse's login as a
    /// plain request, so wrong passwords were never counted.
    #[test]
    fn api_v1_login_is_a_login() {
        let r = m("POST", "/_matrix/client/api/v1/login");
        assert_eq!(r.action.as_deref(), Some("login"));
        assert!(r.login);
        for path in [
            "/_matrix/client/api/v1/rooms/!r:x/send/m.room.message/t1",
            "/_matrix/client/api/v1/rooms/!r:x/state/m.room.topic",
        ] {
            assert_eq!(action("PUT", path).as_deref(), Some("send_event"), "{path}");
        }
        assert_eq!(
            action("POST", "/_matrix/client/api/v1/join/!r:x").as_deref(),
            Some("join")
        );
        assert_eq!(
            action("POST", "/_matrix/client/api/v1/rooms/!r:x/invite").as_deref(),
            Some("invite")
        );
        assert_eq!(
            action("PUT", "/_matrix/client/api/v1/directory/room/%23a:x").as_deref(),
            Some("create_alias")
        );
    }

    /// Finding 2: the transaction-id forms of join and invite, an empty
    /// txnId too.
    #[test]
    fn txn_forms_of_join_and_invite() {
        for (path, a) in [
            ("/_matrix/client/v3/join/!r:x/t1", "join"),
            ("/_matrix/client/v3/join/!r:x/", "join"),
            ("/_matrix/client/v3/rooms/!r:x/join/t1", "join"),
            ("/_matrix/client/v3/rooms/!r:x/join/", "join"),
            ("/_matrix/client/v3/rooms/!r:x/invite/t1", "invite"),
            ("/_matrix/client/v3/rooms/!r:x/invite/", "invite"),
            ("/_matrix/client/v3/rooms//invite", "invite"),
        ] {
            assert_eq!(action("PUT", path).as_deref(), Some(a), "PUT {path}");
        }
    }

    /// Finding 3: redactions are events; createRoom's invites are invites.
    #[test]
    fn redactions_and_room_creation_are_counted() {
        assert_eq!(
            action("PUT", "/_matrix/client/v3/rooms/!r:x/redact/$e/t1").as_deref(),
            Some("send_event")
        );
        assert_eq!(
            action("POST", "/_matrix/client/v3/rooms/!r:x/redact/$e").as_deref(),
            Some("send_event")
        );
        for (method, path) in [
            ("POST", "/_matrix/client/v3/createRoom"),
            ("PUT", "/_matrix/client/v3/createRoom/t1"),
        ] {
            let r = m(method, path);
            assert_eq!(r.action.as_deref(), Some("send_event"), "{method} {path}");
            assert!(r.invites_in_body, "{method} {path}");
        }
    }

    /// Failing closed: a prefix sluice does not know, an MSC namespace, a
    /// normalising intermediary's spellings, a method in lower case.
    #[test]
    fn unknown_prefixes_and_normalised_spellings_fail_closed() {
        for path in [
            "/_matrix/client/v9/login",
            "/_matrix/client/unstable/org.example.msc9999/login",
            "/_matrix/client/x1/login",
            "/_matrix/client/v3//login",
            "/_matrix/client/v3/./login",
            "/_matrix/client/v3/x/../login",
            "/_matrix/client/v3/logi%6E",
            "/_matrix/client/v3/login/",
        ] {
            assert_eq!(action("POST", path).as_deref(), Some("login"), "{path}");
        }
        assert_eq!(
            action("post", "/_matrix/client/v3/login").as_deref(),
            Some("login")
        );
        assert_eq!(
            action("put", "/_matrix/federation/v1/send/t1").as_deref(),
            Some("transaction")
        );
        // Federation `send/{txnId}/?$`: trailing slash, empty txnId.
        for path in [
            "/_matrix/federation/v1/send/t1/",
            "/_matrix/federation/v1/send/",
            "/_matrix/federation/v1/send//",
        ] {
            assert_eq!(action("PUT", path).as_deref(), Some("transaction"), "{path}");
        }
        // What no table names stays a plain request.
        assert_eq!(action("GET", "/_matrix/client/v3/rooms/!r:x/messages"), None);
        assert_eq!(action("POST", "/_matrix/client/v3/keys/query"), None);
    }

    /// Paths longer than the stack's segments still match.
    #[test]
    fn long_paths_match() {
        let long = "/_matrix/client/v1/media/download/example.org/abc/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15";
        assert_eq!(m("GET", long).action.as_deref(), Some("media_download"));
        let send = "/_matrix/client/v3/rooms/!r:x/send/m.room.message/t/1/2/3/4/5/6";
        assert_eq!(m("PUT", send).action.as_deref(), Some("send_event"));
    }

    #[test]
    fn rule_methods_in_any_case_and_head_for_get() {
        let rules = vec![HttpRule {
            method: Some("GET".into()),
            path: "/api/download*".into(),
            side: Side::Client,
            action: "media_download".into(),
            bytes: true,
            long_poll: false,
        }];
        for (method, path) in [
            ("GET", "/api/download/x"),
            ("HEAD", "/api/download/x"),
            ("get", "/api//download/x"),
            ("GET", "/api/%64ownload/x"),
        ] {
            let method: Method = method.parse().expect("method");
            let r = classify(HttpProtocol::Generic, &rules, &method, path, false);
            assert_eq!(r.action.as_deref(), Some("media_download"), "{method} {path}");
        }
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
