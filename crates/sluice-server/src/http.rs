//! The HTTP surface: decision API, health, metrics and the admin API.
//!
//! Layers, outermost first: connection info (peer address) → routing →
//! admin guard (loopback or bearer token, admin routes only) → handler.
//! Every handler reads its body with a size cap and parses it field by field,
//! so malformed input is a 400 naming the field, never a 500.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};
use sluice_core::{Decision, Lease, LimitReport, Mode, Reason, Request as EngineRequest, Target};

use crate::app::{reason_str, App};
use crate::input::{self, FieldError};
use crate::top::TopBy;

/// "Never" on the wire: a year, so naive clients that sleep on
/// `retry_after_ms` or `Retry-After` do not overflow.
const NEVER_MS: u64 = 365 * 86_400_000;

/// A wait in whole milliseconds, rounded up, for `retry_after_ms` fields
/// (`Duration::MAX`, "never", is a year).
pub fn ms(d: Duration) -> u64 {
    if d == Duration::MAX {
        NEVER_MS
    } else {
        u64::try_from(d.as_nanos().div_ceil(1_000_000))
            .unwrap_or(NEVER_MS)
            .min(NEVER_MS)
    }
}

fn secs_ceil(d: Duration) -> u64 {
    ms(d).div_ceil(1000)
}

/// The router for `app`.
pub fn router(app: App) -> Router {
    let admin = Router::new()
        .route("/top", get(admin_top))
        .route("/targets/{target}", get(admin_inspect))
        .route("/bans", get(admin_bans).post(admin_ban))
        .route("/bans/remove", post(admin_unban_many))
        .route("/bans/{target}", delete(admin_unban_one))
        .route("/reload", post(admin_reload))
        .route("/blocklist/check", post(admin_blocklist_check))
        .route("/blocklist/status", get(admin_blocklist_status))
        .route("/blocklist/refresh", post(admin_blocklist_refresh))
        .route_layer(middleware::from_fn_with_state(app.clone(), admin_guard));
    Router::new()
        .route("/v1/check", post(check))
        .route("/v1/acquire", post(acquire))
        .route("/v1/release", post(release))
        .route("/v1/auth", get(auth))
        .route("/v1/echo", post(echo))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .nest("/v1/admin", admin)
        .fallback(not_found)
        .with_state(app)
}

fn bad(app: &App, e: FieldError) -> Response {
    app.inner
        .metrics
        .bad_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": e.message, "field": e.field})),
    )
        .into_response()
}

/// How long a request body may take to arrive: a client trickling one
/// must not hold a connection and a worker's attention for ever.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What is read and dropped of a body declared too large before it is
/// refused, and for how long: answering and closing while the client is
/// still sending makes its socket reset, and the client sees a broken pipe
/// instead of the 400 (nginx's `lingering_close` does the same).
const DRAIN_MAX: u64 = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(1);

async fn body_bytes(app: &App, body: Body) -> Result<axum::body::Bytes, Response> {
    use axum::body::HttpBody as _;
    let limit = app.config().server.max_body_bytes;
    if body.size_hint().lower() > limit as u64 && body.size_hint().lower() <= DRAIN_MAX {
        let mut body = body;
        let drain = std::future::poll_fn(|cx| loop {
            match std::pin::Pin::new(&mut body).poll_frame(cx) {
                std::task::Poll::Ready(Some(Ok(_))) => {}
                std::task::Poll::Ready(_) => return std::task::Poll::Ready(()),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        });
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        return Err(bad(
            app,
            FieldError::new("body", format!("unreadable or larger than {limit} bytes")),
        ));
    }
    match tokio::time::timeout(BODY_TIMEOUT, to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(bad(
            app,
            FieldError::new("body", format!("unreadable or larger than {limit} bytes")),
        )),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            axum::Json(
                json!({"error": format!("the body did not arrive within {BODY_TIMEOUT:?}"), "field": "body"}),
            ),
        )
            .into_response()),
    }
}

fn limit_json(l: &LimitReport) -> Value {
    serde_json::to_value(LimitOut::from(l)).unwrap_or(Value::Null)
}

// Response bodies of the decision path, serialised straight from borrowed
// fields (no intermediate `serde_json::Value` tree). Fields are in
// alphabetical order, as the `Value` maps used to print them.

#[derive(Serialize)]
struct LimitOut<'a> {
    limit: u64,
    name: &'a str,
    outcome: &'static str,
    remaining: u64,
    reset_ms: u64,
    window_ms: Option<u64>,
}

impl<'a> From<&'a LimitReport> for LimitOut<'a> {
    fn from(l: &'a LimitReport) -> Self {
        Self {
            limit: l.limit,
            name: l.name,
            outcome: l.outcome.as_str(),
            remaining: l.remaining,
            reset_ms: ms(l.reset),
            window_ms: l.window.map(ms),
        }
    }
}

struct LimitsOut<'a>(&'a [LimitReport]);

impl Serialize for LimitsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(LimitOut::from))
    }
}

#[derive(Serialize)]
struct BanOut<'a> {
    expires_ms: Option<u64>,
    reason: &'a str,
}

/// Which list refused a request (`/v1/check`'s `blocklist`, present
/// when `reason` is `blocked` by a source).
#[derive(Serialize)]
struct ListOut<'a> {
    source: &'a str,
    entry: &'a str,
    reason: Option<&'a str>,
    action: &'static str,
}

impl<'a> From<&'a sluice_core::blocklist::ListHit> for ListOut<'a> {
    fn from(h: &'a sluice_core::blocklist::ListHit) -> Self {
        Self {
            source: &h.source,
            entry: &h.entry,
            reason: h.reason.as_deref(),
            action: h.action.as_str(),
        }
    }
}

/// The body of `/v1/check`.
#[derive(Serialize)]
struct CheckOut<'a> {
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    ban: Option<BanOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocklist: Option<ListOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<&'a str>,
    limits: LimitsOut<'a>,
    reason: &'static str,
    retry_after_ms: u64,
}

impl<'a> From<&'a Decision> for CheckOut<'a> {
    fn from(d: &'a Decision) -> Self {
        let (limit, ban) = match &d.reason {
            Reason::Limited(name) | Reason::TooLarge(name) => (Some(&**name), None),
            Reason::Banned(b) => (
                None,
                Some(BanOut {
                    expires_ms: b.expires.map(|e| e / 1_000_000),
                    reason: &b.reason,
                }),
            ),
            _ => (None, None),
        };
        let blocklist = match &d.reason {
            Reason::Blocked(b) => b.list.as_ref().map(ListOut::from),
            _ => None,
        };
        Self {
            allowed: d.allowed,
            ban,
            blocklist,
            limit,
            limits: LimitsOut(&d.limits),
            reason: reason_str(d),
            retry_after_ms: ms(d.retry_after),
        }
    }
}

/// The body of `/v1/acquire`.
#[derive(Serialize)]
struct AcquireOut<'a> {
    allowed: bool,
    lease: Option<String>,
    limits: LimitsOut<'a>,
    reason: &'static str,
    retry_after_ms: u64,
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// `Retry-After` and the IETF `RateLimit` / `RateLimit-Policy` fields
/// (draft-ietf-httpapi-ratelimit-headers): one policy item per rate limit,
/// named after the limit, `q` its quota, `w` its window in seconds; `r` the
/// remaining quota and `t` seconds until it is whole again. Shared with the
/// HTTP gateway, which sets them on the routes it limits.
pub fn rate_headers(d: &Decision, h: &mut HeaderMap) {
    if !d.allowed {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs_ceil(d.retry_after)));
    }
    // `"name";r=remaining;t=reset` per limit, on every proxied answer.
    let state = rate_items(d, |l, _| [(";r=", l.remaining), (";t=", secs_ceil(l.reset))]);
    if state.is_empty() {
        return;
    }
    if let (Some(p), Ok(s)) = (policy_value(d), HeaderValue::try_from(state)) {
        h.insert(RATELIMIT_POLICY, p);
        h.insert(RATELIMIT, s);
    }
}

/// The same fields as [`rate_headers`] sets, written
/// as field lines (`name: value` and CRLF) at the end of `out`: for a
/// writer of raw heads (the HTTP gateway's lean client side), which then
/// needs no header map, no value made and checked, no allocation.
pub fn rate_lines(d: &Decision, out: &mut Vec<u8>) {
    if !d.allowed {
        out.extend_from_slice(b"retry-after: ");
        out.extend_from_slice(itoa::Buffer::new().format(secs_ceil(d.retry_after)).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // The policy value is checked once when made: the state names the
    // same limits, and its numbers are digits.
    let Some(policy) = policy_value(d) else { return };
    let mark = out.len();
    out.extend_from_slice(b"ratelimit-policy: ");
    out.extend_from_slice(policy.as_bytes());
    out.extend_from_slice(b"\r\nratelimit: ");
    let state = out.len();
    rate_items_into(d, |l, _| [(";r=", l.remaining), (";t=", secs_ceil(l.reset))], out);
    if out.len() == state {
        out.truncate(mark);
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

/// `"name"` and two `key=value` parameters for each of `d`'s limits with a
/// window, comma-separated; numbers with `itoa`, not the `fmt` machinery
/// (measured in the HTTP gateway's profile).
fn rate_items(d: &Decision, params: impl Fn(&LimitReport, Duration) -> [(&'static str, u64); 2]) -> String {
    let mut out = Vec::with_capacity(64);
    rate_items_into(d, params, &mut out);
    // Policy names and digits: ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// [`rate_items`], appended to `out`.
fn rate_items_into(
    d: &Decision,
    params: impl Fn(&LimitReport, Duration) -> [(&'static str, u64); 2],
    out: &mut Vec<u8>,
) {
    let mut num = itoa::Buffer::new();
    let start = out.len();
    for l in d.limits.iter() {
        let Some(window) = l.window else { continue };
        if out.len() > start {
            out.extend_from_slice(b", ");
        }
        out.push(b'"');
        out.extend_from_slice(l.name.as_bytes());
        out.push(b'"');
        for (key, value) in params(l, window) {
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(num.format(value).as_bytes());
        }
    }
}

/// The `RateLimit-Policy` value for `d`'s limits: `"name";q=limit;w=window`
/// for each. It changes only with the limits that applied, so each thread
/// keeps the last one made and hands out a shared copy while they are the
/// same (on a gateway most answers in a row come from one route): no
/// formatting, checking or allocation per answer.
fn policy_value(d: &Decision) -> Option<HeaderValue> {
    // A limit is its name (a `'static` string of the compiled policy, told
    // apart by address and length), its quota and its window.
    type Key = Vec<(usize, usize, u64, Duration)>;
    thread_local! {
        static LAST: std::cell::RefCell<Option<(Key, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    let limits = || {
        d.limits.iter().filter_map(|l| {
            l.window
                .map(|w| (l.name.as_ptr() as usize, l.name.len(), l.limit, w))
        })
    };
    let make = || {
        let policy = rate_items(d, |l, window| [(";q=", l.limit), (";w=", secs_ceil(window))]);
        HeaderValue::try_from(policy).ok()
    };
    LAST.with(|last| {
        let Ok(mut last) = last.try_borrow_mut() else {
            return make();
        };
        if let Some((key, value)) = last.as_ref() {
            if key.len() == limits().count() && limits().zip(key).all(|(a, b)| a == *b) {
                return Some(value.clone());
            }
        }
        let value = make()?;
        *last = Some((limits().collect(), value.clone()));
        Some(value)
    })
}

fn engine_error(app: &App, e: sluice_core::EngineError) -> Response {
    match e {
        sluice_core::EngineError::UnknownAction { side, action } => bad(
            app,
            FieldError::new("action", format!("unknown {side} action {action:?}")),
        ),
        sluice_core::EngineError::Store(e) => {
            app.inner
                .metrics
                .store_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!("store: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(json!({"error": e.to_string(), "field": null})),
            )
                .into_response()
        }
    }
}

/// A parsed decision request and the targets it names, normalised as the
/// engine will plan them (what `top` and the logs record).
fn parsed(
    app: &App,
    parse: impl FnOnce(&sluice_core::Policy) -> Result<input::Ask, FieldError>,
) -> Result<(input::Ask, Seen), FieldError> {
    app.engine().with_policy(|p| {
        let ask = parse(p)?;
        let t = &ask.targets;
        let mut seen = Seen::with_capacity(4);
        seen.extend(t.ip.map(|ip| p.normalizer().ip_target(ip)));
        seen.extend([&t.user, &t.server, &t.appservice].into_iter().flatten().cloned());
        Ok((ask, seen))
    })
}

/// The targets of one request (at most four).
type Seen = Vec<Target>;

async fn decide(app: App, body: Body, acquire: bool) -> Response {
    let bytes = match body_bytes(&app, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (ask, seen) = match parsed(&app, |p| input::ask(&bytes, p, acquire)) {
        Ok(a) => a,
        Err(e) => return bad(&app, e),
    };
    match run_decision(&app, ask, &seen, acquire).await {
        Ok((d, headers)) => {
            if acquire {
                let body = AcquireOut {
                    allowed: d.allowed,
                    lease: d.lease.map(|l| l.token()),
                    limits: LimitsOut(&d.limits),
                    reason: reason_str(&d),
                    retry_after_ms: ms(d.retry_after),
                };
                (StatusCode::OK, headers, axum::Json(body)).into_response()
            } else {
                (StatusCode::OK, headers, axum::Json(CheckOut::from(&d))).into_response()
            }
        }
        Err(r) => *r,
    }
}

/// `GET /v1/auth?action=…&ip=…`: the check for `auth_request`-style callers
/// (nginx): `204` allowed, `403` denied (nginx treats any other status as an
/// error), with `Retry-After` and the `RateLimit` fields either way.
async fn auth(State(app): State<App>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let (ask, seen) = match parsed(&app, |p| input::ask_query(&q, p)) {
        Ok(a) => a,
        Err(e) => return bad(&app, e),
    };
    match run_decision(&app, ask, &seen, false).await {
        Ok((d, headers)) => {
            let status = if d.allowed {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::FORBIDDEN
            };
            (status, headers).into_response()
        }
        Err(r) => *r,
    }
}

/// Decides one request (plan, store, finish in the engine) and observes it.
async fn run_decision(
    app: &App,
    ask: input::Ask,
    seen: &[Target],
    acquire: bool,
) -> Result<(Decision, HeaderMap), Box<Response>> {
    let req = EngineRequest {
        side: ask.side,
        action: &ask.action,
        targets: ask.targets,
        cost: ask.cost,
    };
    let mode = match (acquire, ask.dry_run) {
        (true, _) => Mode::Acquire { ttl: ask.ttl },
        (false, true) => Mode::DryRun,
        (false, false) => Mode::Check,
    };
    let d = crate::backend::decide(app, &req, mode, false)
        .await
        .map_err(|e| Box::new(engine_error(app, e)))?;
    if !ask.dry_run {
        app.observe(ask.side, &ask.action, seen, &d);
    }
    let mut headers = HeaderMap::new();
    rate_headers(&d, &mut headers);
    Ok((d, headers))
}

async fn check(State(app): State<App>, body: Body) -> Response {
    decide(app, body, false).await
}

async fn acquire(State(app): State<App>, body: Body) -> Response {
    decide(app, body, true).await
}

async fn release(State(app): State<App>, body: Body) -> Response {
    let bytes = match body_bytes(&app, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed = input::object(&bytes).and_then(|m| {
        input::only(&m, "", &["lease"])?;
        let token = input::string(&m, "lease")?;
        Lease::parse_token(token).ok_or_else(|| FieldError::new("lease", "not a lease token"))
    });
    let id = match parsed {
        Ok(id) => id,
        Err(e) => return bad(&app, e),
    };
    match crate::backend::release(&app, id).await {
        Ok(released) => axum::Json(json!({"released": released})).into_response(),
        Err(e) => engine_error(&app, e),
    }
}

/// The HTTP stack's own cost, for load tests: read and parse the body as a
/// check would, answer a fixed JSON object, decide nothing.
async fn echo(State(app): State<App>, body: Body) -> Response {
    let bytes = match body_bytes(&app, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match input::object(&bytes) {
        Ok(_) => axum::Json(json!({"allowed": true, "retry_after_ms": 0, "limits": []})).into_response(),
        Err(e) => bad(&app, e),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(app): State<App>) -> Response {
    crate::backend::refresh_gauges(&app).await;
    let mut text = app.inner.metrics.render(app.gauges());
    app.lists().render_metrics(&app.config().blocklist, &mut text);
    app.render_extra_metrics(&mut text);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../../../docs/openapi.json"),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": "no such endpoint", "field": null})),
    )
        .into_response()
}

/// Admin routes: from a loopback peer, or with `Authorization: Bearer
/// <token>` matching `server.admin_token_file`. Nothing else gets in.
async fn admin_guard(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let loopback = sluice_core::target::canonical_ip(peer.ip()).is_loopback();
    let token = app.inner.admin_token.load_full();
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token_ok = match (token.as_deref(), presented) {
        (Some(expected), Some(given)) => constant_time_eq(expected.as_bytes(), given.as_bytes()),
        _ => false,
    };
    if loopback || token_ok {
        return next.run(req).await;
    }
    tracing::warn!(peer = %app.privacy().show(&Target::Ip(peer.ip().into())), "admin request refused");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(json!({"error": "admin API: loopback or bearer token only", "field": "authorization"})),
    )
        .into_response()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret (tokens are of a known minimum size); contents are.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn ban_json(app: &App, b: &sluice_core::Ban) -> Value {
    json!({
        "target": app.privacy().show(&b.target),
        "reason": &*b.reason,
        "created_ms": b.created / 1_000_000,
        "expires_ms": b.expires.map(|e| e / 1_000_000),
        "source": b.source.as_str(),
    })
}

async fn admin_top(State(app): State<App>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let mut by = TopBy::Denials;
    let mut limit = 20usize;
    for (k, v) in q {
        match (k.as_str(), v.as_str()) {
            ("by", "denials") => by = TopBy::Denials,
            ("by", "requests") => by = TopBy::Requests,
            ("by", _) => return bad(&app, FieldError::new("by", "expected denials or requests")),
            ("limit", n) => match n.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => limit = n,
                _ => {
                    return bad(
                        &app,
                        FieldError::new("limit", "expected an integer from 1 to 1000"),
                    )
                }
            },
            (other, _) => {
                return bad(
                    &app,
                    FieldError::new(other, "unknown parameter; expected by, limit"),
                )
            }
        }
    }
    let privacy = app.privacy();
    let rows: Vec<Value> = app
        .inner
        .top
        .top(by, limit, app.now())
        .into_iter()
        .map(|a| json!({"target": privacy.show(&a.target), "requests": a.requests, "denials": a.denials}))
        .collect();
    axum::Json(json!({
        "by": match by { TopBy::Denials => "denials", TopBy::Requests => "requests" },
        "window_s": 60,
        "targets": rows,
    }))
    .into_response()
}

fn parse_admin_target(app: &App, s: &str, field: &str) -> Result<Target, FieldError> {
    let norm = app.engine().policy().normalizer();
    input::admin_target(s, field, norm, |label| app.resolve_label(label))
}

/// The `{target}` of an admin path: a JSON 400 naming the field when it
/// is not valid percent-encoded UTF-8 (axum's own rejection is plain text).
fn path_target(app: &App, path: Result<Path<String>, PathRejection>) -> Result<Target, FieldError> {
    let Ok(Path(target)) = path else {
        return Err(FieldError::new("target", "not valid percent-encoded UTF-8"));
    };
    parse_admin_target(app, &target, "target")
}

async fn admin_inspect(State(app): State<App>, path: Result<Path<String>, PathRejection>) -> Response {
    let t = match path_target(&app, path) {
        Ok(t) => t,
        Err(e) => return bad(&app, e),
    };
    let policy = app.engine().policy();
    let limits = match crate::backend::inspect(&app, t.clone()).await {
        Ok(l) => l,
        Err(e) => return engine_error(&app, e),
    };
    let ban = app.engine().bans().find(&t, app.now());
    let lists = app.engine().blocklists();
    let held: Vec<Value> = limits
        .iter()
        .map(|l| {
            let mut v = limit_json(l);
            v["kind"] = if l.window.is_some() { "rate" } else { "concurrency" }.into();
            v["shadow"] = l.shadow.into();
            v
        })
        .collect();
    axum::Json(json!({
        "target": app.privacy().show(&t),
        "exempt": policy.is_exempt(&t),
        "blocked": policy.blocked(&t).is_some(),
        "blocklist": {
            "matches": lists.matches(None, &t).iter().map(hit_json).collect::<Vec<_>>(),
            "excepted": lists.except().covers(&t),
        },
        "ban": ban.as_ref().map(|b| ban_json(&app, b)),
        "limits": held,
    }))
    .into_response()
}

async fn admin_bans(State(app): State<App>) -> Response {
    let bans: Vec<Value> = app
        .engine()
        .bans()
        .list(app.now())
        .iter()
        .map(|b| ban_json(&app, b))
        .collect();
    axum::Json(json!({ "bans": bans })).into_response()
}

fn targets_field(app: &App, m: &serde_json::Map<String, Value>) -> Result<Vec<Target>, FieldError> {
    let list = match m.get("targets") {
        Some(Value::Array(a)) if !a.is_empty() && a.len() <= 10_000 => a,
        Some(_) => {
            return Err(FieldError::new(
                "targets",
                "expected an array of 1 to 10000 targets",
            ))
        }
        None => return Err(FieldError::new("targets", "missing")),
    };
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let field = format!("targets[{i}]");
            match v {
                Value::String(s) => parse_admin_target(app, s, &field),
                _ => Err(FieldError::new(&field, "expected a string")),
            }
        })
        .collect()
}

async fn admin_ban(State(app): State<App>, body: Body) -> Response {
    let bytes = match body_bytes(&app, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed = input::object(&bytes).and_then(|m| {
        input::only(&m, "", &["targets", "duration", "reason"])?;
        let targets = targets_field(&app, &m)?;
        let duration = match m.get("duration") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s == "forever" => None,
            Some(Value::String(s)) => Some(
                sluice_core::rate::parse_duration(s)
                    .map_err(|e| FieldError::new("duration", e.to_string()))?,
            ),
            Some(_) => {
                return Err(FieldError::new(
                    "duration",
                    "expected a duration such as \"1h\" or \"forever\"",
                ))
            }
        };
        let reason = match m.get("reason") {
            None | Some(Value::Null) => "banned by operator".to_owned(),
            Some(Value::String(s)) if s.len() <= 1000 => s.clone(),
            Some(_) => {
                return Err(FieldError::new(
                    "reason",
                    "expected a string of at most 1000 bytes",
                ))
            }
        };
        Ok((targets, duration, reason))
    });
    let (targets, duration, reason) = match parsed {
        Ok(p) => p,
        Err(e) => return bad(&app, e),
    };
    let banned: Vec<Value> = targets
        .into_iter()
        .map(|t| {
            let b = app.engine().ban(t, duration, &reason);
            tracing::warn!(target = %app.privacy().show(&b.target), reason = %b.reason, "ban added");
            ban_json(&app, &b)
        })
        .collect();
    app.bans_changed();
    axum::Json(json!({ "banned": banned })).into_response()
}

fn unban(app: &App, targets: Vec<Target>) -> Response {
    let mut removed = Vec::new();
    let mut missing = Vec::new();
    for t in targets {
        match app.engine().unban(&t) {
            Some(b) => removed.push(ban_json(app, &b)),
            None => missing.push(app.privacy().show(&t)),
        }
    }
    app.bans_changed();
    axum::Json(json!({ "removed": removed, "not_banned": missing })).into_response()
}

async fn admin_unban_many(State(app): State<App>, body: Body) -> Response {
    let bytes = match body_bytes(&app, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let parsed = input::object(&bytes).and_then(|m| {
        input::only(&m, "", &["targets"])?;
        targets_field(&app, &m)
    });
    match parsed {
        Ok(t) => unban(&app, t),
        Err(e) => bad(&app, e),
    }
}

async fn admin_unban_one(State(app): State<App>, path: Result<Path<String>, PathRejection>) -> Response {
    match path_target(&app, path) {
        Ok(t) => unban(&app, vec![t]),
        Err(e) => bad(&app, e),
    }
}

async fn admin_reload(State(app): State<App>) -> Response {
    match app.reload() {
        Ok(()) => axum::Json(json!({"reloaded": true})).into_response(),
        Err(e) => bad(&app, FieldError::new("config", e.to_string())),
    }
}

fn hit_json(h: &sluice_core::blocklist::ListHit) -> Value {
    json!({
        "source": &*h.source,
        "entry": h.entry,
        "reason": h.reason.as_deref(),
        "action": h.action.as_str(),
    })
}

/// `{"targets": [...]}` → each target with every source listing it.
async fn admin_blocklist_check(State(app): State<App>, body: Body) -> Response {
    let bytes = match body_bytes(&app, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let targets = match input::object(&bytes).and_then(|m| {
        input::only(&m, "", &["targets"])?;
        targets_field(&app, &m)
    }) {
        Ok(t) => t,
        Err(e) => return bad(&app, e),
    };
    let lists = app.engine().blocklists();
    let results: Vec<Value> = targets
        .iter()
        .map(|t| {
            let hits: Vec<Value> = lists.matches(None, t).iter().map(hit_json).collect();
            json!({
                "target": app.privacy().show(t),
                "listed": !hits.is_empty() && !lists.except().covers(t),
                "excepted": lists.except().covers(t),
                "matches": hits,
            })
        })
        .collect();
    axum::Json(json!({ "results": results })).into_response()
}

fn unix_secs(t: Option<std::time::SystemTime>) -> Option<u64> {
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
}

async fn admin_blocklist_status(State(app): State<App>) -> Response {
    let cfg = app.config();
    let sources: Vec<Value> = app
        .lists()
        .status(&cfg.blocklist)
        .iter()
        .map(|s| {
            json!({
                "name": s.config.name,
                "format": s.config.format.as_str(),
                "action": s.config.action.as_str(),
                "entries": s.set.as_ref().map_or(0, |x| x.len()),
                "bytes": s.set.as_ref().map_or(0, |x| x.bytes()),
                "last_success": unix_secs(s.last_success),
                "last_error": s.last_error,
                "stale": s.stale(),
                "dropped": s.dropped,
                "fetches": s.fetches,
                "denied": s.stats.denied(),
                "shadowed": s.stats.shadowed(),
            })
        })
        .collect();
    axum::Json(json!({ "sources": sources })).into_response()
}

/// `{"name": "…"}` (optional) → re-read that source, or all.
async fn admin_blocklist_refresh(State(app): State<App>, body: Body) -> Response {
    let bytes = match body_bytes(&app, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let name = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match input::object(&bytes).and_then(|m| {
            input::only(&m, "", &["name"])?;
            match m.get("name") {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(n)) => Ok(Some(n.clone())),
                Some(_) => Err(FieldError::new("name", "expected a source name")),
            }
        }) {
            Ok(n) => n,
            Err(e) => return bad(&app, e),
        }
    };
    if let Some(n) = &name {
        if !app.config().blocklist.sources.iter().any(|s| &s.name == n) {
            return bad(&app, FieldError::new("name", format!("no source named {n:?}")));
        }
    }
    app.refresh_now(name.as_deref()).await;
    admin_blocklist_status(State(app)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A client that sent its headers and then nothing of its body.
    struct Silent;

    impl axum::body::HttpBody for Silent {
        type Data = axum::body::Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_is_answered_408() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let text = format!("[server]\nstate_dir = {:?}\n", dir.path().display().to_string());
        let config = sluice_config::parse(&text, "test.toml").expect("a valid config");
        let app =
            App::with_clock(config, std::sync::Arc::new(sluice_core::FakeClock::new())).expect("an app");
        let start = tokio::time::Instant::now();
        let resp = body_bytes(&app, Body::new(Silent))
            .await
            .expect_err("no body came");
        assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(start.elapsed(), BODY_TIMEOUT);
    }
}

#[cfg(test)]
mod rate_header_tests {
    use super::*;
    use sluice_core::{LimitOutcome, LimitReport, Target};

    fn decision(limits: &[(&'static str, u64, u64)]) -> Decision {
        let mut d = Decision::allow();
        for &(name, limit, remaining) in limits {
            d.limits.push(LimitReport {
                name,
                target: Target::user("@a:example.org").expect("a user"),
                limit,
                window: Some(Duration::from_secs(60)),
                remaining,
                reset: Duration::from_secs(2),
                outcome: LimitOutcome::Allowed,
                shadow: false,
            });
        }
        d
    }

    fn fields(d: &Decision) -> (String, String) {
        let mut h = HeaderMap::new();
        rate_headers(d, &mut h);
        let get = |n: &str| {
            h.get(n)
                .map(|v| v.to_str().expect("ascii").to_owned())
                .unwrap_or_default()
        };
        (get("ratelimit-policy"), get("ratelimit"))
    }

    /// The policy value is made once per set of limits and follows any
    /// change of that set; the state is each answer's own.
    #[test]
    fn the_policy_value_follows_the_limits_that_applied() {
        let a = decision(&[("a", 10, 9), ("b", 5, 4)]);
        let (p, s) = fields(&a);
        assert_eq!(p, "\"a\";q=10;w=60, \"b\";q=5;w=60");
        assert_eq!(s, "\"a\";r=9;t=2, \"b\";r=4;t=2");
        let (p2, s2) = fields(&decision(&[("a", 10, 3), ("b", 5, 1)]));
        assert_eq!(p2, p);
        assert_eq!(s2, "\"a\";r=3;t=2, \"b\";r=1;t=2");
        // Another quota, another set, one limit fewer: made anew each time.
        assert_eq!(
            fields(&decision(&[("a", 11, 3), ("b", 5, 1)])).0,
            "\"a\";q=11;w=60, \"b\";q=5;w=60"
        );
        assert_eq!(fields(&decision(&[("a", 11, 3)])).0, "\"a\";q=11;w=60");
        assert_eq!(fields(&decision(&[("c", 11, 3)])).0, "\"c\";q=11;w=60");
        assert_eq!(fields(&decision(&[])), (String::new(), String::new()));
    }

    /// Field lines say what the map gets, line for line.
    #[test]
    fn rate_lines_are_the_fields_as_lines() {
        for limits in [&[("a", 10, 9), ("b", 5, 4)][..], &[("a", 10, 9)], &[]] {
            for (allowed, windowless) in [(true, false), (false, false), (true, true), (false, true)] {
                let mut d = decision(limits);
                if windowless {
                    // A concurrency cap has no window: no item of its own.
                    d.limits.push(LimitReport {
                        name: "cap",
                        target: Target::user("@a:example.org").expect("a user"),
                        limit: 3,
                        window: None,
                        remaining: 1,
                        reset: Duration::ZERO,
                        outcome: LimitOutcome::Allowed,
                        shadow: false,
                    });
                }
                if !allowed {
                    d.allowed = false;
                    d.retry_after = Duration::from_millis(1500);
                }
                let mut h = HeaderMap::new();
                rate_headers(&d, &mut h);
                let mut want = Vec::new();
                for name in ["retry-after", "ratelimit-policy", "ratelimit"] {
                    if let Some(v) = h.get(name) {
                        want.extend_from_slice(
                            format!("{name}: {}\r\n", v.to_str().expect("ascii")).as_bytes(),
                        );
                    }
                }
                let mut out = b"before\r\n".to_vec();
                rate_lines(&d, &mut out);
                assert_eq!(
                    String::from_utf8_lossy(&out[8..]),
                    String::from_utf8_lossy(&want),
                    "{limits:?}, allowed {allowed}"
                );
            }
        }
    }
}
