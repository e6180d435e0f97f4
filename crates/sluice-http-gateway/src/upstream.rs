//! A worker's connections to the upstream: HTTP/1 keep-alive over TCP or
//! TLS, one request at a time on each, kept in stacks with an idle timeout
//! — one for hyper's client, one for the lean path ([`crate::h1`]).
//!
//! hyper-util's pooled client does the same job generally (any host, HTTP/2)
//! and costs for it on every request: a pool checkout keyed by scheme and
//! authority, and a task spawned to put the connection back. One worker
//! talks to one upstream from one thread, so a stack under a lock nobody
//! else takes is enough: a connection goes back when the response body it
//! carried has ended, one found closed is dropped, and one idle for longer
//! than [`IDLE_TIMEOUT`] is closed (a firewall or NAT between sluice and a
//! remote upstream may forget it silently; the upstream may time it out).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::body::{BoxError, ProxyBody};
use crate::h1;
use crate::GatewayError;

/// Time to connect to the upstream (and finish the TLS handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept at most (per worker); the oldest go first.
const MAX_IDLE: usize = 256;
/// An idle connection older than this is closed (hyper-util's pool
/// defaults to 90 s; Synapse and Stalwart keep idle connections longer, so
/// the upstream seldom closes first).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle items, the most recently returned last: taken from the back (the
/// warmest), expired from the front (the oldest).
pub(crate) struct IdleStack<T> {
    items: VecDeque<(T, Instant)>,
}

impl<T> Default for IdleStack<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
        }
    }
}

impl<T> IdleStack<T> {
    /// Keeps `item`, returned at `now`; the oldest one makes room at the cap.
    pub(crate) fn push(&mut self, item: T, now: Instant) {
        if self.items.len() >= MAX_IDLE {
            self.items.pop_front();
        }
        self.items.push_back((item, now));
    }

    /// The most recently returned item that is `usable` and not expired at
    /// `now`; expired and unusable ones are dropped on the way.
    pub(crate) fn pop(&mut self, now: Instant, mut usable: impl FnMut(&mut T) -> bool) -> Option<T> {
        self.expire(now);
        while let Some((mut item, _)) = self.items.pop_back() {
            if usable(&mut item) {
                return Some(item);
            }
        }
        None
    }

    /// Drops every item idle for longer than [`IDLE_TIMEOUT`] at `now`.
    pub(crate) fn expire(&mut self, now: Instant) {
        while self
            .items
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) > IDLE_TIMEOUT)
        {
            self.items.pop_front();
        }
    }

    /// Items kept.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }
}

type Idle = Arc<Mutex<IdleStack<SendRequest<ProxyBody>>>>;

/// A connection to the upstream, plain or TLS (tokio-util's `Either`
/// delegates reads and writes, vectored ones included).
#[cfg(feature = "tls")]
pub(crate) type Stream = tokio_util::either::Either<
    tokio::net::TcpStream,
    Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
>;
/// A connection to the upstream (plain: this build has no TLS).
#[cfg(not(feature = "tls"))]
pub(crate) type Stream = tokio::net::TcpStream;

fn lock(idle: &Idle) -> std::sync::MutexGuard<'_, IdleStack<SendRequest<ProxyBody>>> {
    idle.lock().unwrap_or_else(|p| p.into_inner())
}

/// How to speak TLS to an `https://` upstream.
#[cfg(feature = "tls")]
#[derive(Clone)]
struct Tls {
    connector: tokio_rustls::TlsConnector,
    /// The name the certificate must carry (the base's host).
    name: tokio_rustls::rustls::pki_types::ServerName<'static>,
}

/// One worker's connections to one upstream origin.
#[derive(Clone)]
pub(crate) struct Upstream {
    /// `host:port` to connect to.
    addr: Arc<str>,
    /// `Host` for requests that came without one.
    host: HeaderValue,
    #[cfg(feature = "tls")]
    tls: Option<Tls>,
    /// Connections for hyper's client (requests with bodies, upgrades).
    idle: Idle,
    /// Connections for the lean path ([`crate::h1`]: `GET` and `HEAD`).
    lean: h1::Pool<Stream>,
}

/// A connection lent to one request: it goes back to the stack when
/// dropped, which [`crate::body::Metered`] does when the response body has
/// ended (or has been dropped: a connection left mid-body is closed by
/// hyper and found closed on the next checkout).
pub(crate) struct Lent {
    sender: Option<SendRequest<ProxyBody>>,
    idle: Idle,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(s) = self.sender.take() {
            if !s.is_closed() {
                lock(&self.idle).push(s, Instant::now());
            }
        }
    }
}

impl Upstream {
    /// Connections to the origin `base` (`http://host[:port]` or
    /// `https://host[:port]`, no path). `ca`: the PEM certificates an
    /// `https://` upstream must chain to (default: the system's roots).
    pub(crate) fn new(base: &str, ca: Option<&std::path::Path>) -> Result<Self, GatewayError> {
        let bad = |why: &str| GatewayError::Upstream(base.to_owned(), why.to_owned());
        let uri: Uri = base.parse().map_err(|_| bad("not a URL"))?;
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(bad("a base URL has no path"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("the scheme must be http:// or https://")),
        };
        if ca.is_some() && !https {
            return Err(bad("upstream_ca is for https:// upstreams"));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = authority.host();
        #[cfg(feature = "tls")]
        let tls = if https {
            // `[::1]` in a URL, `::1` in a certificate.
            let bare = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            Some(Tls {
                connector: crate::tls::connector(ca)?,
                name: tokio_rustls::rustls::pki_types::ServerName::try_from(bare)
                    .map_err(|_| bad("the host is not a valid TLS server name"))?,
            })
        } else {
            None
        };
        #[cfg(not(feature = "tls"))]
        if https {
            return Err(bad("this build has no TLS support (the `tls` feature is off)"));
        }
        Ok(Self {
            addr: format!("{host}:{port}").into(),
            host: HeaderValue::from_str(authority.as_str()).map_err(|_| bad("unusable host"))?,
            #[cfg(feature = "tls")]
            tls,
            idle: Arc::default(),
            lean: Arc::default(),
        })
    }

    /// The same origin with a stack of its own (for another worker).
    pub(crate) fn fresh(&self) -> Self {
        Self {
            idle: Arc::default(),
            lean: Arc::default(),
            ..self.clone()
        }
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`]; a worker
    /// calls this periodically, so a quiet worker does not hold them until
    /// its next request. Returns the connections still idle.
    pub(crate) fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        idle.expire(now);
        let mut lean = self.lean.lock().unwrap_or_else(|p| p.into_inner());
        lean.expire(now);
        idle.len() + lean.len()
    }

    fn checkout(&self) -> Option<SendRequest<ProxyBody>> {
        lock(&self.idle).pop(Instant::now(), |s| !s.is_closed())
    }

    async fn connect(&self) -> Result<SendRequest<ProxyBody>, BoxError> {
        handshake(self.dial().await?).await
    }

    /// A new connection to the upstream, through TLS for `https://`.
    async fn dial(&self) -> Result<Stream, BoxError> {
        let timed_out = || BoxError::new(std::io::Error::from(std::io::ErrorKind::TimedOut));
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        let stream = tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(&*self.addr))
            .await
            .map_err(|_| timed_out())?
            .map_err(BoxError::new)?;
        let _ = stream.set_nodelay(true);
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let stream = tokio::time::timeout_at(deadline, tls.connector.connect(tls.name.clone(), stream))
                .await
                .map_err(|_| timed_out())?
                .map_err(BoxError::new)?;
            return Ok(tokio_util::either::Either::Right(Box::new(stream)));
        }
        #[cfg(feature = "tls")]
        return Ok(tokio_util::either::Either::Left(stream));
        #[cfg(not(feature = "tls"))]
        Ok(stream)
    }

    /// Sends a `GET` or `HEAD` with no body ([`h1::eligible`]) the lean way
    /// ([`crate::h1`]): on this worker's most recently used connection or a
    /// new one. An idle connection the upstream closed before answering is
    /// replaced once (the method is idempotent). The connection goes back
    /// to the stack when the response body has been read to its end. The
    /// answer's fields come beside it when kept as written
    /// ([`h1::RawFields`]; its map is empty then).
    pub(crate) async fn send_lean(
        &self,
        parts: &hyper::http::request::Parts,
        extra: &[(HeaderName, Option<HeaderValue>)],
        silence: Option<std::time::Duration>,
    ) -> Result<(Response<ProxyBody>, Option<h1::RawFields>), BoxError> {
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut head = Vec::with_capacity(512);
        if parts.headers.contains_key(header::HOST) {
            h1::encode_head(&parts.method, target, &parts.headers, extra, &mut head);
        } else {
            let mut headers = parts.headers.clone();
            headers.insert(header::HOST, self.host.clone());
            h1::encode_head(&parts.method, target, &headers, extra, &mut head);
        }
        let head_only = parts.method == hyper::Method::HEAD;
        let mut retried = false;
        loop {
            // A kept connection is used only if nothing arrived on it while
            // idle (the upstream closed it, or sent bytes nobody asked
            // for); after a stale one, a new connection.
            let kept = if retried {
                None
            } else {
                self.lean
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pop(Instant::now(), h1::Conn::quiet)
            };
            let (conn, reused) = match kept {
                Some(c) => (c, true),
                // Boxed: dialing (a TLS handshake) is rare and its future
                // large; inline, every request's future would carry (and
                // copy) its space.
                None => (h1::Conn::new(Box::pin(self.dial()).await?), false),
            };
            match h1::exchange(conn, &head, head_only, Some(self.lean.clone())).await {
                Ok(mut resp) => {
                    if let Some(limit) = silence {
                        resp.body_mut().limit_silence(limit);
                    }
                    let raw = resp.body_mut().take_fields();
                    return Ok((resp.map(|b| b.boxed()), raw));
                }
                Err(h1::ExchangeError::Stale(_)) if reused && !retried => retried = true,
                Err(h1::ExchangeError::Stale(e) | h1::ExchangeError::Failed(e)) => return Err(e),
            }
        }
    }

    /// Sends `req` (its URI in origin form, `/path?query`) on an idle
    /// connection or a new one. A request that a connection closed before
    /// taking (the upstream timed it out meanwhile) is sent again once, on
    /// a new connection. Returns the response and the connection, to be
    /// dropped when the response body is done with.
    pub(crate) async fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Lent), BoxError> {
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        let mut retried = false;
        loop {
            let (mut sender, fresh) = match self.checkout() {
                Some(s) => (s, false),
                None => (self.connect().await?, true),
            };
            if let Err(e) = sender.ready().await {
                // An idle one closed meanwhile: try the next (the stack is
                // finite); a new one that cannot take a request is an error.
                if fresh {
                    return Err(BoxError::new(e));
                }
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lent = Lent {
                        sender: Some(sender),
                        idle: self.idle.clone(),
                    };
                    return Ok((resp, lent));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if !retried => {
                        retried = true;
                        req = r;
                    }
                    _ => return Err(BoxError::new(e.into_error())),
                },
            }
        }
    }
}

/// HTTP/1 over `io`: the connection's task runs on the current runtime
/// (the worker's), upgrades included.
async fn handshake<T>(io: T) -> Result<SendRequest<ProxyBody>, BoxError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(BoxError::new)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("http gateway upstream connection: {e}");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_items_are_taken_warmest_first_and_expire_oldest_first() {
        let t0 = Instant::now();
        let mut s = IdleStack::default();
        s.push(1, t0);
        s.push(2, t0 + Duration::from_secs(30));
        s.push(3, t0 + Duration::from_secs(50));
        // The most recently returned first.
        assert_eq!(s.pop(t0 + Duration::from_secs(55), |_| true), Some(3));
        s.push(3, t0 + Duration::from_secs(55));
        // At 61 s item 1 has been idle too long; 2 and 3 have not.
        s.expire(t0 + Duration::from_secs(61));
        assert_eq!(s.len(), 2);
        // Unusable items are skipped and dropped.
        assert_eq!(s.pop(t0 + Duration::from_secs(61), |i| *i != 3), Some(2));
        assert_eq!(s.len(), 0);
        // Everything expires once idle long enough.
        s.push(4, t0);
        assert_eq!(s.pop(t0 + IDLE_TIMEOUT + Duration::from_secs(1), |_| true), None);
    }

    #[test]
    fn a_full_stack_drops_its_oldest() {
        let t0 = Instant::now();
        let mut s = IdleStack::default();
        for i in 0..=MAX_IDLE {
            s.push(i, t0);
        }
        assert_eq!(s.len(), MAX_IDLE);
        let mut all = Vec::new();
        while let Some(i) = s.pop(t0, |_| true) {
            all.push(i);
        }
        assert_eq!(all.last(), Some(&1), "item 0, the oldest, made room");
    }

    #[test]
    fn bases_are_checked() {
        assert!(Upstream::new("http://127.0.0.1:8008", None).is_ok());
        assert!(Upstream::new("http://127.0.0.1:8008/", None).is_ok());
        assert!(Upstream::new("http://127.0.0.1:8008/prefix", None).is_err());
        assert!(Upstream::new("ftp://127.0.0.1", None).is_err());
        let ca = std::path::Path::new("x.pem");
        assert!(Upstream::new("http://127.0.0.1:8008", Some(ca)).is_err());
    }
}
