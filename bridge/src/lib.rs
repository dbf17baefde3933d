//! tidemark-bridge: tails a PostgreSQL logical replication slot (pgoutput) into Kafka,
//! one topic per table, keyed by primary key, in commit order, and confirms a
//! position to the slot only after Kafka has acknowledged everything before it.
//!
//! The modules follow the flow of a change:
//!
//! | module | job |
//! |---|---|
//! | [`config`] | settings from flags, environment and TOML |
//! | [`source`] | PostgreSQL: setup of publication and slot, the replication stream, pgoutput decoding |
//! | [`pipeline`] | one session: changes to records, the acknowledgement frontier |
//! | [`sink`] | Kafka: topics, the producer, delivery reports |
//! | [`telemetry`] | Prometheus metrics, `/healthz` and `/readyz` |
//! | [`error`] | transient and definite errors |
//!
//! [`run`] is the supervisor: it runs sessions until shutdown, restarting after a
//! transient error with exponential backoff.

pub mod config;
pub mod error;
pub mod pipeline;
pub mod sink;
pub mod source;
pub mod telemetry;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_core::backoff::Backoff;
use tokio::sync::watch;
use tracing::{error, warn};

pub use config::{Cli, Config};
pub use error::BridgeError;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A session that streamed this long counts as healthy: the next failure starts the
/// backoff again from [`FIRST_BACKOFF`].
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

/// How often readiness asks the broker for metadata.
const BROKER_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the bridge until `shutdown` turns true. Returns an error only for a definite
/// problem that retrying cannot fix; transient ones are retried with backoff. With
/// `config.http` set it also serves metrics and health (see [`telemetry`]).
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<(), BridgeError> {
    let health = Arc::new(telemetry::Health::default());
    if let Some(addr) = config.http {
        let prometheus = telemetry::install_prometheus();
        let listener = telemetry::serve(addr, prometheus, health.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = listener.await {
                error!(error = %e, %addr, "the metrics and health endpoint failed");
            }
        });
        tokio::spawn(probe_broker(
            config.clone(),
            health.clone(),
            shutdown.clone(),
        ));
    }
    supervise(&config, &health, shutdown).await
}

/// Asks the broker for metadata every [`BROKER_PROBE_INTERVAL`], for `/readyz`.
async fn probe_broker(
    config: Config,
    health: Arc<telemetry::Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        match sink::producer::client_config(&config).create() {
            Ok(c) => c,
            Err(e) => return error!(error = %e, "cannot create the broker probe"),
        };
    let client = Arc::new(client);
    // One of the bridge's own topics: metadata of every topic can be slow to serve.
    let topic = config
        .tables
        .first()
        .map(|t| t.topic(&config.topic_prefix))
        .unwrap_or_default();
    loop {
        let (c, topic) = (client.clone(), topic.clone());
        let reachable = tokio::task::spawn_blocking(move || {
            c.inner()
                .fetch_metadata(Some(&topic), BROKER_PROBE_INTERVAL)
                .is_ok()
        })
        .await
        .unwrap_or(false);
        health.set_broker_reachable(reachable);
        tokio::select! {
            _ = tokio::time::sleep(BROKER_PROBE_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn supervise(
    config: &Config,
    health: &telemetry::Health,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BridgeError> {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let started = Instant::now();
        let result = pipeline::run_session(config, health, &mut shutdown).await;
        if let Err(e) = &result {
            metrics::counter!(telemetry::ERRORS, "kind" => e.kind()).increment(1);
        }
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                if started.elapsed() > HEALTHY_SESSION {
                    backoff.reset();
                }
                let pause = backoff.pause();
                warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "session failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                metrics::counter!(telemetry::RECONNECTS).increment(1);
            }
            Err(e) => {
                error!(error = %e, "stopping");
                return Err(e);
            }
        }
    }
}
