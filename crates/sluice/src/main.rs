//! `sluice`: rate limiting and abuse control for federated messaging servers.
//!
//! This file only parses the command line and maps results to exit codes;
//! each command lives in `cmd/`. Exit codes: 0 success, 1 failure, 2 bad
//! usage (clap), 64 invalid configuration or unknown action.

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::CheckConfig(args) => cmd::config::check_config(&args),
        Command::Presets => cmd::config::presets(),
        Command::Explain(args) => cmd::config::explain(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
