//! What the bridge reports about itself: Prometheus metrics and health.
//!
//! Metrics go through the `metrics` facade, so an application that embeds the bridge
//! exports them with its own recorder. The binary installs
//! `metrics-exporter-prometheus` (the facade's reference exporter, maintained with
//! it) and serves it with a small axum router ([`serve`]): `/metrics` in the
//! Prometheus text format, `/healthz` (the process answers) and `/readyz` (the
//! replication stream is streaming and the broker answered a metadata request within
//! the last probe). axum is the tokio project's own HTTP framework; the bridge needs
//! three routes, and hand-written HTTP would be more code to get wrong.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tracing::{info, warn};

/// Changes written, labelled by `table` and `op` (c, u, d, t).
pub const CHANGES: &str = "tidemark_changes_total";
/// Key plus value bytes written to Kafka.
pub const BYTES: &str = "tidemark_bytes_total";
/// Records produced and not yet acknowledged by Kafka.
pub const IN_FLIGHT: &str = "tidemark_in_flight_records";
/// The LSN confirmed to the slot, as a number.
pub const CONFIRMED_LSN: &str = "tidemark_confirmed_lsn";
/// `pg_current_wal_lsn() - confirmed_flush_lsn` of the slot, in bytes.
pub const SLOT_LAG_BYTES: &str = "tidemark_slot_lag_bytes";
/// `pg_current_wal_lsn() - restart_lsn` of the slot: the WAL the server keeps for it.
pub const SLOT_RETAINED_WAL_BYTES: &str = "tidemark_slot_retained_wal_bytes";
/// The slot's `safe_wal_size`: WAL that can still be written before the slot is lost
/// (only when `max_slot_wal_keep_size` is set).
pub const SLOT_SAFE_WAL_SIZE_BYTES: &str = "tidemark_slot_safe_wal_size_bytes";
/// The slot's `wal_status`, as 1 for the current value of the `status` label.
pub const SLOT_WAL_STATUS: &str = "tidemark_slot_wal_status";
/// Now minus the commit time of the last acknowledged transaction; 0 when nothing is in flight.
pub const SLOT_LAG_SECONDS: &str = "tidemark_slot_lag_seconds";
/// Commit-to-acknowledgement latency of each record.
pub const ACK_LATENCY: &str = "tidemark_ack_latency_seconds";
/// Replication sessions restarted after a transient error.
pub const RECONNECTS: &str = "tidemark_reconnects_total";
/// Errors, labelled by `kind`.
pub const ERRORS: &str = "tidemark_errors_total";
/// Records left out of their topic (`--oversized-records skip`), labelled by `table`
/// and `reason`.
pub const SKIPPED_RECORDS: &str = "tidemark_skipped_records_total";
/// Values the codec could not read and wrote as their text, labelled by `table`.
pub const UNDECODABLE_VALUES: &str = "tidemark_undecodable_values_total";
/// Kafka transactions committed (`--exactly-once`).
pub const KAFKA_TRANSACTIONS: &str = "tidemark_kafka_transactions_total";
/// PostgreSQL transactions a session skipped because a committed Kafka transaction
/// holds them already (`--exactly-once`, after a restart).
pub const SKIPPED_TRANSACTIONS: &str = "tidemark_replayed_transactions_skipped_total";
/// Heartbeat records written (`--heartbeat-interval`).
pub const HEARTBEATS: &str = "tidemark_heartbeats_total";
/// Rows the initial snapshot wrote as op `r` records, labelled by `table`.
pub const SNAPSHOT_ROWS: &str = "tidemark_snapshot_rows_total";
/// TRUNCATEs left out of the topic (`--truncate skip`), labelled by `table`.
pub const SKIPPED_TRUNCATES: &str = "tidemark_skipped_truncates_total";

/// Whether the bridge is ready: streaming, the broker reachable, and the slot not lost.
#[derive(Debug, Default)]
pub struct Health {
    streaming: AtomicBool,
    broker_reachable: AtomicBool,
    slot_lost: AtomicBool,
    /// Set when the last slot query got no answer in time: a connection that hangs.
    postgres_silent: AtomicBool,
}

impl Health {
    /// Sets whether a replication session is streaming.
    pub fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::Relaxed);
    }
    /// Sets whether the last broker probe succeeded.
    pub fn set_broker_reachable(&self, on: bool) {
        self.broker_reachable.store(on, Ordering::Relaxed);
    }
    /// Sets whether PostgreSQL failed to answer the last slot query in time.
    pub fn set_postgres_silent(&self, silent: bool) {
        self.postgres_silent.store(silent, Ordering::Relaxed);
    }
    /// Sets whether the slot's `wal_status` is `lost`.
    pub fn set_slot_lost(&self, lost: bool) {
        self.slot_lost.store(lost, Ordering::Relaxed);
    }
    /// Streaming, the broker reachable, and the slot not lost.
    pub fn is_ready(&self) -> bool {
        self.streaming.load(Ordering::Relaxed)
            && self.broker_reachable.load(Ordering::Relaxed)
            && !self.slot_lost.load(Ordering::Relaxed)
            && !self.postgres_silent.load(Ordering::Relaxed)
    }
    /// Why the bridge is not ready, for `/readyz`.
    pub fn why_not_ready(&self) -> &'static str {
        if self.slot_lost.load(Ordering::Relaxed) {
            "not ready: the replication slot is lost (wal_status=lost); see docs/operations.md\n"
        } else if self.postgres_silent.load(Ordering::Relaxed) {
            "not ready: PostgreSQL does not answer (the slot query timed out)\n"
        } else if !self.broker_reachable.load(Ordering::Relaxed) {
            "not ready: the broker is unreachable\n"
        } else {
            "not ready: replication is not streaming\n"
        }
    }
}

/// Installs the Prometheus recorder as the global `metrics` recorder. Returns `None`
/// when the process already has a recorder (an application embedding the bridge).
pub fn install_prometheus() -> Option<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    // Histogram samples pile up until a scrape drains them; without a scraper (only
    // /readyz polled) that is memory without bound. Upkeep drains them every 5 s.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            upkeep.run_upkeep();
        })
        .ok()?;
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            describe();
            Some(handle)
        }
        Err(_) => {
            warn!("a metrics recorder is already installed; /metrics stays empty and the host exports the figures");
            None
        }
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(CHANGES, "Row changes written to Kafka, by table and op.");
    describe_counter!(BYTES, Unit::Bytes, "Key and value bytes written to Kafka.");
    describe_gauge!(
        IN_FLIGHT,
        "Records produced and not yet acknowledged by Kafka."
    );
    describe_gauge!(CONFIRMED_LSN, "LSN confirmed to the replication slot.");
    describe_gauge!(
        SLOT_LAG_BYTES,
        Unit::Bytes,
        "pg_current_wal_lsn() minus the slot's confirmed_flush_lsn."
    );
    describe_gauge!(
        SLOT_LAG_SECONDS,
        Unit::Seconds,
        "Now minus the commit time of the last acknowledged transaction (0 when idle)."
    );
    describe_gauge!(
        SLOT_RETAINED_WAL_BYTES,
        Unit::Bytes,
        "pg_current_wal_lsn() minus the slot's restart_lsn: WAL the server keeps for the slot."
    );
    describe_gauge!(
        SLOT_SAFE_WAL_SIZE_BYTES,
        Unit::Bytes,
        "WAL that can be written before the slot is lost (max_slot_wal_keep_size)."
    );
    describe_gauge!(
        SLOT_WAL_STATUS,
        "The slot's wal_status: 1 for the current status (reserved, extended, unreserved, lost)."
    );
    describe_histogram!(
        ACK_LATENCY,
        Unit::Seconds,
        "Commit to Kafka acknowledgement, per record."
    );
    describe_counter!(
        RECONNECTS,
        "Replication sessions restarted after a transient error."
    );
    describe_counter!(ERRORS, "Errors by kind.");
    describe_counter!(
        SKIPPED_RECORDS,
        "Records left out of their topic because Kafka would not take them (--oversized-records skip), by table and reason."
    );
    describe_counter!(
        UNDECODABLE_VALUES,
        "Values the codec could not read, written as their PostgreSQL text, by table."
    );
    describe_counter!(
        KAFKA_TRANSACTIONS,
        "Kafka transactions committed (--exactly-once)."
    );
    describe_counter!(
        SKIPPED_TRANSACTIONS,
        "PostgreSQL transactions skipped after a restart because Kafka holds them committed already (--exactly-once)."
    );
    describe_counter!(
        HEARTBEATS,
        "Heartbeat records written on idle topics (--heartbeat-interval)."
    );
    describe_counter!(
        SNAPSHOT_ROWS,
        "Rows the initial snapshot wrote as op r records, by table."
    );
    describe_counter!(
        SKIPPED_TRUNCATES,
        "TRUNCATEs left out of the topic (--truncate skip), by table; caches following the topic keep the truncated rows."
    );
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    prometheus: Option<PrometheusHandle>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || async move { prometheus.map(|p| p.render()).unwrap_or_default() }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                if health.is_ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, health.why_not_ready())
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

/// Nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
