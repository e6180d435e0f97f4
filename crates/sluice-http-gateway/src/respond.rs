//! Answers in each protocol's own form.
//!
//! - Matrix: `429 {"errcode":"M_LIMIT_EXCEEDED","error":…,"retry_after_ms":…}`
//!   (clients such as matrix-nio and Element wait `retry_after_ms` and
//!   retry); `403 M_FORBIDDEN` for blocklisted or permanently banned
//!   targets; `413 M_TOO_LARGE` for an upload no bucket can ever hold.
//! - JMAP and generic: RFC 9457 `application/problem+json` with the same
//!   statuses (JMAP's request-level `urn:ietf:params:jmap:error:limit` type).
//! - A request refused for its own form (framing): 400 (405 for
//!   `CONNECT`), `M_UNKNOWN` (`M_UNRECOGNIZED`) or a problem, closing the
//!   connection ([`refused`]).
//!
//! Every denial carries `Retry-After` and the IETF `RateLimit` /
//! `RateLimit-Policy` fields of the limits that applied.

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;
use sluice_config::HttpProtocol;
use sluice_core::{Decision, Reason};

use crate::body::{full, ProxyBody};

/// The answer to a denied request.
pub fn denied(protocol: HttpProtocol, matrix_route: bool, d: &Decision) -> Response<ProxyBody> {
    let (status, errcode, text) = match &d.reason {
        Reason::Blocked(_) => (StatusCode::FORBIDDEN, "M_FORBIDDEN", "Blocked".to_owned()),
        Reason::Banned(b) if b.expires.is_none() => {
            (StatusCode::FORBIDDEN, "M_FORBIDDEN", "Banned".to_owned())
        }
        Reason::Banned(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            "Too many requests: temporarily banned".to_owned(),
        ),
        Reason::TooLarge(name) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
            format!("Larger than the limit {name} allows"),
        ),
        Reason::Limited(name) => (
            StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            format!("Too many requests (limit {name})"),
        ),
        Reason::Allowed | Reason::Exempt(_) => (
            StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            "Too many requests".to_owned(),
        ),
    };
    let retry_ms = sluice_server::retry_ms(d.retry_after);
    let limited = status == StatusCode::TOO_MANY_REQUESTS;
    let (body, ctype) = if protocol == HttpProtocol::Matrix || matrix_route {
        let mut v = json!({"errcode": errcode, "error": text});
        if limited {
            v["retry_after_ms"] = retry_ms.into();
        }
        (v, "application/json")
    } else {
        let kind = if protocol == HttpProtocol::Jmap && limited {
            "urn:ietf:params:jmap:error:limit"
        } else {
            "about:blank"
        };
        let mut v = json!({
            "type": kind,
            "status": status.as_u16(),
            "title": status.canonical_reason().unwrap_or("Error"),
            "detail": text,
        });
        if let Reason::Limited(name) | Reason::TooLarge(name) = &d.reason {
            v["limit"] = (*name).into();
        }
        (v, "application/problem+json")
    };
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    if !d.allowed {
        sluice_server::rate_headers(d, resp.headers_mut());
    }
    if !limited {
        resp.headers_mut().remove(hyper::header::RETRY_AFTER);
    }
    resp
}

/// The answer to a client's own unreadable input (a body that is not
/// JSON where the gateway must read it): `status` with Matrix's `errcode`,
/// or a problem.
pub fn client_error(
    protocol: HttpProtocol,
    status: StatusCode,
    errcode: &str,
    detail: &str,
) -> Response<ProxyBody> {
    error(protocol, status, errcode, detail)
}

/// The answer when the upstream cannot be reached or failed mid-way.
pub fn upstream_error(protocol: HttpProtocol, status: StatusCode, detail: &str) -> Response<ProxyBody> {
    error(protocol, status, "M_UNKNOWN", detail)
}

/// The answer to a request refused for its own form (framing, a repeated
/// singleton field): `status` (a 4xx) with Matrix's `errcode` or a
/// problem, and `Connection: close` — the connection is not trusted with
/// another request (`docs/gateway-http.md`, "Framing rules").
pub fn refused(
    protocol: HttpProtocol,
    status: StatusCode,
    errcode: &str,
    detail: &str,
) -> Response<ProxyBody> {
    let mut resp = client_error(protocol, status, errcode, detail);
    resp.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn error(protocol: HttpProtocol, status: StatusCode, errcode: &str, detail: &str) -> Response<ProxyBody> {
    let (body, ctype) = if protocol == HttpProtocol::Matrix {
        (json!({"errcode": errcode, "error": detail}), "application/json")
    } else {
        (
            json!({"type": "about:blank", "status": status.as_u16(), "title": status.canonical_reason().unwrap_or("Error"), "detail": detail}),
            "application/problem+json",
        )
    };
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}
