//! The TOML document as written, with spans: deserialised strictly (unknown
//! keys are errors) and validated into typed values by `compile`.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::settings::{HttpProtocol, OnError, ProxyVersion, RealIpHeader, StoreKind, UserIdentity};

type S<T> = Spanned<T>;
/// A table of user-named keys (actions), values spanned.
pub(crate) type Named<V> = BTreeMap<S<String>, S<V>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub preset: Option<S<String>>,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub network: RawNetwork,
    #[serde(default)]
    pub privacy: RawPrivacy,
    #[serde(default)]
    pub limits: Sides<Scopes<Named<Spec<RawRate>>>>,
    #[serde(default)]
    pub concurrency: Sides<Scopes<Named<Spec<RawConcurrency>>>>,
    #[serde(default)]
    pub actions: Sides<Named<String>>,
    #[serde(default)]
    pub exempt: RawExempt,
    #[serde(default, rename = "override")]
    pub overrides: Vec<S<RawOverride>>,
    #[serde(default)]
    pub autoban: Vec<S<RawAutoban>>,
    #[serde(default)]
    pub blocklist: RawBlocklist,
    #[serde(default)]
    pub bandwidth: Sides<RawBandwidth>,
    #[serde(default)]
    pub gateway: RawGateway,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<S<String>>,
    pub admin_token_file: Option<S<String>>,
    pub state_dir: Option<S<String>>,
    pub max_body_bytes: Option<S<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub kind: Option<S<StoreKind>>,
    pub url: Option<S<String>>,
    pub max_keys: Option<S<u64>>,
    pub on_error: Option<OnError>,
    pub key_prefix: Option<S<String>>,
    pub cluster: Option<S<bool>>,
    pub connect_timeout: Option<S<String>>,
    pub command_timeout: Option<S<String>>,
    pub local_admission: Option<S<i64>>,
    pub local_hold: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetwork {
    pub trusted_proxies: Option<Vec<S<String>>>,
    pub ipv4_prefix: Option<S<u8>>,
    pub ipv6_prefix: Option<S<u8>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrivacy {
    pub log_ips: Option<bool>,
}

/// `client` and `federation` sub-tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Sides<T> {
    pub client: Option<T>,
    pub federation: Option<T>,
}

impl<T> Default for Sides<T> {
    fn default() -> Self {
        Self {
            client: None,
            federation: None,
        }
    }
}

/// `target` and `global` sub-tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Scopes<T> {
    pub target: Option<T>,
    pub global: Option<T>,
}

/// A limit's value: `"10/1m"` or `"off"`, a number (concurrency), a table,
/// or an array of tables.
#[derive(Debug)]
pub(crate) enum Spec<T> {
    Str(String),
    Int(i64),
    Table(T),
    List(Vec<S<T>>),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Spec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a number, a table or an array of tables")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Spec::Str(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Spec::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Spec::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Spec::Table)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element::<S<T>>()? {
                    v.push(x);
                }
                Ok(Spec::List(v))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRate {
    pub rate: S<String>,
    pub burst: Option<S<u64>>,
    pub shadow: Option<bool>,
    pub per: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConcurrency {
    pub max: S<i64>,
    pub shadow: Option<bool>,
    pub per: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExempt {
    #[serde(default)]
    pub networks: Vec<S<String>>,
    #[serde(default)]
    pub targets: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOverride {
    pub target: S<String>,
    pub actions: Option<S<Vec<S<String>>>>,
    pub multiply: Option<S<f64>>,
    pub rate: Option<S<String>>,
    pub unlimited: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAutoban {
    pub action: S<String>,
    pub side: Option<S<String>>,
    pub per: Option<S<String>>,
    pub denials: Option<S<u64>>,
    pub within: Option<S<String>>,
    pub ban: Option<S<String>>,
    pub max_ban: Option<S<String>>,
    pub forget_after: Option<S<String>>,
    pub off: Option<S<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBlocklist {
    #[serde(default)]
    pub servers: Vec<S<String>>,
    #[serde(default)]
    pub networks: Vec<S<String>>,
    /// `[[blocklist.source]]`.
    #[serde(default)]
    pub source: Vec<S<RawSource>>,
    /// Targets whose list hits are cancelled.
    #[serde(default)]
    pub except: Vec<S<String>>,
}

/// One `[[blocklist.source]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSource {
    pub name: S<String>,
    pub url: Option<S<String>>,
    pub path: Option<S<String>>,
    pub format: S<String>,
    #[serde(rename = "match")]
    pub match_: Option<S<String>>,
    pub side: Option<S<String>>,
    pub action: Option<S<String>>,
    pub refresh: Option<S<String>>,
    pub reason: Option<S<String>>,
    pub token_file: Option<S<String>>,
    pub recommendations: Option<Vec<S<String>>>,
    pub max_bytes: Option<S<u64>>,
    pub max_entries: Option<S<u64>>,
    pub min_keep: Option<S<f64>>,
    pub stale_after: Option<S<String>>,
    pub drop_when_stale: Option<S<bool>>,
    pub timeout: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBandwidth {
    pub per_connection: Option<S<String>>,
    pub per_ip: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGateway {
    #[serde(default)]
    pub tcp: Vec<S<RawTcp>>,
    #[serde(default)]
    pub http: Vec<S<RawHttp>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTcp {
    pub listen: S<String>,
    /// Required unless `direction = "outgoing"`.
    pub upstream: Option<S<String>>,
    pub side: S<String>,
    #[serde(default)]
    pub accept_proxy: Option<S<bool>>,
    pub send_proxy: Option<ProxyVersion>,
    pub header_timeout: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub drain_timeout: Option<S<String>>,
    pub max_connections: Option<S<i64>>,
    pub stream_error: Option<S<String>>,
    pub throttle: Option<S<String>>,
    pub protocol: Option<S<String>>,
    pub direct_tls: Option<S<bool>>,
    pub direction: Option<S<String>>,
    /// Outgoing relays: destination domain → `host:port`.
    pub routes: Option<S<BTreeMap<String, S<String>>>>,
    pub resolver: Option<S<String>>,
    #[serde(default)]
    pub deny_networks: Vec<S<String>>,
    #[serde(default)]
    pub allow_networks: Vec<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    pub listen: S<String>,
    pub upstream: S<String>,
    pub upstream_ca: Option<S<String>>,
    pub protocol: HttpProtocol,
    pub tls_cert: Option<S<String>>,
    pub tls_key: Option<S<String>>,
    pub user_identity: Option<UserIdentity>,
    pub real_ip_header: Option<RealIpHeader>,
    #[serde(default)]
    pub appservice: Vec<S<RawAppservice>>,
    #[serde(default)]
    pub rule: Vec<S<RawRule>>,
    pub long_polls_per_account: Option<S<i64>>,
    pub body_timeout: Option<S<String>>,
    pub upstream_timeout: Option<S<String>>,
    pub workers: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAppservice {
    pub id: S<String>,
    pub token_file: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub method: Option<S<String>>,
    pub path: S<String>,
    pub side: Option<S<String>>,
    pub action: S<String>,
    pub bytes: Option<bool>,
    pub long_poll: Option<bool>,
}
