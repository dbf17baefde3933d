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
//! | [`error`] | transient and definite errors |
//!
//! [`run`] is the supervisor: it runs sessions until shutdown, restarting after a
//! transient error with exponential backoff.

pub mod config;
pub mod error;
pub mod pipeline;
pub mod sink;
pub mod source;

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, warn};

pub use config::{Cli, Config};
pub use error::BridgeError;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A session that streamed this long counts as healthy: the next failure starts the
/// backoff again from [`FIRST_BACKOFF`].
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

/// Runs the bridge until `shutdown` turns true. Returns an error only for a definite
/// problem that retrying cannot fix; transient ones are retried with backoff.
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> Result<(), BridgeError> {
    let mut backoff = FIRST_BACKOFF;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let started = Instant::now();
        match pipeline::run_session(&config, &mut shutdown).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                if started.elapsed() > HEALTHY_SESSION {
                    backoff = FIRST_BACKOFF;
                }
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "session failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                error!(error = %e, "stopping");
                return Err(e);
            }
        }
    }
}
