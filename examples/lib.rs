//! Runnable examples; see the `[[example]]` entries in Cargo.toml.
//!
//! The library holds what the examples and the benchmarks (`tidemark-bench`) share:
//! where the development stack is, and how they log.

/// Where PostgreSQL and Kafka are; the development stack's addresses by default
/// (`scripts/dev-stack.sh`).
#[derive(clap::Args, Debug, Clone)]
pub struct Stack {
    /// PostgreSQL URL.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub postgres: String,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub kafka: String,
}

/// Logs to stderr through `tracing`: `RUST_LOG` chooses what, `default` when it is unset.
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .init();
}
