//! The command line as plain data (clap derive). Commands turn it into real
//! objects; nothing here opens files or sockets.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sluice_config::Preset;
use sluice_core::{Side, Target};

/// Rate limiting and abuse control for federated messaging servers
/// (XMPP, Matrix, JMAP).
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a configuration file: exit 0 if valid, 64 with FILE:LINE:COL if not.
    CheckConfig(CheckConfigArgs),
    /// Print every preset's limits as a table.
    Presets,
    /// Show which limits apply to a request, after overrides, without consuming anything.
    Explain(ExplainArgs),
}

/// `sluice check-config FILE`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The configuration file.
    pub file: PathBuf,
}

/// `sluice explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Configuration file (default: the private_small preset).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Explain a preset instead of a file.
    #[arg(long, value_name = "PRESET", conflicts_with = "config", value_parser = parse_preset)]
    pub preset: Option<Preset>,
    /// The action, e.g. registration, login, send_event, transaction.
    #[arg(long, value_name = "ACTION")]
    pub action: String,
    /// Client or federation.
    #[arg(long, default_value = "client", value_parser = parse_side)]
    pub side: Side,
    /// The client's address.
    #[arg(long, value_name = "IP")]
    pub ip: Option<IpAddr>,
    /// The account: @alice:example.org or alice@example.org.
    #[arg(long, value_name = "USER", value_parser = parse_user)]
    pub user: Option<Target>,
    /// The remote or destination server.
    #[arg(long, value_name = "SERVER", value_parser = parse_server)]
    pub server: Option<Target>,
    /// The application service (bridge) ID.
    #[arg(long, value_name = "ID", value_parser = parse_appservice)]
    pub appservice: Option<Target>,
    /// Units the request costs (bytes for byte limits).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub cost: u64,
}

fn parse_preset(s: &str) -> Result<Preset, String> {
    s.parse().map_err(|e: sluice_config::UnknownPreset| e.to_string())
}

fn parse_side(s: &str) -> Result<Side, String> {
    s.parse()
}

fn parse_user(s: &str) -> Result<Target, String> {
    Target::user(s).map_err(|e| e.to_string())
}

fn parse_server(s: &str) -> Result<Target, String> {
    Target::server(s).map_err(|e| e.to_string())
}

fn parse_appservice(s: &str) -> Result<Target, String> {
    Target::appservice(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
