//! sluice's configuration: TOML in, a validated [`Config`] out.
//!
//! A configuration is a [`Preset`] (a complete policy sized for a kind of
//! server) plus overrides: limits per side (`client`, `federation`) and scope
//! (`target`, `global`), concurrency caps, custom actions, exemptions,
//! per-target overrides, automatic bans, blocklists, bandwidth, the store,
//! the network and the gateways. Everything is checked here, once: unknown
//! keys and bad values are errors located at the offending value, displayed
//! as `FILE:LINE:COL: message`. Nothing downstream re-validates.
//!
//! The format is documented key by key in `docs/configuration.md`.
//!
//! ```
//! use sluice_config::{parse, ConfigError, Preset};
//! use sluice_core::{LimitKind, Side};
//!
//! let config = parse(
//!     r#"
//! preset = "public_medium"
//!
//! [limits.client.target]
//! registration = "1/10m"
//! "#,
//!     "sluice.toml",
//! )?;
//! assert_eq!(config.preset, Preset::PublicMedium);
//! let reg = config
//!     .policy
//!     .limits_for(Side::Client, "registration")
//!     .find(|l| l.name == "client.target.registration.ip")
//!     .map(|l| l.kind);
//! assert_eq!(reg, Some(LimitKind::Rate("1/10m".parse()?)));
//!
//! // Errors point at the value at fault.
//! let err = parse("[limits.client.target]\nlogin = \"ten/1m\"\n", "bad.toml").unwrap_err();
//! assert!(matches!(err, ConfigError::Invalid { line: 2, col: 9, .. }));
//! assert!(err.to_string().starts_with("bad.toml:2:9: bad count"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod compile;
mod error;
mod preset;
mod raw;
mod settings;

use std::path::{Path, PathBuf};

pub use compile::blocklist::{BlocklistConfig, BlocklistSource, SourceLocation, MIN_URL_REFRESH};
pub use error::{ConfigError, EXIT_CONFIG};
pub use preset::{presets_table, Preset, UnknownPreset};
pub use settings::{
    AppserviceToken, BandwidthConfig, GatewayConfig, HttpGateway, HttpProtocol, HttpRule, NetworkConfig,
    OnError, OutgoingRelay, PrivacyConfig, ProxyVersion, RealIpHeader, ServerConfig, StoreConfig, StoreKind,
    TcpGateway, TcpProtocol, Throttle, UserIdentity,
};
/// The rate type used throughout the configuration.
pub use sluice_core::Rate;

/// A complete, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The preset the policy started from.
    pub preset: Preset,
    /// The preset's limits with the file's overrides applied; validated.
    pub policy: sluice_core::Policy,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[network]`.
    pub network: NetworkConfig,
    /// `[privacy]`.
    pub privacy: PrivacyConfig,
    /// `[bandwidth.*]`, filled from the preset.
    pub bandwidth: BandwidthConfig,
    /// `[[gateway.tcp]]` and `[[gateway.http]]`.
    pub gateway: GatewayConfig,
    /// `[[blocklist.source]]` and `[blocklist] except`.
    pub blocklist: BlocklistConfig,
    /// The file the configuration came from (`None` for presets and [`parse`]).
    pub source: Option<PathBuf>,
}

impl Config {
    /// A preset with every other setting at its default: what `sluice serve`
    /// runs without a file.
    pub fn from_preset(p: Preset) -> Config {
        // The empty document with only a preset line cannot fail: presets are
        // tested to build.
        match compile::compile(&format!("preset = \"{}\"\n", p.as_str()), "<preset>") {
            Ok(c) => c,
            Err(e) => unreachable!("preset {p} builds (tested): {e}"),
        }
    }
}

impl Default for Config {
    /// The `private_small` preset.
    fn default() -> Self {
        Config::from_preset(Preset::PrivateSmall)
    }
}

/// Parses configuration text. `origin` names it in errors (`origin:line:col`).
/// Relative paths in the text are kept as written.
pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
    compile::compile(text, origin)
}

/// Reads and parses a configuration file. Errors name `path` as given.
/// Relative `admin_token_file`, `state_dir` and gateway files are resolved against the
/// file's directory, so the config means the same from any working directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut config = parse(&text, &path.display().to_string())?;
    let base = path.parent().unwrap_or(Path::new(""));
    for p in [&mut config.server.admin_token_file, &mut config.server.state_dir]
        .into_iter()
        .flatten()
    {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    for g in &mut config.gateway.http {
        let files = g.appservices.iter_mut().map(|a| &mut a.token_file);
        for p in [&mut g.tls_cert, &mut g.tls_key, &mut g.upstream_ca]
            .into_iter()
            .flatten()
            .chain(files)
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
    for s in &mut config.blocklist.sources {
        let paths = [s.token_file.as_mut()].into_iter().flatten();
        let path = match &mut s.location {
            SourceLocation::Path(p) => Some(p),
            SourceLocation::Url(_) => None,
        };
        for p in paths.chain(path) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
    config.source = Some(path.to_owned());
    Ok(config)
}

#[cfg(test)]
mod tests;
