//! Who is asking: credentials read from a request, and the caches that turn
//! them into targets.
//!
//! Nothing here believes a claim the upstream has not confirmed:
//!
//! - A Matrix access token is a user only through the upstream's `whoami`
//!   (cached) or as a keyed hash of the token itself — a made-up token can
//!   only ever name a made-up user.
//! - A JMAP/HTTP Basic username is a claim until the upstream accepts the
//!   password once; until then the request counts per address, so nobody
//!   spends another user's budget by typing their name.
//! - A federation `X-Matrix` origin is a claim until the upstream (which
//!   checks the signature) accepts a request with it from that address;
//!   until then the request counts against a server target named after the
//!   sending address, so a forger can neither spend a real server's budget
//!   nor escape per-server limits by inventing names.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use hyper::header::{HeaderMap, AUTHORIZATION};
use tokio::time::Instant;

/// Credentials found on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// None.
    Anonymous,
    /// A bearer token (Matrix access token, JMAP OAuth token).
    Bearer(String),
    /// HTTP Basic.
    Basic {
        /// The claimed username.
        user: String,
        /// The password (only ever hashed).
        password: String,
    },
    /// Matrix federation request signature: the claimed origin server.
    XMatrix {
        /// The `origin` parameter.
        origin: String,
    },
}

/// Reads the credential of a request: the `Authorization` header, else a
/// Matrix `access_token` query parameter.
pub fn credential(headers: &HeaderMap, query: Option<&str>) -> Credential {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
            return Credential::Bearer(rest.to_owned());
        }
        if scheme.eq_ignore_ascii_case("basic") {
            if let Some((user, password)) = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
            {
                if !user.is_empty() {
                    return Credential::Basic { user, password };
                }
            }
        }
        if scheme.eq_ignore_ascii_case("x-matrix") {
            // An `origin` given twice is no claim sluice can confirm (the
            // upstream may verify the other copy): an empty origin, which
            // counts as the sending address and is never confirmed.
            let origin = x_matrix_param(rest, "origin").unwrap_or_default();
            return Credential::XMatrix { origin };
        }
    }
    if let Some(token) = query.and_then(|q| query_param(q, "access_token")) {
        if !token.is_empty() {
            return Credential::Bearer(token);
        }
    }
    Credential::Anonymous
}

/// One parameter of an `X-Matrix` authorization (`origin="a.org",key=…`).
/// `None` when it is missing or given more than once: a server reading
/// another copy than this one (Synapse takes the last) would verify a
/// signature for a different origin than the one counted here.
pub fn x_matrix_param(params: &str, name: &str) -> Option<String> {
    let mut found = params.split(',').filter_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"').to_owned())
    });
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// A query parameter, key and value percent-decoded (`access%5Ftoken` is
/// `access_token` to the upstream too), pairs split at `&` as Python's
/// `parse_qs` (Synapse) and Go's and Rust's form parsers do: the first
/// match, as Synapse takes it.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name || (k.contains(['%', '+']) && percent_decode(k) == name)).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A bounded map with expiry: the gateway's memory of confirmed identities.
/// At capacity, expired entries go first; if none have expired, everything
/// goes (a flood of fresh credentials costs the flooders a `whoami` each,
/// never unbounded memory).
#[derive(Debug)]
pub struct TtlCache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
    ttl: Duration,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    /// A cache of at most `capacity` entries living `ttl` each.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// The live value for `k`.
    pub fn get(&self, k: &K) -> Option<V> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(k)
            .filter(|(_, exp)| *exp > Instant::now())
            .map(|(v, _)| v.clone())
    }

    /// Remembers `v` for `k`.
    pub fn insert(&self, k: K, v: V) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity && !map.contains_key(&k) {
            map.retain(|_, (_, exp)| *exp > now);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(k, (v, now + self.ttl));
    }

    /// Entries held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A keyed 64-bit hash: tokens and passwords are never kept, only this.
pub fn keyed(key: &foldhash::quality::RandomState, parts: &[&str]) -> u64 {
    key.hash_one(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).expect("value"));
        h
    }

    #[test]
    fn credentials() {
        assert_eq!(
            credential(&auth("Bearer abc"), None),
            Credential::Bearer("abc".into())
        );
        assert_eq!(
            credential(&HeaderMap::new(), Some("a=1&access_token=t%2Bk&b")),
            Credential::Bearer("t+k".into())
        );
        assert_eq!(
            credential(&auth("Basic YWxpY2U6c2VjcmV0"), None),
            Credential::Basic {
                user: "alice".into(),
                password: "secret".into()
            }
        );
        assert_eq!(
            credential(
                &auth("X-Matrix origin=\"Origin.Example\",destination=\"us\",key=\"ed25519:a\",sig=\"x\""),
                None
            ),
            Credential::XMatrix {
                origin: "Origin.Example".into()
            }
        );
        assert_eq!(credential(&auth("Basic !!!"), None), Credential::Anonymous);
        assert_eq!(credential(&auth("Bearer "), None), Credential::Anonymous);
        assert_eq!(credential(&HeaderMap::new(), None), Credential::Anonymous);
    }

    #[test]
    fn percent_decoding_is_total() {
        assert_eq!(percent_decode("%40a%3Ab"), "@a:b");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[tokio::test(start_paused = true)]
    async fn cache_expires_and_stays_bounded() {
        let c: TtlCache<u64, u32> = TtlCache::new(2, Duration::from_secs(10));
        c.insert(1, 1);
        c.insert(2, 2);
        c.insert(3, 3);
        assert!(c.len() <= 2);
        assert_eq!(c.get(&3), Some(3));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(c.get(&3), None);
    }
}
