//! One request through the gateway, in this order, once its head has kept
//! the framing rules ([`crate::framing`]; a refusal is the client's error):
//!
//! 1. **address**: the client behind trusted proxies ([`crate::forwarded`]);
//! 2. **route**: which actions the request is ([`crate::route`]);
//! 3. **identity**: user, appservice or server ([`crate::identity`]);
//! 4. **limits**: the specific action (checked, or for registration and
//!    login only dry-run), then `request` with a concurrency slot (long
//!    polls take a long-poll slot instead), byte limits up front when the
//!    length is known — any denial answers in the protocol's form;
//! 5. **forward** with rewritten forwarding headers, the body streaming
//!    through its byte meter;
//! 6. **watch the answer**: success charges registration and login, 401/403
//!    charge `authentication_failure` (automatic bans follow the policy),
//!    an accepted credential is remembered, downloads are metered, slots are
//!    held until the response body ends, and upgrades are spliced.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt as _, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use sluice_config::{HttpGateway, HttpProtocol, UserIdentity};
use sluice_core::{Decision, Engine, Mode, Reason, Request as Ask, Side, Target, Targets};
use sluice_server::App;

use crate::body::{self, Charger, Held, IdleLimited, Metered, ProxyBody, Verdict};
use crate::deadline::Deadline;
use crate::forwarded::{self, Origin};
use crate::framing;
use crate::front;
use crate::h1;
use crate::identity::{self, Credential, TtlCache};
use crate::respond;
use crate::route::{self, Charge, Cost, Route};
use crate::upstream::{Lent, Upstream};
use crate::GatewayError;

/// How long a confirmed identity is remembered.
const IDENTITY_TTL: Duration = Duration::from_secs(600);
/// Identities remembered at most (each cache).
const IDENTITY_CAPACITY: usize = 100_000;
/// Largest 401 body read to tell a user-interactive challenge from a failure.
const CHALLENGE_MAX: usize = 64 * 1024;

/// What `/metrics` counts per gateway.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Count {
    Forwarded,
    Denied,
    UpstreamErrors,
    AuthFailures,
    Whoami,
    /// Requests refused or failed for the client's own fault: a framing
    /// refusal, a request body that broke off or timed out (as pingora's
    /// errors record who is at fault, so that the client's errors do not
    /// read as the upstream's).
    ClientErrors,
}

/// Counters for `/metrics`, striped per thread (every request adds one).
#[derive(Debug, Default)]
pub(crate) struct Counters(sluice_server::Striped<6>);

impl Counters {
    pub(crate) fn add(&self, c: Count) {
        self.0.add(c as usize);
    }

    pub(crate) fn get(&self, c: Count) -> u64 {
        self.0.get(c as usize)
    }
}

pub(crate) struct Shared {
    pub app: App,
    pub cfg: HttpGateway,
    pub base: String,
    pub appservices: HashMap<String, Target>,
    pub key: foldhash::quality::RandomState,
    /// Token hash → user (None: the upstream refused the token).
    pub whoami: TtlCache<u64, Option<Target>>,
    /// Credentials (Basic) and (origin, address) pairs the upstream accepted.
    pub verified: TtlCache<u64, ()>,
    pub long_polls: Slots,
    /// Registrations in flight per address (at most one: see [`Gateway::handle`]).
    pub registering: Slots,
    pub counters: Counters,
    pub tls: bool,
}

/// One HTTP gateway: cheap to clone. The state (caches, counters, long-poll
/// slots) is shared by every clone; the upstream connections are shared by
/// clones, but each worker makes its own with `Gateway::for_worker`, so a
/// worker's requests never wait on another worker's runtime.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) shared: Arc<Shared>,
    /// This worker's connections to the upstream ([`crate::upstream`]).
    pub(crate) upstream: Upstream,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listen", &self.shared.cfg.listen)
            .field("upstream", &self.shared.base)
            .finish_non_exhaustive()
    }
}

/// Who is asking, as the engine sees it.
struct Who {
    targets: Targets,
    /// The same, normalised, for `observe`.
    /// (The address and at most three more: on the stack.)
    list: smallvec::SmallVec<[Target; 4]>,
    credential: Credential,
    /// A Basic credential or federation origin waiting for the upstream's word.
    pending: Option<u64>,
}

/// What a request borrows from its connection.
pub(crate) struct ConnCtx {
    /// The socket's peer.
    pub peer: SocketAddr,
    /// The connection's per-address lease, if it took one: an upgraded
    /// connection holds it too.
    pub slot: Option<Arc<sluice_core::Guard>>,
    /// The connection's timer for `upstream_timeout` (and the lean
    /// server's head timeout).
    pub deadline: Deadline,
    /// The forwarding fields made for a direct client.
    pub forwarding: Option<Forwarding>,
    /// The connection is on the lean client side ([`crate::front`]): its
    /// requests are bodiless `GET`/`HEAD`s, so [`h1::eligible`] need not
    /// look again. Set once, when that side takes the connection.
    pub lean: bool,
}

impl ConnCtx {
    /// A connection from `peer` to `gw` holding `slot`.
    pub(crate) fn new(gw: &Gateway, peer: SocketAddr, slot: Option<Arc<sluice_core::Guard>>) -> Self {
        Self {
            peer,
            slot,
            // The shortest wait, but no less than 5 s: a tiny
            // `upstream_timeout` would otherwise wake every idle connection
            // that often (shorter waits move the timer instead).
            deadline: Deadline::new(
                gw.shared
                    .cfg
                    .upstream_timeout
                    .min(crate::front::HEAD_TIMEOUT)
                    .max(Duration::from_secs(5)),
            ),
            forwarding: None,
            lean: false,
        }
    }
}

/// The forwarding fields for the upstream, by name (`None`: not sent).
pub(crate) type ForwardingFields = [(HeaderName, Option<HeaderValue>); 4];

/// A direct client's forwarding values (see `Gateway::rewrite_forwarding`).
pub(crate) struct Forwarding {
    host: Option<String>,
    xff: Option<HeaderValue>,
    forwarded: Option<HeaderValue>,
}

/// Counted slots per target, kept by the gateway process (long polls,
/// registrations in flight).
pub(crate) type Slots = Arc<Mutex<HashMap<Target, u32>>>;

/// Takes one of `key`'s `max` slots in `map`, released when dropped.
fn take_slot(map: &Slots, key: Target, max: u32) -> Option<Slot> {
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    let n = m.entry(key.clone()).or_insert(0);
    if *n >= max {
        return None;
    }
    *n += 1;
    Some(Slot {
        map: map.clone(),
        key,
    })
}

/// A slot taken with [`take_slot`], released when dropped.
struct Slot {
    map: Slots,
    key: Target,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

pub(crate) fn synthetic_denial(name: &'static str, retry: Duration) -> Decision {
    Decision {
        allowed: false,
        retry_after: retry,
        reason: Reason::Limited(name),
        limits: Default::default(),
        lease: None,
        banned: None,
    }
}

// Header names as constants: removing by `&str` parses the name each time.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// A `static`: a `const` array would be built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 10] = [
    // `Connection` first (`strip_hop_by_hop` reads its index), then
    // `Keep-Alive`: the two an answer kept as written drops instead of
    // refusing (`h1::parse_head`).
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    // The h2c upgrade's settings, for this hop only (RFC 7540 §3.2.1),
    // even when `Connection` does not name them: no h2c upgrade passes.
    HTTP2_SETTINGS,
];

/// Fields a `Connection` list cannot remove: what the upstream must see
/// as sluice saw it (the host, the credentials identity came from, the
/// body's length).
static END_TO_END: [HeaderName; 3] = [header::HOST, header::AUTHORIZATION, header::CONTENT_LENGTH];

/// A field name's index in [`HOP_BY_HOP`], in any case (a map's names
/// and a raw head's alike): names compared only when their length matches
/// (most fields' names match no hop-by-hop length at all).
pub(crate) fn hop_by_hop_index(name: &[u8]) -> Option<usize> {
    let candidates: &[usize] = match name.len() {
        2 => &[3],
        7 => &[4, 6],
        10 => &[0, 1],
        14 => &[9],
        16 => &[2],
        17 => &[5],
        18 => &[7],
        19 => &[8],
        _ => return None,
    };
    candidates
        .iter()
        .copied()
        .find(|&i| name.eq_ignore_ascii_case(HOP_BY_HOP[i].as_str().as_bytes()))
}

fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Usually there are none: one pass over the (few) fields, noting which
    // hop-by-hop names are there, instead of a hashed removal per name.
    let mut present = [false; HOP_BY_HOP.len()];
    for k in h.keys() {
        if let Some(i) = hop_by_hop_index(k.as_str().as_bytes()) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    if present[0] {
        // `Connection` (HOP_BY_HOP[0]) may name more fields to remove. Its
        // usual tokens name none: `close`, `keep-alive` (a field removed
        // anyway), `upgrade`.
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.is_empty() && !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive")
            })
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for n in named {
            let kept = END_TO_END.contains(&n) || (keep_upgrade && n == header::UPGRADE);
            if !kept {
                h.remove(n);
            }
        }
    }
    for (n, there) in HOP_BY_HOP.iter().zip(present) {
        if !there || (keep_upgrade && (n == header::CONNECTION || n == header::UPGRADE)) {
            continue;
        }
        h.remove(n);
    }
    if keep_upgrade && present[0] {
        // An upgrade keeps `Connection`, but only its `upgrade`: a list
        // naming other fields (sluice's forwarding fields among them)
        // would have the next hop remove them.
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether a success answer to a request for `path` proves the request's
/// `X-Matrix` origin or Basic credential: the endpoint authenticates every
/// request (Matrix federation, except its version and OpenID endpoints;
/// JMAP's resources). A generic upstream's endpoints are unknown: nothing
/// is confirmed there, and Basic users count by address.
fn proves_credential(protocol: HttpProtocol, path: &str) -> bool {
    match protocol {
        HttpProtocol::Matrix => {
            path.starts_with("/_matrix/federation/")
                && !path.ends_with("/version")
                && !path.contains("/openid/userinfo")
        }
        HttpProtocol::Jmap => path.starts_with("/jmap") || path.starts_with("/.well-known/jmap"),
        HttpProtocol::Generic => false,
    }
}

/// The most of a body read before deciding ([`read_listed_invites`]): a
/// `createRoom` is a few KiB even with its initial state; a larger one is
/// refused rather than forwarded uncounted (padding must not hide invites).
const LISTED_BODY_MAX: usize = 1024 * 1024;

/// A refusal of the client's own input: status, Matrix `errcode`, text.
type ClientError = (StatusCode, &'static str, &'static str);

/// Reads a Matrix `createRoom` body (at most [`LISTED_BODY_MAX`], with
/// `timeout` for each silence) and counts the invites it lists (`invite`,
/// `invite_3pid`). A body that is not JSON is refused as Synapse would
/// refuse it (`M_NOT_JSON`): one sluice cannot read must not pass
/// uncounted (Python's parser takes `NaN` that serde_json does not; a
/// repeated key is the last one for both, as in `serde_json::Value`).
async fn read_listed_invites(
    body: ProxyBody,
    timeout: Duration,
) -> Result<(hyper::body::Bytes, u64), ClientError> {
    let body = IdleLimited::new(body, timeout);
    let bytes = match Limited::new(body, LISTED_BODY_MAX).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                "the request body is too large",
            ));
        }
        Err(_) => {
            return Err((
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "the request body could not be read",
            ));
        }
    };
    if bytes.is_empty() {
        return Ok((bytes, 0));
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "M_NOT_JSON",
            "the request body is not JSON",
        ));
    };
    let listed = |k: &str| v.get(k).and_then(serde_json::Value::as_array).map_or(0, Vec::len);
    let n = listed("invite") + listed("invite_3pid");
    Ok((bytes, u64::try_from(n).unwrap_or(u64::MAX)))
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

impl Gateway {
    /// A gateway for `cfg`, deciding with `app`'s engine. Reads the
    /// appservice token files.
    pub fn new(app: App, cfg: HttpGateway) -> Result<Self, GatewayError> {
        let base = cfg.upstream.trim_end_matches('/').to_owned();
        let upstream = Upstream::new(&base, cfg.upstream_ca.as_deref())?;
        let mut appservices = HashMap::new();
        for a in &cfg.appservices {
            let token = std::fs::read_to_string(&a.token_file)
                .map_err(|e| GatewayError::File(a.token_file.clone(), e))?
                .trim()
                .to_owned();
            if token.is_empty() {
                return Err(GatewayError::File(
                    a.token_file.clone(),
                    std::io::Error::other("empty token file"),
                ));
            }
            let target = Target::appservice(&a.id)
                .map_err(|e| GatewayError::File(a.token_file.clone(), std::io::Error::other(e)))?;
            appservices.insert(token, target);
        }
        let tls = cfg.tls_cert.is_some();
        Ok(Self {
            upstream,
            shared: Arc::new(Shared {
                app,
                cfg,
                base,
                appservices,
                key: foldhash::quality::RandomState::default(),
                whoami: TtlCache::new(IDENTITY_CAPACITY, IDENTITY_TTL),
                verified: TtlCache::new(IDENTITY_CAPACITY, IDENTITY_TTL),
                long_polls: Slots::default(),
                registering: Slots::default(),
                counters: Counters::default(),
                tls,
            }),
        })
    }

    /// The same gateway with its own upstream connections, for one worker:
    /// their tasks then run on that worker's runtime, next to the requests
    /// that use them.
    pub(crate) fn for_worker(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            upstream: self.upstream.fresh(),
        }
    }

    fn engine(&self) -> &Engine {
        self.shared.app.engine()
    }

    fn protocol(&self) -> HttpProtocol {
        self.shared.cfg.protocol
    }

    /// Runs one decision and records it in metrics, `top` and logs.
    /// One decision, recorded unless a dry run. On Redis the round trip
    /// is awaited (the worker serves its other connections meanwhile), and
    /// a failing Redis answers `store.on_error` ([`App::decide_async`]).
    async fn decide(&self, who: &Who, side: Side, action: &str, cost: u64, mode: Mode) -> Decision {
        let ask = Ask {
            side,
            action,
            targets: who.targets.clone(),
            cost,
        };
        match self.shared.app.decide_async(&ask, mode).await {
            Ok(d) => {
                if mode != Mode::DryRun {
                    self.shared.app.observe(side, action, &who.list, &d);
                }
                d
            }
            Err(e) => {
                // An unknown action (a rule naming one the policy dropped on
                // reload), or a memory store's error: fail open; the limiter
                // must not take the server down with it. (A failing Redis
                // has answered `on_error` already.)
                tracing::error!(action, "http gateway: {e}");
                Decision::allow()
            }
        }
    }

    fn deny(&self, route: &Route, d: &Decision) -> Response<ProxyBody> {
        self.shared.counters.add(Count::Denied);
        respond::denied(self.protocol(), route.matrix, d)
    }

    /// Refuses a request for its form: the client's error, counted so.
    fn refuse(&self, r: framing::Refusal) -> Response<ProxyBody> {
        self.shared.counters.add(Count::ClientErrors);
        tracing::debug!("http gateway: request refused: {r}");
        r.answer(self.protocol())
    }

    /// Handles one request from `peer`.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let mut ctx = ConnCtx::new(self, peer, None);
        self.handle_hyper(req, &mut ctx).await
    }

    /// Handles one request that hyper's server read.
    pub(crate) async fn handle_hyper(
        &self,
        mut req: Request<Incoming>,
        ctx: &mut ConnCtx,
    ) -> Response<ProxyBody> {
        // Every head the lean side leaves comes here, and every head that
        // may break a framing rule is left (`crate::framing`).
        if let Err(r) = framing::check(req.method(), req.version(), req.headers()) {
            return self.refuse(r);
        }
        // Any other upgrade is removed with the hop-by-hop fields.
        let client_upgrade = framing::websocket(req.method(), req.version(), req.headers())
            .then(|| hyper::upgrade::on(&mut req));
        let (parts, incoming) = req.into_parts();
        let body = if incoming.is_end_stream() {
            body::empty()
        } else {
            // Marked as the client's: a body that breaks off is its error.
            incoming
                .map_err(|e| body::BoxError::new(body::ClientBodyError(e)))
                .boxed()
        };
        let route = self.route(&parts, client_upgrade.is_some());
        self.handle_parts(parts, route, body, client_upgrade, ctx, None)
            .await
    }

    /// Which actions a request is ([`crate::route`]).
    pub(crate) fn route(&self, parts: &hyper::http::request::Parts, upgrade: bool) -> Route {
        route::classify(
            self.protocol(),
            &self.shared.cfg.rules,
            &parts.method,
            parts.uri.path(),
            upgrade,
        )
    }

    /// Handles one request, of `route`, on the connection `ctx` describes.
    /// An upgraded connection outlives the HTTP connection it came from, so
    /// it holds the connection's lease (`ctx.slot`) too.
    ///
    /// `lines`: given by a writer of raw heads (the lean client side,
    /// which empties it before each request). A forwarded answer whose
    /// fields were kept as the upstream wrote them then leaves them there,
    /// with the `RateLimit` fields as lines, and its map holds nothing of
    /// either; without it, everything is in the map.
    pub(crate) async fn handle_parts(
        &self,
        mut parts: hyper::http::request::Parts,
        route: Route,
        client_body: ProxyBody,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        ctx: &mut ConnCtx,
        lines: Option<&mut front::Lines>,
    ) -> Response<ProxyBody> {
        let origin = self.shared.app.with_config(|config| {
            forwarded::resolve(
                ctx.peer.ip(),
                &parts.headers,
                &config.network.trusted_proxies,
                self.shared.cfg.real_ip_header,
            )
        });
        let upgrade = client_upgrade.is_some();
        // Decided now: the path goes upstream with the request.
        let proves = proves_credential(self.protocol(), parts.uri.path());
        if parts
            .headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .nth(1)
            .is_some()
        {
            // A singleton field: with two, sluice and the upstream could each
            // take a different one as the credential.
            return self.refuse(framing::Refusal::TwoAuthorizations);
        }
        let who = self.identify(&parts.headers, &parts.uri, &origin, &route).await;
        // A body that says what the request costs (Matrix `createRoom`'s
        // invites) is read before deciding, and sent on as read.
        let mut client_body = client_body;
        let mut invites = 0;
        if route.invites_in_body {
            match read_listed_invites(client_body, self.shared.cfg.body_timeout).await {
                Ok((bytes, n)) => {
                    invites = n;
                    client_body = body::full(bytes);
                }
                Err((status, errcode, detail)) => {
                    self.shared.counters.add(Count::ClientErrors);
                    return respond::client_error(self.protocol(), status, errcode, detail);
                }
            }
        }

        // Limits. The specific action first: when it denies, `request`
        // has not been charged.
        // Every limit that applied, for the `RateLimit` fields: the first
        // decision, with the later ones' limits added ([`Report::add`]).
        let mut reports = Report::default();
        let mut held: Vec<Held> = Vec::new();
        let declared = content_length(&parts.headers);
        if invites > 0 {
            // Checked first, charged once the request's own action passed:
            // a room refused for its invites costs nothing.
            let d = self
                .decide(&who, route.side, "invite", invites, Mode::DryRun)
                .await;
            if !d.allowed {
                return self.deny(&route, &d);
            }
        }
        if let Some(action) = route.action.as_deref() {
            let d = match (route.charge, route.cost) {
                (Charge::OnSuccess, _) => {
                    if !route.login {
                        // A registration is charged when the upstream says it
                        // succeeded, so steps checked at the same time would
                        // all pass the check before any is charged: one in
                        // flight per address (a client's steps come one after
                        // another anyway).
                        let Some(addr) = who.list.first().cloned() else {
                            return self.deny(
                                &route,
                                &synthetic_denial("gateway.registration_in_flight", Duration::from_secs(1)),
                            );
                        };
                        match take_slot(&self.shared.registering, addr, 1) {
                            Some(slot) => held.push(Box::new(slot)),
                            None => {
                                let d = synthetic_denial(
                                    "gateway.registration_in_flight",
                                    Duration::from_secs(1),
                                );
                                return self.deny(&route, &d);
                            }
                        }
                    }
                    if route.login {
                        // A client that keeps failing cannot keep trying: an
                        // attempt while over the failure limit is one more
                        // failure, and those denials lead to a ban.
                        let f = self
                            .decide(&who, Side::Client, "authentication_failure", 1, Mode::DryRun)
                            .await;
                        if !f.allowed {
                            let f = self
                                .decide(&who, Side::Client, "authentication_failure", 1, Mode::Check)
                                .await;
                            return self.deny(&route, &f);
                        }
                    }
                    self.decide(&who, route.side, action, 1, Mode::DryRun).await
                }
                (Charge::Before, Cost::One) => self.decide(&who, route.side, action, 1, Mode::Check).await,
                (Charge::Before, Cost::RequestBytes) => {
                    // A concurrency slot for the upload, then the bytes when
                    // declared (otherwise as they flow).
                    let ask = Ask {
                        side: route.side,
                        action,
                        targets: who.targets.clone(),
                        cost: 1,
                    };
                    match self.shared.app.acquire_guard_async(&ask).await {
                        Ok(Ok(g)) => held.push(Box::new(g)),
                        Ok(Err(d)) => {
                            self.shared.app.observe(route.side, action, &who.list, &d);
                            return self.deny(&route, &d);
                        }
                        Err(e) => tracing::error!(action, "http gateway: {e}"),
                    }
                    match declared {
                        Some(n) => self.decide(&who, route.side, action, n, Mode::Check).await,
                        None => self.decide(&who, route.side, action, 0, Mode::DryRun).await,
                    }
                }
                (Charge::Before, Cost::ResponseBytes) => {
                    self.decide(&who, route.side, action, 1, Mode::DryRun).await
                }
            };
            if !d.allowed {
                return self.deny(&route, &d);
            }
            reports.add(d);
        }
        if invites > 0 {
            let d = self
                .decide(&who, route.side, "invite", invites, Mode::Check)
                .await;
            if !d.allowed {
                return self.deny(&route, &d);
            }
            reports.add(d);
        }
        if route.long_poll {
            let d = self.decide(&who, route.side, "request", 1, Mode::Check).await;
            if !d.allowed {
                return self.deny(&route, &d);
            }
            reports.add(d);
            match self.long_poll_slot(&who) {
                Some(slot) => held.push(Box::new(slot)),
                None => {
                    let d = synthetic_denial("gateway.long_polls_per_account", Duration::from_secs(1));
                    return self.deny(&route, &d);
                }
            }
        } else {
            let ask = Ask {
                side: route.side,
                action: "request",
                targets: who.targets.clone(),
                cost: 1,
            };
            match self.shared.app.acquire_guard_async(&ask).await {
                Ok(Ok(g)) => {
                    self.shared
                        .app
                        .observe(route.side, "request", &who.list, g.decision());
                    let (d, lease) = g.split();
                    reports.add(d);
                    if let Some(g) = lease {
                        held.push(Box::new(g));
                    }
                }
                Ok(Err(d)) => {
                    self.shared.app.observe(route.side, "request", &who.list, &d);
                    return self.deny(&route, &d);
                }
                Err(e) => tracing::error!("http gateway: {e}"),
            }
        }

        // Forward.
        let meter_upload = route.cost == Cost::RequestBytes && declared.is_none() && route.action.is_some();
        let charger = meter_upload.then(|| self.charger(&who, &route));
        // Where the upload's meter leaves a denial, to answer it in the
        // protocol's form.
        let verdict: Option<Verdict> = charger.as_ref().map(|_| Arc::new(Mutex::new(None)));
        let up_body = if client_body.is_end_stream() && charger.is_none() {
            // Nothing to time or meter (a GET): no wrapper to allocate.
            client_body
        } else {
            let mut client_body = client_body;
            if !client_body.is_end_stream() {
                client_body = IdleLimited::new(client_body, self.shared.cfg.body_timeout).boxed();
            }
            Metered::new(client_body, charger, verdict.clone(), Vec::new()).boxed()
        };
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned);
        // Hop-by-hop fields first: a `Connection` naming the forwarding
        // fields must not remove the ones written here.
        strip_hop_by_hop(&mut parts.headers, upgrade);
        // A request from the lean client side with nothing to send is sure
        // to take the lean exchange, which writes the forwarding fields
        // itself (`send`).
        let lean_exchange = ctx.lean && up_body.is_end_stream();
        let extra = self.rewrite_forwarding(
            &mut parts.headers,
            &origin,
            host.as_deref(),
            &mut ctx.forwarding,
            lean_exchange,
        );
        let up_req = Request::from_parts(parts, up_body);
        // A long poll waits as long as the upstream holds it, and an upload
        // as long as its body flows (`body_timeout` bounds its silences);
        // anything else — no body, or a small declared one (an event, a
        // login) — gets `upstream_timeout` to start answering.
        let small = up_req.body().is_end_stream() || declared.is_some_and(|n| n <= 64 * 1024);
        // The upstream's silence between parts of its answer's body is
        // bounded like its silence before the head (long polls aside): a
        // body that stalls must not hold the request's slots for ever.
        let silence = (!route.long_poll).then_some(self.shared.cfg.upstream_timeout);
        let sent = if route.long_poll || !small {
            self.send(up_req, extra.as_ref(), silence).await
        } else {
            match ctx
                .deadline
                .within(
                    self.shared.cfg.upstream_timeout,
                    self.send(up_req, extra.as_ref(), silence),
                )
                .await
            {
                Ok(r) => r,
                Err(_) => {
                    self.shared.counters.add(Count::UpstreamErrors);
                    tracing::warn!(upstream = %self.shared.base, "http gateway: no answer from the upstream within {:?}", self.shared.cfg.upstream_timeout);
                    return respond::upstream_error(
                        self.protocol(),
                        StatusCode::GATEWAY_TIMEOUT,
                        "the upstream did not answer in time",
                    );
                }
            }
        };
        // A lean answer times its own silences (`h1::LeanBody`).
        let mut timed = false;
        let (mut resp, raw) = match sent {
            Ok((r, lent, raw)) => {
                // Back to the worker's stack once the answer has been sent.
                match lent {
                    Some(lent) => held.push(Box::new(lent)),
                    None => timed = true,
                }
                (r, raw)
            }
            Err(e) => {
                let denied = verdict
                    .as_ref()
                    .and_then(|v| v.lock().unwrap_or_else(|p| p.into_inner()).take());
                if let Some(d) = denied {
                    return self.deny(&route, &d);
                }
                if e.caused_by::<body::BodyTimeout>() {
                    self.shared.counters.add(Count::ClientErrors);
                    return respond::upstream_error(
                        self.protocol(),
                        StatusCode::REQUEST_TIMEOUT,
                        "request body timed out",
                    );
                }
                if e.caused_by::<body::ClientBodyError>() {
                    // Answered if the client still reads (hyper writes
                    // nothing to a connection that has gone).
                    return self.refuse(framing::Refusal::Body);
                }
                self.shared.counters.add(Count::UpstreamErrors);
                tracing::warn!(upstream = %self.shared.base, "http gateway: upstream request failed: {e}");
                return respond::upstream_error(
                    self.protocol(),
                    StatusCode::BAD_GATEWAY,
                    "upstream unavailable",
                );
            }
        };
        self.shared.counters.add(Count::Forwarded);
        let status = resp.status();

        // Watch the answer.
        if status == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_upgrade) = client_upgrade {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                if let Some(slot) = ctx.slot.clone() {
                    held.push(Box::new(slot));
                }
                tokio::spawn(async move {
                    let held = held;
                    if let (Ok(c), Ok(u)) = tokio::join!(client_upgrade, upstream_upgrade) {
                        let _ =
                            tokio::io::copy_bidirectional(&mut TokioIo::new(c), &mut TokioIo::new(u)).await;
                    }
                    drop(held);
                });
                let (parts, _) = resp.into_parts();
                return Response::from_parts(parts, body::empty());
            }
        }
        let (mut parts, mut out_body) = resp.into_parts();
        let mut failure = false;
        if status == StatusCode::UNAUTHORIZED && route.matrix {
            // Registration and other user-interactive calls answer 401 with
            // the flows to follow: a step, not a failure. Read it to tell.
            match Limited::new(out_body, CHALLENGE_MAX).collect().await {
                Ok(c) => {
                    let bytes = c.to_bytes();
                    let challenge = serde_json::from_slice::<serde_json::Value>(&bytes)
                        .is_ok_and(|v| v.get("flows").is_some() && v.get("errcode").is_none());
                    failure = !challenge;
                    out_body = body::full(bytes);
                }
                Err(_) => {
                    return respond::upstream_error(
                        self.protocol(),
                        StatusCode::BAD_GATEWAY,
                        "unreadable upstream answer",
                    )
                }
            }
        } else if status == StatusCode::UNAUTHORIZED {
            failure = who.credential != Credential::Anonymous || route.login;
        } else if status == StatusCode::FORBIDDEN {
            failure = route.login;
        }
        if failure {
            self.shared.counters.add(Count::AuthFailures);
            let d = self
                .decide(&who, Side::Client, "authentication_failure", 1, Mode::Check)
                .await;
            reports.add(d);
        } else if let Some(key) = who.pending {
            // Only a success from an endpoint that checks the credential
            // proves it: a 404, a 400 or a public page proves nothing.
            if status.is_success() && proves {
                self.shared.verified.insert(key, ());
            }
        }
        if status.is_success() {
            if let (Some(action), Charge::OnSuccess) = (route.action.as_deref(), route.charge) {
                // Charged now, whatever the bucket says: the account exists.
                let d = self.decide(&who, route.side, action, 1, Mode::Check).await;
                reports.add(d);
            }
        }
        if route.cost == Cost::ResponseBytes && status.is_success() {
            if let Some(action) = route.action.as_deref() {
                let length = match &raw {
                    Some(raw) => raw.content_length(),
                    None => content_length(&parts.headers),
                };
                match length {
                    Some(n) => {
                        let d = self.decide(&who, route.side, action, n, Mode::Check).await;
                        if !d.allowed {
                            return self.deny(&route, &d);
                        }
                        reports.add(d);
                    }
                    None => {
                        // Unknown length: count as it flows; past the limit
                        // the download is cut (the status has gone already).
                        let charger = self.charger(&who, &route);
                        out_body = Metered::new(out_body, Some(charger), None, Vec::new()).boxed();
                    }
                }
            }
        }
        // Fields kept as written have none (`h1::RawFields`).
        strip_hop_by_hop(&mut parts.headers, false);
        match (raw, lines) {
            (Some(raw), Some(lines)) => {
                // Nothing in the map to replace: the gateway's fields go
                // on as lines too.
                lines.upstream = Some(raw);
                if let Some(merged) = reports.merged() {
                    sluice_server::rate_lines(merged, &mut lines.gateway);
                }
            }
            (raw, _) => {
                if let Some(raw) = raw {
                    raw.into_map(&mut parts.headers);
                }
                // Set, not added: they replace any the upstream sent.
                if let Some(merged) = reports.merged() {
                    sluice_server::rate_headers(merged, &mut parts.headers);
                }
            }
        }
        // The upstream's silence between body frames is bounded like its
        // silence before the head (long polls aside): a body that stalls
        // must not hold the request's slots for ever.
        if !route.long_poll && !timed && !out_body.is_end_stream() {
            out_body = IdleLimited::new(out_body, self.shared.cfg.upstream_timeout).boxed();
        }
        if !held.is_empty() {
            // Slots and the connection are held until the last byte has gone.
            out_body = Metered::new(out_body, None, None, held).boxed();
        }
        Response::from_parts(parts, out_body)
    }

    /// Sends `req` (as the client sent its target) to the upstream on this
    /// worker's own connections.
    ///
    /// A `GET` or `HEAD` with no body takes the lean path ([`crate::h1`]);
    /// the rest hyper's client, whose connection comes back as a [`Lent`]
    /// to hold until the response body is done with.
    ///
    /// `extra`: forwarding fields kept out of the map, given only for a
    /// bodiless request from the lean client side, which the first branch
    /// below always takes.
    ///
    /// `silence`: the longest pause allowed inside a lean answer's body
    /// (the caller wraps hyper's answers itself).
    ///
    /// A lean answer's fields may come beside it, kept as the upstream
    /// wrote them ([`h1::RawFields`]; its map is empty then).
    async fn send(
        &self,
        mut req: Request<ProxyBody>,
        extra: Option<&ForwardingFields>,
        silence: Option<Duration>,
    ) -> Result<(Response<ProxyBody>, Option<Lent>, Option<h1::RawFields>), body::BoxError> {
        // The body decides too: hop-by-hop stripping has removed a
        // request's `Transfer-Encoding` by now, but not its chunks.
        if (extra.is_some() || h1::eligible(req.method(), req.headers())) && req.body().is_end_stream() {
            let (parts, _empty) = req.into_parts();
            let extra = extra.map_or(&[][..], |e| &e[..]);
            return self
                .upstream
                .send_lean(&parts, extra, silence)
                .await
                .map(|(r, raw)| (r, None, raw));
        }
        // Origin form (`/path?query`): the upstream's base has no path.
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(pq);
        // Boxed: hyper's client path (bodies, upgrades) has a large future;
        // inline, the lean path's requests would carry and copy its space.
        let (resp, lent) = Box::pin(self.upstream.send(req)).await?;
        Ok((
            resp.map(|b| b.map_err(body::BoxError::new).boxed()),
            Some(lent),
            None,
        ))
    }

    /// A charger for the route's byte action: each call checks `n` bytes.
    fn charger(&self, who: &Who, route: &Route) -> Charger {
        // Shared by every charge of the body: one clone per body, not per
        // frame.
        let ctx = Arc::new((
            self.clone(),
            route.side,
            route.action.clone().unwrap_or_else(|| "request".to_owned()),
            who.targets.clone(),
            who.list.clone(),
        ));
        Box::new(move |n| {
            let ctx = ctx.clone();
            Box::pin(async move {
                let (gw, side, action, targets, list) = &*ctx;
                let ask = Ask {
                    side: *side,
                    action,
                    targets: targets.clone(),
                    cost: n,
                };
                // Awaited: on Redis the worker serves its other connections
                // meanwhile, and a failing Redis answers `on_error`.
                match gw.shared.app.decide_async(&ask, Mode::Check).await {
                    Ok(d) if d.allowed => Ok(()),
                    // Redis failed under `on_error = "deny"`: a body already
                    // flowing is not cut for it (as the TCP gateway's
                    // bandwidth fails open).
                    Ok(d) if sluice_server::store_unavailable(&d) => Ok(()),
                    Ok(d) => {
                        gw.shared.app.observe(*side, action, list, &d);
                        Err(Box::new(d))
                    }
                    // An action the policy no longer has: fail open.
                    Err(_) => Ok(()),
                }
            })
        })
    }

    fn long_poll_slot(&self, who: &Who) -> Option<Slot> {
        let key = who
            .targets
            .user
            .clone()
            .or_else(|| who.targets.appservice.clone())
            .or_else(|| who.list.first().cloned())?;
        take_slot(
            &self.shared.long_polls,
            key,
            self.shared.cfg.long_polls_per_account,
        )
    }

    /// Replaces the forwarding fields of `h` with the gateway's. With
    /// `separate` (a request for the lean exchange) the new ones are
    /// returned instead of inserted: hashing four names into the map, only
    /// to write them out again, was a few per cent of a request.
    fn rewrite_forwarding(
        &self,
        h: &mut HeaderMap,
        origin: &Origin,
        host: Option<&str>,
        cache: &mut Option<Forwarding>,
        separate: bool,
    ) -> Option<ForwardingFields> {
        // As `forwarded::resolve` found it (canonical: a trusted IPv4 proxy
        // reaches a dual-stack listener as `::ffff:a.b.c.d`).
        let trusted_peer = origin.peer_trusted;
        let ours = if self.shared.tls { "https" } else { "http" };
        // Most requests carry neither field: one pass over the (few) names
        // instead of two hashed lookups.
        let (has_proto, has_host) = h.keys().fold((false, false), |(p, o), k| {
            (p || k == X_FORWARDED_PROTO, o || k == X_FORWARDED_HOST)
        });
        let sent_proto = if has_proto && trusted_peer {
            h.get(X_FORWARDED_PROTO).and_then(|v| v.to_str().ok())
        } else {
            None
        };
        let proto = match sent_proto {
            Some("https") => "https",
            Some("http") => "http",
            _ => ours,
        };
        if has_host && !trusted_peer {
            h.remove(X_FORWARDED_HOST);
        }
        let (xff, forwarded, real_ip) = if trusted_peer {
            let xff = HeaderValue::try_from(origin.x_forwarded_for()).ok();
            let real_ip = if origin.chain.as_slice() == [origin.client] {
                xff.clone()
            } else {
                HeaderValue::try_from(origin.client.to_string()).ok()
            };
            let forwarded = HeaderValue::try_from(origin.forwarded(proto, host)).ok();
            (xff, forwarded, real_ip)
        } else {
            // A direct client: its chain is its own address, the same on
            // every request of the connection, and so are the values but
            // for the host. Made once per connection (and host).
            let c = match cache {
                Some(c) if c.host.as_deref() == host => c,
                _ => cache.insert(Forwarding {
                    host: host.map(str::to_owned),
                    xff: HeaderValue::try_from(origin.x_forwarded_for()).ok(),
                    forwarded: HeaderValue::try_from(origin.forwarded(proto, host)).ok(),
                }),
            };
            (c.xff.clone(), c.forwarded.clone(), c.xff.clone())
        };
        let fields = [
            (X_FORWARDED_FOR, xff),
            (FORWARDED, forwarded),
            (X_REAL_IP, real_ip),
            (X_FORWARDED_PROTO, Some(HeaderValue::from_static(proto))),
        ];
        if separate {
            // Written after the request's own fields by the lean exchange:
            // only what a client sent under these names is taken out (one
            // pass over the names; usually nothing).
            if h.keys().any(|k| fields.iter().any(|(n, _)| n == k)) {
                for (n, _) in &fields {
                    h.remove(n);
                }
            }
            return Some(fields);
        }
        for (k, v) in fields {
            // `insert` replaces every value a client sent.
            match v {
                Some(v) => {
                    h.insert(k, v);
                }
                None => {
                    h.remove(k);
                }
            }
        }
        None
    }

    /// Reads who is asking (see [`crate::identity`] for what is believed).
    async fn identify(&self, headers: &HeaderMap, uri: &Uri, origin: &Origin, route: &Route) -> Who {
        let credential = identity::credential(headers, uri.query());
        let (normalizer_ip, _) = self
            .engine()
            .with_policy(|p| (p.normalizer().ip_target(origin.client), ()));
        let mut targets = Targets {
            ip: Some(origin.client),
            ..Targets::default()
        };
        let mut pending = None;
        match &credential {
            Credential::Anonymous => {}
            Credential::Bearer(token) => {
                if let Some(a) = self.shared.appservices.get(token) {
                    targets.appservice = Some(a.clone());
                    targets.user = uri
                        .query()
                        .and_then(|q| identity::query_param(q, "user_id"))
                        .and_then(|u| Target::user(&u).ok());
                } else {
                    targets.user = self.user_of_token(token, origin.client).await;
                }
            }
            Credential::Basic { user, password } => {
                let key = identity::keyed(&self.shared.key, &["basic", user, password]);
                if self.shared.verified.get(&key).is_some() {
                    targets.user = basic_user(user, headers);
                } else {
                    pending = Some(key);
                }
            }
            Credential::XMatrix { origin: server } if route.side == Side::Federation => {
                let net = match &normalizer_ip {
                    Target::Ip(n) => n.network().to_string(),
                    other => other.value(),
                };
                let key = identity::keyed(&self.shared.key, &["x-matrix", server, &net]);
                let claimed = Target::server(server).ok();
                if claimed.is_some() && self.shared.verified.get(&key).is_some() {
                    targets.server = claimed;
                } else {
                    // Unconfirmed: counted as the sending address's server.
                    let literal = match origin.client {
                        IpAddr::V4(_) => net,
                        IpAddr::V6(_) => format!("[{net}]"),
                    };
                    targets.server = Target::server(&literal).ok();
                    if claimed.is_some() {
                        pending = Some(key);
                    }
                }
            }
            Credential::XMatrix { .. } => {}
        }
        let mut list = smallvec::SmallVec::new();
        list.push(normalizer_ip);
        list.extend(
            [&targets.user, &targets.server, &targets.appservice]
                .into_iter()
                .flatten()
                .cloned(),
        );
        Who {
            targets,
            list,
            credential,
            pending,
        }
    }

    async fn user_of_token(&self, token: &str, ip: IpAddr) -> Option<Target> {
        let hash = identity::keyed(&self.shared.key, &["token", token]);
        let pseudonym = || match self.protocol() {
            HttpProtocol::Matrix => Target::user(&format!("@token-{hash:016x}:sluice.invalid")).ok(),
            _ => Target::user(&format!("token-{hash:016x}@sluice.invalid")).ok(),
        };
        if self.protocol() != HttpProtocol::Matrix || self.shared.cfg.user_identity == UserIdentity::TokenHash
        {
            return pseudonym();
        }
        if let Some(known) = self.shared.whoami.get(&hash) {
            return known;
        }
        // An unknown token costs the address one anonymous request: a flood
        // of made-up tokens cannot turn into a flood of whoami calls.
        let lookup = Ask::client("request").ip(ip);
        if self
            .shared
            .app
            .decide_async(&lookup, Mode::Check)
            .await
            .is_ok_and(|d| !d.allowed)
        {
            return pseudonym();
        }
        // Boxed: a lookup is rare (once per token) and its future large.
        match Box::pin(self.whoami(token)).await {
            Ok(user) => {
                self.shared.whoami.insert(hash, user.clone());
                user
            }
            // The upstream could not say: count the token itself.
            Err(()) => pseudonym(),
        }
    }

    /// Asks the upstream who a token belongs to: `Ok(None)` if it refuses it.
    async fn whoami(&self, token: &str) -> Result<Option<Target>, ()> {
        self.shared.counters.add(Count::Whoami);
        // The target alone: `send` joins it to the base.
        let uri = Uri::from_static("/_matrix/client/v3/account/whoami");
        let auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ())?;
        let req = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .header(header::AUTHORIZATION, auth)
            .body(body::empty())
            .map_err(|_| ())?;
        let (resp, _lent, _fields) = tokio::time::timeout(Duration::from_secs(5), self.send(req, None, None))
            .await
            .map_err(|_| ())?
            .map_err(|_| ())?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(());
        }
        let bytes = Limited::new(resp.into_body(), 16 * 1024)
            .collect()
            .await
            .map_err(|_| ())?
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| ())?;
        let user = v.get("user_id").and_then(|u| u.as_str()).ok_or(())?;
        Target::user(user).map(Some).map_err(|_| ())
    }
}

/// A Basic username as a user target: an address as it is, a bare name
/// qualified with the request's host.
fn basic_user(user: &str, headers: &HeaderMap) -> Option<Target> {
    if user.contains('@') {
        return Target::user(user).ok();
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok())?;
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    Target::user(&format!("{user}@{host}")).ok()
}

/// Every limit that applied to a request, for the `RateLimit` fields:
/// the first decision kept (moved in, not collected in a list of
/// half-kilobyte decisions), the later ones' limits added to it.
#[derive(Default)]
struct Report(Option<Decision>);

impl Report {
    fn add(&mut self, d: Decision) {
        let Some(first) = &mut self.0 else {
            self.0 = Some(d);
            return;
        };
        for l in d.limits {
            if !first
                .limits
                .iter()
                .any(|x| x.name == l.name && x.target == l.target)
            {
                first.limits.push(l);
            }
        }
    }

    /// The merged report, if any decision was made. Forwarded: the fields
    /// inform, no `Retry-After`.
    fn merged(&mut self) -> Option<&Decision> {
        let d = self.0.as_mut()?;
        d.allowed = true;
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_names_are_found_by_length_then_name() {
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(n.as_str().as_bytes()), Some(i), "{n}");
        }
        for other in [
            "host",
            "user-agent",
            "content-length",
            "x-upgrade",
            "ratelimit",
            "transfer-encodinx",
        ] {
            let n = HeaderName::from_bytes(other.as_bytes()).unwrap();
            assert_eq!(hop_by_hop_index(n.as_str().as_bytes()), None, "{other}");
        }
    }

    /// An upgrade keeps `Connection: upgrade` and `Upgrade`, nothing else
    /// `Connection` named.
    #[test]
    fn upgrades_keep_only_the_upgrade_token() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, X-Forwarded-For, keep-alive"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("192.0.2.1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert!(!h.contains_key(X_FORWARDED_FOR) && !h.contains_key(KEEP_ALIVE));
        // Without an upgrade, all of it goes.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-a"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
    }
}
