//! The `tidemark-bridge` binary: parses the settings, starts logging, and runs the
//! bridge until SIGTERM or SIGINT.

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

fn main() -> std::process::ExitCode {
    // Before any other thread exists: this sets environment variables.
    if let Err(e) = tidemark_bridge::config::load_env_files() {
        eprintln!("tidemark-bridge: {e}");
        return std::process::ExitCode::from(2);
    }
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("tidemark-bridge: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match tidemark_bridge::Config::from_cli(tidemark_bridge::Cli::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tidemark-bridge: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown requested");
        let _ = stop.send(true);
    });
    match tidemark_bridge::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidemark-bridge: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
