//! A worker's connections to the upstream: HTTP/1 keep-alive, one request
//! at a time on each, kept in a plain stack.
//!
//! hyper-util's pooled client does the same job generally (any host, idle
//! timers, HTTP/2) and costs for it on every request: a pool checkout keyed
//! by scheme and authority, and a task spawned to put the connection back.
//! One worker talks to one upstream from one thread, so a stack under a
//! lock nobody else takes is enough: a connection goes back when the
//! response body it carried has ended, and one found closed is dropped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;

use crate::body::{BoxError, ProxyBody};

/// Time to connect to the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept at most (per worker); more are closed.
const MAX_IDLE: usize = 256;

type Idle = Arc<Mutex<Vec<SendRequest<ProxyBody>>>>;

/// One worker's connections to one upstream origin.
#[derive(Clone)]
pub(crate) struct Upstream {
    /// `host:port` to connect to.
    addr: Arc<str>,
    /// `Host` for requests that came without one.
    host: HeaderValue,
    idle: Idle,
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
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(s);
                }
            }
        }
    }
}

impl Upstream {
    /// Connections to `uri`'s origin (`http://host[:port]`), or None when
    /// it has none usable.
    pub(crate) fn new(uri: &Uri) -> Option<Self> {
        let authority = uri.authority()?;
        let port = uri.port_u16().unwrap_or(80);
        Some(Self {
            addr: format!("{}:{port}", authority.host()).into(),
            host: HeaderValue::from_str(authority.as_str()).ok()?,
            idle: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// The same origin with a stack of its own (for another worker).
    pub(crate) fn fresh(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            host: self.host.clone(),
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn checkout(&self) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<ProxyBody>, BoxError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&*self.addr))
            .await
            .map_err(|_| BoxError::new(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
            .map_err(BoxError::new)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(BoxError::new)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!("http gateway upstream connection: {e}");
            }
        });
        Ok(sender)
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
