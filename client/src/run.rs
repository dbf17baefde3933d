//! The background task: warm start, follow, and warm start again when needed.
//!
//! A warm start connects to PostgreSQL, checks the topic, bulk-loads the table and
//! reads its shape in the same transaction (`load`), removes rows an earlier warm start left that the
//! new snapshot no longer has, fixes each partition's start offset and ready target
//! (`seek`), and, for the watermark strategy, re-queries the newest rows. Then the
//! follower (`follow`) runs until the cache is shut down or its offsets are lost.
//!
//! If the first warm start fails, the task ends and [`crate::Cache::ready`] returns
//! the error: a cache that never started should say why. The exception is a failed
//! Kafka request (metadata, offsets, watermarks): a busy broker can let one time out,
//! so the first warm start is tried [`FIRST_START_ATTEMPTS`] times, with a pause of
//! 2 s and then 4 s, before its error is returned; settings, table and PostgreSQL
//! errors are returned at once. Once a cache has served, a failed warm start is
//! retried with backoff while the old rows stay readable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_core::backoff::Backoff;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::apply::Applier;
use crate::config::{Config, Strategy};
use crate::error::{Error, Result};
use crate::follow::{End, Filter, Follower, PartitionState};
use crate::state::{PartitionPosition, Shared, Status};
use crate::table::TableInfo;
use crate::ts::Ts;
use crate::{load, seek};

/// The first and the longest pause between failed warm starts.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A warm start that followed the topic at least this long before it had to warm
/// start again resets the backoff.
const STEADY: Duration = Duration::from_secs(30);

/// How many times the first warm start is tried when a Kafka request fails.
const FIRST_START_ATTEMPTS: u32 = 3;

/// Runs the cache until `stop` turns true or its last handle is dropped.
pub(crate) async fn run<K, V>(
    config: Arc<Config>,
    shared: Arc<Shared<K, V>>,
    mut stop: watch::Receiver<bool>,
) where
    K: serde::de::DeserializeOwned + std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let mut generation = 0;
    let mut served = false;
    let mut failures = 0u32;
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    loop {
        generation += 1;
        let started = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            r = warm_start(&config, &shared, generation) => r,
        };
        match started {
            Ok(follower) => {
                served = true;
                failures = 0;
                let following = Instant::now();
                match follower.run(&mut stop).await {
                    End::Stopped => return,
                    End::Rewarm(reason) => {
                        shared.status.send_replace(Status::Rewarming);
                        // Warm starts that end soon after they began (the bridge has
                        // not switched to a new partition count yet, say) back off.
                        if following.elapsed() >= STEADY {
                            backoff.reset();
                            warn!(table = %config.table, reason, "warming up again");
                        } else {
                            let pause = backoff.pause();
                            warn!(table = %config.table, reason, retry_in_secs = pause.as_secs(), "warming up again");
                            tokio::select! {
                                _ = stop.wait_for(|s| *s) => return,
                                _ = tokio::time::sleep(pause) => {}
                            }
                        }
                    }
                }
            }
            Err(e) => {
                // Before the cache has served, only a failed Kafka request is retried.
                let retry = served
                    || (matches!(e, Error::Kafka { .. } | Error::KafkaUnreachable { .. })
                        && failures + 1 < FIRST_START_ATTEMPTS);
                if !retry {
                    error!(table = %config.table, error = %e, "the cache could not start");
                    shared.fail(e);
                    return;
                }
                failures += 1;
                let pause = backoff.pause();
                warn!(table = %config.table, error = %e, retry_in_secs = pause.as_secs(), "warm start failed");
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// One warm start, up to the point where the follower takes over.
async fn warm_start<K, V>(
    config: &Config,
    shared: &Arc<Shared<K, V>>,
    generation: u32,
) -> Result<Follower<K, V>>
where
    K: serde::de::DeserializeOwned + std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let started = Instant::now();
    shared.set_step("connecting to PostgreSQL");
    let mut pg = load::connect(config).await?;
    let ts_column = match &config.strategy {
        Strategy::Snapshot => None,
        Strategy::Watermark { ts_column } => Some(ts_column.clone()),
    };
    shared.set_step("reading the topic's metadata from Kafka");
    let consumer = seek::consumer(config, shared.instance_id)?;
    let partitions = seek::partitions(&consumer, config).await?;
    shared.set_step("loading the table from PostgreSQL (waiting for its lock, or copying)");
    let applier_for = |table: &TableInfo| {
        for (setting, col) in [
            ("owner_column", &config.owner_column),
            ("strategy", &ts_column),
        ] {
            if let Some(col) = col {
                if table.column(col).is_none() {
                    return Err(Error::Table {
                        table: table.name.to_string(),
                        problem: format!("it has no column {col} (generated columns do not count: the stream does not carry them)"),
                        fix: format!("set `{setting}` to a column of the table"),
                    });
                }
            }
        }
        Ok(Applier {
            shared: shared.clone(),
            toast_columns: table.toast_columns(),
            owner: config
                .owner_column
                .clone()
                .map(|c| (c, shared.instance_id.to_string())),
            ts_column: ts_column.clone(),
            generation,
        })
    };
    let load::Shaped {
        table,
        applier,
        loaded,
    } = load::load(
        &mut pg,
        &config.table,
        partitions,
        ts_column.as_deref(),
        applier_for,
    )
    .await?;
    shared.counters.counts.loaded_rows.add(loaded.rows);
    shared.counters.counts.warm_starts.add(1);
    let removed = applier.sweep();
    if removed > 0 {
        info!(table = %table.name, removed, "rows gone since the previous warm start removed");
    }
    let window = config.safety_window.as_millis() as i64;
    // Earlier than needed is safe; the oldest running transaction bounds it too.
    let seek_ms = match &ts_column {
        None => loaded.snapshot_ms.min(loaded.running_since_ms),
        Some(_) => loaded
            .max_ts
            .as_deref()
            .and_then(|m| Ts::from_value(&serde_json::Value::String(m.to_owned())))
            .and_then(|t| t.as_millis())
            .unwrap_or(loaded.snapshot_ms)
            .min(loaded.snapshot_ms)
            .min(loaded.running_since_ms),
    } - window;
    shared.set_step("finding the replay's start offsets in Kafka");
    let starts = seek::seek(&consumer, &config.topic, partitions, seek_ms).await?;
    if let Some(col) = &ts_column {
        load::requery(
            &pg,
            &table,
            &applier,
            partitions,
            col,
            loaded.max_ts.as_deref(),
        )
        .await?;
    }
    seek::assign(&consumer, &config.topic, &starts)?;
    shared.set_step(
        "catching up with the topic (reading Kafka up to the offsets it had at the start)",
    );
    let replay: i64 = starts.iter().map(|s| s.high - s.offset).sum();
    info!(
        table = %table.name,
        topic = %config.topic,
        rows = loaded.rows,
        insert_lsn = loaded.insert_lsn,
        partitions,
        records_to_replay = replay,
        "following the topic"
    );
    let snapshot = Arc::new(loaded.snapshot);
    let states = (0..partitions)
        .map(|_| {
            PartitionState::new((ts_column.is_none() && config.xid_filter).then(|| Filter {
                snapshot: snapshot.clone(),
                insert_lsn: loaded.insert_lsn,
            }))
        })
        .collect();
    let n = partitions as usize;
    *shared.positions.lock().unwrap_or_else(|p| p.into_inner()) = starts
        .iter()
        .map(|s| PartitionPosition {
            partition: s.partition,
            next_offset: s.offset,
            high_watermark: s.high,
            ready_at: s.high,
        })
        .collect();
    Ok(Follower {
        consumer,
        topic: config.topic.clone(),
        table,
        applier,
        pg,
        states,
        next: starts.iter().map(|s| s.offset).collect(),
        at_end: vec![false; n],
        high: starts.iter().map(|s| s.high).collect(),
        starts,
        ready: false,
        started,
        last_error_log: None,
        check_partitioning: ts_column.is_none(),
        start_lsn: loaded.start_lsn,
    })
}
