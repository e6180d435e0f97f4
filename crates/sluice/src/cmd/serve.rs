//! `sluice serve`: the decision service.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

/// Runs the service until SIGTERM/SIGINT. Config errors exit 64.
pub fn run(config: Option<PathBuf>, log_level: Option<String>) -> anyhow::Result<ExitCode> {
    let config = match config {
        None => sluice_config::Config::default(),
        Some(path) => match sluice_config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(sluice_config::EXIT_CONFIG as u8));
            }
        },
    };
    init_logging(log_level.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let app = sluice_server::App::new(config)?;
        // Listeners are bound before the service runs: a port in use is a
        // startup error, not a log line.
        sluice_gateway::start(&app).await?;
        sluice_http_gateway::start(&app).await?;
        sluice_server::run(app).await?;
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Logs go to stderr at `warn` unless `--log-level` or `RUST_LOG` says otherwise.
fn init_logging(level: Option<&str>) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).with_context(|| format!("bad --log-level {l:?}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| anyhow::anyhow!("{e}"))
}
