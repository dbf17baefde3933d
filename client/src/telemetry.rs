//! The cache's figures, kept for [`crate::Cache::stats`] and exported through the
//! `metrics` facade, so the host service's exporter (Prometheus or any other)
//! publishes them without tidemark choosing one. Every metric carries a `table`
//! label; the lag gauge also a `partition` label.
//!
//! | metric | kind |
//! |---|---|
//! | `tidemark_client_rows_loaded_total` | counter: rows read by bulk loads |
//! | `tidemark_client_warm_start_seconds` | histogram: load start to ready |
//! | `tidemark_client_warm_starts_total` | counter |
//! | `tidemark_client_applied_total` | counter: changes applied from the stream |
//! | `tidemark_client_skipped_in_snapshot_total` | counter: records already in the loaded snapshot |
//! | `tidemark_client_duplicates_total` | counter: replayed records dropped |
//! | `tidemark_client_stale_total` | counter: changes older than the cached row (watermark strategy) |
//! | `tidemark_client_bad_records_total` | counter: records that could not be used |
//! | `tidemark_client_unfit_rows_total` | counter: keys removed because their new row does not fit the value type |
//! | `tidemark_client_toast_rereads_total` | counter: rows re-read from PostgreSQL for unchanged TOAST values the cache had no copy of |
//! | `tidemark_client_checkpoints_written_total` | counter: checkpoints written |
//! | `tidemark_client_checkpoint_loads_total` | counter: warm starts from a checkpoint |
//! | `tidemark_client_checkpoint_refusals_total` | counter: checkpoints not used, by `reason` (missing, damaged, incompatible, too_old, unreachable) |
//! | `tidemark_client_lag_records` | gauge: high watermark minus next offset, per partition |

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A count kept locally and exported.
#[derive(Debug)]
pub(crate) struct Count {
    value: AtomicU64,
    exported: metrics::Counter,
}

impl Count {
    fn new(name: &'static str, table: &str) -> Self {
        Count {
            value: AtomicU64::new(0),
            exported: metrics::counter!(name, "table" => table.to_owned()),
        }
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Relaxed);
        self.exported.increment(n);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.value.load(Relaxed)
    }
}

/// The counts of one cache.
#[derive(Debug)]
pub(crate) struct Counts {
    pub loaded_rows: Count,
    pub applied: Count,
    pub skipped_in_snapshot: Count,
    pub duplicates: Count,
    pub stale: Count,
    pub bad_records: Count,
    pub unfit_rows: Count,
    pub toast_rereads: Count,
    pub warm_starts: Count,
    pub checkpoints_written: Count,
    pub checkpoint_loads: Count,
    pub checkpoint_refusals: Count,
    warm_start_seconds: metrics::Histogram,
    table: String,
}

impl Counts {
    /// Counts for `table`, registered with the `metrics` recorder.
    pub fn new(table: &str) -> Self {
        Counts {
            loaded_rows: Count::new("tidemark_client_rows_loaded_total", table),
            applied: Count::new("tidemark_client_applied_total", table),
            skipped_in_snapshot: Count::new("tidemark_client_skipped_in_snapshot_total", table),
            duplicates: Count::new("tidemark_client_duplicates_total", table),
            stale: Count::new("tidemark_client_stale_total", table),
            bad_records: Count::new("tidemark_client_bad_records_total", table),
            unfit_rows: Count::new("tidemark_client_unfit_rows_total", table),
            toast_rereads: Count::new("tidemark_client_toast_rereads_total", table),
            warm_starts: Count::new("tidemark_client_warm_starts_total", table),
            checkpoints_written: Count::new("tidemark_client_checkpoints_written_total", table),
            checkpoint_loads: Count::new("tidemark_client_checkpoint_loads_total", table),
            // Counted here without a reason; `refused` exports it with one.
            checkpoint_refusals: Count {
                value: AtomicU64::new(0),
                exported: metrics::Counter::noop(),
            },
            warm_start_seconds: metrics::histogram!("tidemark_client_warm_start_seconds", "table" => table.to_owned()),
            table: table.to_owned(),
        }
    }

    /// Records how long a warm start took, from load start to ready.
    pub fn warm_start_took(&self, seconds: f64) {
        self.warm_start_seconds.record(seconds);
    }

    /// Counts a checkpoint not used, by reason.
    pub fn refused(&self, reason: &'static str) {
        self.checkpoint_refusals.add(1);
        metrics::counter!("tidemark_client_checkpoint_refusals_total", "table" => self.table.clone(), "reason" => reason)
            .increment(1);
    }

    /// Publishes how long Kafka has not answered the follower (0 while it answers).
    pub fn kafka_silent(&self, seconds: f64) {
        metrics::gauge!("tidemark_client_kafka_silent_seconds", "table" => self.table.clone())
            .set(seconds);
    }

    /// Publishes a partition's lag in records.
    pub fn lag(&self, partition: i32, records: i64) {
        metrics::gauge!("tidemark_client_lag_records", "table" => self.table.clone(), "partition" => partition.to_string())
            .set(records as f64);
    }
}
