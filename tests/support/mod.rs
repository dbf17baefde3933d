//! Shared helpers of the end-to-end tests, one module per concern:
//!
//! | module | what |
//! |---|---|
//! | `services` | where PostgreSQL and Kafka are, connections, slot positions |
//! | `bridge` | the bridge process: settings, start, crash, stop, its HTTP endpoints |
//! | `topic` | reading a topic back |
//! | `broker` | a Kafka node of a test's own (`scripts/dev-stack.sh node-start`) |
//! | `proxy` | a TCP proxy a test can pause, to cut one client off from Kafka |
//! | `scratch_postgres` | a throwaway PostgreSQL server with settings of its own |
//! | `small_table` | the 500-row `(id, v)` table of the cache tests, read from PostgreSQL and from a cache |
//! | `race` | the race harness: writers, caches starting at random moments, the checks |
//!
//! The tests need PostgreSQL with `wal_level=logical` and Apache Kafka;
//! `scripts/dev-stack.sh up` starts both. A test that cannot reach them fails and says
//! so; it never skips. Each test uses its own tables, slot, publication and topic
//! prefix, so tests can run in parallel and a rerun starts clean.

#![allow(dead_code)]

pub mod bridge;
pub mod broker;
pub mod proxy;
pub mod race;
pub mod scratch_postgres;
pub mod services;
pub mod small_table;
pub mod topic;

pub use bridge::*;
pub use broker::*;
pub use proxy::*;
pub use scratch_postgres::*;
pub use services::*;
pub use small_table::*;
pub use topic::*;

use std::time::{Duration, Instant};

/// A name unique to this test run, for tables, slots and topics.
pub fn unique(base: &str) -> String {
    format!("{base}_{}", rand::random::<u32>() % 1_000_000)
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
