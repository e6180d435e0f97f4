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
    /// Run the decision service (default: private_small preset, in memory, on 127.0.0.1:8470).
    Serve(ServeArgs),
    /// The most active targets of a running service (by denials or requests).
    Top(TopArgs),
    /// One target's state: every limit, lease and ban.
    Inspect(InspectArgs),
    /// Ban targets (from arguments, or one per line on stdin).
    Ban(BanArgs),
    /// Lift bans (targets from arguments, or one per line on stdin).
    Unban(UnbanArgs),
    /// List the bans in force.
    Bans(AdminArgs),
    /// Ask a running service to reload its configuration file.
    Reload(AdminArgs),
    /// Blocklist sources of a running service: check targets, status, refresh.
    #[command(subcommand)]
    Blocklist(BlocklistCommand),
    /// Print shell completions.
    Completions(CompletionsArgs),
}

/// `sluice serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (default: the private_small preset, in memory).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `sluice_server=debug` (default: warn, or RUST_LOG).
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// How the admin commands reach the service.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The service's base URL (default: $SLUICE_SERVER or http://127.0.0.1:8470).
    #[arg(long, value_name = "URL", global = true)]
    pub server: Option<String>,
    /// A file holding the admin bearer token (needed when the service is not on loopback).
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `sluice top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Sort by denials or requests.
    #[arg(long, default_value = "denials", value_parser = ["denials", "requests"])]
    pub by: String,
    /// How many rows.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: u64,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `sluice inspect TARGET`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// kind:value (ip:203.0.113.7, user:@a:example.org, server:example.org) or a hashed label ip#….
    pub target: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `sluice ban`.
#[derive(Debug, Args)]
pub struct BanArgs {
    /// Targets to ban; none or `-` reads them from stdin, one per line.
    pub targets: Vec<String>,
    /// How long: 30m, 1h, 7d, or `forever`.
    #[arg(long = "for", value_name = "DURATION")]
    pub duration: String,
    /// Why (shown to operators and in the ban list).
    #[arg(long, default_value = "banned by operator")]
    pub reason: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `sluice unban`.
#[derive(Debug, Args)]
pub struct UnbanArgs {
    /// Targets to unban; none or `-` reads them from stdin, one per line.
    pub targets: Vec<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `sluice blocklist …`.
#[derive(Debug, Subcommand)]
pub enum BlocklistCommand {
    /// Every source listing each target: exit 0 and the source names when one is listed, 1 when none is.
    Check(BlocklistCheckArgs),
    /// Each source's entries, last success, last error and staleness.
    Status(AdminArgs),
    /// Re-read one source (or all) now.
    Refresh(BlocklistRefreshArgs),
}

/// `sluice blocklist check TARGET…`.
#[derive(Debug, Args)]
pub struct BlocklistCheckArgs {
    /// Targets (server:evil.example, user:@a:evil.example, ip:192.0.2.1); none or `-` reads stdin.
    pub targets: Vec<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `sluice blocklist refresh [NAME]`.
#[derive(Debug, Args)]
pub struct BlocklistRefreshArgs {
    /// The source to refresh (default: all).
    pub name: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `sluice completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
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
