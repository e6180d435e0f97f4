//! One conditional GET of a blocklist source: hyper's HTTP/1 client over a
//! fresh connection (a list is fetched once an hour: no pool to keep), TLS
//! from rustls with the system's roots, `http://` to loopback addresses
//! only, the whole exchange bounded by the source's `timeout` and its body
//! by `max_bytes`.
//!
//! What the answer means is decided here, what the body means is not:
//! `304` keeps the set in force, `200` hands the body to
//! [`crate::lists::Lists::accept`] (which refuses HTML, empty, oversized
//! and shrunk bodies), anything else is a [`FetchError`] whose
//! [`FetchError::retry_after`] the refresh loop honours.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// What the publisher said about the body we hold: sent back as
/// `If-None-Match` / `If-Modified-Since` so an unchanged list costs a 304.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validators {
    /// The URL they belong to (validators of another URL are not sent).
    pub url: String,
    /// `ETag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// `Last-Modified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

/// What a GET brought.
#[derive(Debug)]
pub enum Fetched {
    /// `304 Not Modified`: the set in force is current.
    NotModified,
    /// `200` with a body (not yet judged).
    Body {
        /// The body, at most `max_bytes`.
        body: Vec<u8>,
        /// Its validators, for the next GET.
        validators: Validators,
    },
}

/// Why a GET brought nothing usable (the last good set stays).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A URL this client does not fetch.
    #[error("{0}")]
    Url(String),
    /// The token file could not be read.
    #[error("token file {path}: {reason}")]
    Token {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// No connection (refused, unreachable, name not resolved).
    #[error("connecting to {host}: {source}")]
    Connect {
        /// The host.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS handshake failed (or no roots to check it against).
    #[error("TLS with {host}: {reason}")]
    Tls {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The HTTP exchange broke (a reset, a malformed answer, a truncated body).
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// An answer other than 200 or 304.
    #[error("answered {status}{}", retry_after.map(|d| format!(" (Retry-After {}s)", d.as_secs())).unwrap_or_default())]
    Status {
        /// The status code.
        status: u16,
        /// What `Retry-After` asked.
        retry_after: Option<Duration>,
    },
    /// An HTML page (`Content-Type: text/html`), not a list.
    #[error("answered an HTML page, not a list")]
    Html,
    /// The body is over `max_bytes` (declared or read).
    #[error("body over max_bytes ({0} bytes or more)")]
    TooLarge(u64),
    /// The whole exchange took longer than the source's `timeout`.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
}

impl FetchError {
    /// The label of `sluice_blocklist_fetches_total{result=…}`.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Url(_) | FetchError::Token { .. } => "config",
            FetchError::Connect { .. } => "connect",
            FetchError::Tls { .. } => "tls",
            FetchError::Http(_) => "http",
            FetchError::Status { status: 429, .. } => "status_429",
            FetchError::Status { status, .. } if *status >= 500 => "status_5xx",
            FetchError::Status { .. } => "status_4xx",
            FetchError::Html => "html",
            FetchError::TooLarge(_) => "too_large",
            FetchError::Timeout(_) => "timeout",
        }
    }

    /// How long the publisher asked us to wait (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What one GET asks for.
#[derive(Debug, Clone, Copy)]
pub struct Get<'a> {
    /// `https://…` or `http://` to loopback.
    pub url: &'a str,
    /// Validators of the body in force (sent only if they are `url`'s).
    pub validators: Option<&'a Validators>,
    /// A bearer token (Matrix policy rooms: the `/state` endpoint needs one).
    pub token: Option<&'a str>,
    /// Largest body taken.
    pub max_bytes: u64,
    /// Bound on the whole exchange.
    pub timeout: Duration,
}

/// The client: builds its TLS configuration (the system's roots, read
/// once) at the first `https://` fetch.
#[derive(Default)]
pub struct Client {
    tls: OnceLock<Result<TlsConnector, String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

/// Reads a bearer token (trimmed; an empty file is an error).
pub fn read_token(path: &std::path::Path) -> Result<String, FetchError> {
    let bad = |reason: String| FetchError::Token {
        path: path.to_owned(),
        reason,
    };
    let t = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(t.to_owned())
}

fn connector() -> Result<TlsConnector, String> {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("blocklist fetch: system certificates: {e}");
    }
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err("no system root certificates (install ca-certificates)".into());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `Retry-After`: seconds, or an HTTP date (capped at a day: a publisher
/// cannot switch a list off for a week by mistake).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let d = match v.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => httpdate::parse_http_date(v)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(d.min(Duration::from_secs(86_400)))
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.len() <= 512)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Client {
    /// A client; no I/O until the first fetch.
    pub fn new() -> Self {
        Self::default()
    }

    /// One conditional GET, bounded by `get.timeout`.
    pub async fn get(&self, get: Get<'_>) -> Result<Fetched, FetchError> {
        match tokio::time::timeout(get.timeout, self.exchange(get)).await {
            Ok(r) => r,
            Err(_) => Err(FetchError::Timeout(get.timeout)),
        }
    }

    async fn connect(&self, uri: &Uri) -> Result<Box<dyn Io>, FetchError> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(FetchError::Url(format!("not an http(s) URL: {uri}"))),
        };
        let host = uri
            .host()
            .ok_or_else(|| FetchError::Url(format!("no host in {uri}")))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let connect_err = |source| FetchError::Connect {
            host: host.to_owned(),
            source,
        };
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(connect_err)?
            .collect();
        // In clear only to this machine: every address the name resolves
        // to must be loopback, or a DNS answer could move us off it.
        if !https && (addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback())) {
            return Err(FetchError::Url(format!(
                "http:// only to a loopback address, and {host} is not one"
            )));
        }
        let tcp = TcpStream::connect(&addrs[..]).await.map_err(connect_err)?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(Box::new(tcp));
        }
        let tls_err = |reason: String| FetchError::Tls {
            host: host.to_owned(),
            reason,
        };
        let connector = self.tls.get_or_init(connector).clone().map_err(tls_err)?;
        let name = ServerName::try_from(bare.to_owned()).map_err(|e| tls_err(e.to_string()))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| tls_err(e.to_string()))?;
        Ok(Box::new(tls))
    }

    async fn exchange(&self, get: Get<'_>) -> Result<Fetched, FetchError> {
        let uri: Uri = get
            .url
            .parse()
            .map_err(|e| FetchError::Url(format!("{}: {e}", get.url)))?;
        let io = self.connect(&uri).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        // The connection is driven by a task of its own, ended with this
        // exchange (when the timeout drops it too).
        let _driver = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));
        {
            let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let mut req = Request::get(path)
                .header(header::HOST, authority)
                .header(header::USER_AGENT, concat!("sluice/", env!("CARGO_PKG_VERSION")))
                .header(header::ACCEPT_ENCODING, "identity");
            if let Some(v) = get.validators.filter(|v| v.url == get.url) {
                if let Some(e) = &v.etag {
                    req = req.header(header::IF_NONE_MATCH, e.as_str());
                }
                if let Some(m) = &v.last_modified {
                    req = req.header(header::IF_MODIFIED_SINCE, m.as_str());
                }
            }
            if let Some(t) = get.token {
                let v = HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| FetchError::Url("the token holds characters a header cannot".into()))?;
                req = req.header(header::AUTHORIZATION, v);
            }
            let req = req
                .body(Empty::<Bytes>::new())
                .map_err(|e| FetchError::Url(e.to_string()))?;
            let resp = send.send_request(req).await?;
            let status = resp.status();
            if status == StatusCode::NOT_MODIFIED {
                return Ok(Fetched::NotModified);
            }
            if status != StatusCode::OK {
                return Err(FetchError::Status {
                    status: status.as_u16(),
                    retry_after: retry_after(resp.headers()),
                });
            }
            let h = resp.headers();
            let html = h
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/html"));
            if html {
                return Err(FetchError::Html);
            }
            let declared = h
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(n) = declared.filter(|n| *n > get.max_bytes) {
                return Err(FetchError::TooLarge(n));
            }
            let validators = Validators {
                url: get.url.to_owned(),
                etag: header_str(h, header::ETAG),
                last_modified: header_str(h, header::LAST_MODIFIED),
            };
            let mut body = resp.into_body();
            let mut out = Vec::with_capacity(declared.unwrap_or(0).min(get.max_bytes) as usize);
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    if (out.len() + data.len()) as u64 > get.max_bytes {
                        return Err(FetchError::TooLarge((out.len() + data.len()) as u64));
                    }
                    out.extend_from_slice(&data);
                }
            }
            Ok(Fetched::Body {
                body: out,
                validators,
            })
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
