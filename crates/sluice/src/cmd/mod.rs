//! The commands, one module per family. Each returns the process exit code;
//! an `Err` is an unexpected failure (exit 1).

pub mod admin;
pub mod config;
pub mod serve;
