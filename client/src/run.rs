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
use crate::checkpoint::{self, Encoders};
use crate::config::{Config, Strategy};
use crate::error::{Error, Result};
use crate::follow::{Checkpointing, End, Filter, Follower, PartitionState};
use crate::seek::Start;
use crate::state::{PartitionPosition, Shared, StartedFrom, Status};
use crate::table::TableInfo;
use crate::ts::Ts;
use crate::{load, seek};
use tidemark_core::pg::snapshot::Snapshot;

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
    encoders: Option<Encoders<K, V>>,
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
            r = warm_start(&config, &shared, generation, encoders) => r,
        };
        match started {
            Ok(follower) => {
                served = true;
                failures = 0;
                let following = Instant::now();
                match follower.run(&mut stop).await {
                    End::Stopped => return,
                    End::Fail(e) => {
                        error!(table = %config.table, error = %e, "the cache stopped");
                        shared.fail(e);
                        return;
                    }
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

/// One warm start, up to the point where the follower takes over: from a checkpoint
/// when one is configured and usable (first warm start only), else from PostgreSQL.
async fn warm_start<K, V>(
    config: &Config,
    shared: &Arc<Shared<K, V>>,
    generation: u32,
    encoders: Option<Encoders<K, V>>,
) -> Result<Follower<K, V>>
where
    K: serde::de::DeserializeOwned + std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let started = Instant::now();
    shared.set_step("connecting to PostgreSQL");
    let mut pg = crate::postgres::connect(config).await?;
    let ts_column = match &config.strategy {
        Strategy::Snapshot => None,
        Strategy::Watermark { ts_column } => Some(ts_column.clone()),
    };
    shared.set_step("reading the topic's metadata from Kafka");
    let consumer = seek::consumer(config, shared.instance_id)?;
    let partitions = seek::partitions(&consumer, config).await?;
    let checkpointing = |table: &TableInfo, saved: Option<Vec<i64>>| {
        let dir = config.checkpoints.dir.clone()?;
        Some(Checkpointing {
            dir,
            every: config.checkpoints.every,
            encoders: encoders?,
            shape: checkpoint::shape_of(table),
            // The first one after an interval, like the rest: writing pauses the
            // follower, which a cache that just became ready should not do at once.
            last: Some(Instant::now()),
            saved,
        })
    };
    let mut refused = None;
    if generation == 1 && config.checkpoints.reads() {
        shared.set_step("reading a checkpoint");
        let table = TableInfo::read(&pg, &config.table, &config.value_format).await?;
        // Checkpoint rows carry generation 0, so that the sweep of a warm start
        // from PostgreSQL after a refusal removes whatever a refused one left.
        let applier = applier_for(config, shared, &table, ts_column.as_deref(), 0)?;
        let restored = match seek::compaction_lag(config, shared.instance_id).await {
            Ok(compaction_lag_ms) => {
                let target = checkpoint::Target {
                    table: &table,
                    topic: &config.topic,
                    value_format: &config.value_format.describe(),
                    consumer: &consumer,
                    partitions,
                    applier: &applier,
                    encoders,
                    compaction_lag_ms,
                };
                checkpoint::restore(&config.checkpoints, &target).await?
            }
            Err(e) => Err(vec![checkpoint::Refusal::Unreachable(format!(
                "cannot tell whether compaction removed records a checkpoint lacks: {e}"
            ))]),
        };
        match restored {
            Ok(restored) => {
                let header = &restored.header;
                info!(
                    table = %table.name,
                    checkpoint = %restored.location,
                    rows = restored.rows,
                    taken_ms = header.taken_ms,
                    seconds = started.elapsed().as_secs_f64(),
                    "rows loaded from a checkpoint; PostgreSQL's table was not read"
                );
                shared.counters.counts.checkpoint_loads.add(1);
                shared.counters.counts.warm_starts.add(1);
                *lock(&shared.started_from) = Some(StartedFrom::Checkpoint {
                    location: restored.location.clone(),
                    taken_ms: header.taken_ms,
                });
                let starts: Vec<Start> = header
                    .partitions
                    .iter()
                    .zip(&restored.highs)
                    .map(|(p, &high)| Start {
                        partition: p.partition,
                        offset: p.next_offset,
                        high,
                    })
                    .collect();
                let mut states = Vec::with_capacity(starts.len());
                for p in &header.partitions {
                    let filter = match &p.filter {
                        None => None,
                        Some(f) => Some(Filter {
                            snapshot: Arc::new(Snapshot::parse(&f.snapshot).map_err(|e| {
                                Error::Decode {
                                    table: table.name.to_string(),
                                    problem: format!("in checkpoint {}: {e}", restored.location),
                                }
                            })?),
                            insert_lsn: f.insert_lsn,
                        }),
                    };
                    states.push(PartitionState::restored(filter, p.last));
                }
                let saved = restored
                    .local
                    .then(|| starts.iter().map(|s| s.offset).collect());
                let checkpoints = checkpointing(&table, saved);
                let parts = Parts {
                    consumer,
                    table,
                    applier,
                    pg,
                    states,
                    starts,
                    start_lsn: header.start_lsn,
                    slot_marker: header.slot_marker.clone(),
                    seen_until: header.partitions.iter().map(|p| p.seen_until_ms).collect(),
                    checkpoints,
                };
                return follower(config, shared, parts, started);
            }
            Err(refusals) => {
                for r in &refusals {
                    shared.counters.counts.refused(r.kind());
                }
                let reasons: Vec<String> = refusals.iter().map(|r| r.to_string()).collect();
                let reasons = reasons.join("; ");
                if refusals
                    .iter()
                    .all(|r| matches!(r, checkpoint::Refusal::Missing(_)))
                {
                    info!(table = %config.table, reasons = %reasons, "no checkpoint yet; loading the table from PostgreSQL");
                } else {
                    warn!(table = %config.table, reasons = %reasons, "no usable checkpoint; loading the table from PostgreSQL");
                }
                refused = Some(reasons);
            }
        }
    }
    // Rows of an earlier warm start are the only ones a sweep can remove: a load into
    // an empty map skips the pass over every row (about 2 % of a warm start's time).
    let earlier_rows = !shared.map.is_empty();
    shared.set_step("loading the table from PostgreSQL (waiting for its lock, or copying)");
    let load::Shaped {
        table,
        applier,
        loaded,
    } = load::load(
        &mut pg,
        config,
        partitions,
        ts_column.as_deref(),
        |table: &TableInfo| applier_for(config, shared, table, ts_column.as_deref(), generation),
    )
    .await?;
    shared.counters.counts.loaded_rows.add(loaded.rows);
    shared
        .counters
        .load_readers
        .store(loaded.readers as u64, std::sync::atomic::Ordering::Relaxed);
    shared.counters.counts.warm_starts.add(1);
    *lock(&shared.started_from) = Some(StartedFrom::Postgres { refused });
    let removed = if earlier_rows { applier.sweep() } else { 0 };
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
    info!(
        table = %table.name,
        rows = loaded.rows,
        insert_lsn = loaded.insert_lsn,
        "loaded from PostgreSQL"
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
    let checkpoints = checkpointing(&table, None);
    let parts = Parts {
        consumer,
        table,
        applier,
        pg,
        states,
        starts,
        start_lsn: loaded.start_lsn,
        slot_marker: None,
        // A partition starts at the first record stamped at or after the seek time.
        seen_until: vec![seek_ms; partitions as usize],
        checkpoints,
    };
    follower(config, shared, parts, started)
}

/// What a warm start hands the follower.
struct Parts<K, V> {
    consumer: Arc<seek::Consumer>,
    table: TableInfo,
    applier: Applier<K, V>,
    pg: tokio_postgres::Client,
    states: Vec<PartitionState>,
    starts: Vec<Start>,
    start_lsn: u64,
    slot_marker: Option<tidemark_core::wire::envelope::SlotMarker>,
    seen_until: Vec<i64>,
    checkpoints: Option<Checkpointing<K, V>>,
}

/// Assigns the partitions at their start offsets and builds the follower.
fn follower<K, V>(
    config: &Config,
    shared: &Arc<Shared<K, V>>,
    parts: Parts<K, V>,
    started: Instant,
) -> Result<Follower<K, V>>
where
    K: std::hash::Hash + Eq + Clone,
{
    let Parts {
        consumer,
        table,
        applier,
        pg,
        states,
        starts,
        start_lsn,
        slot_marker,
        seen_until,
        checkpoints,
    } = parts;
    seek::assign(&consumer, &config.topic, &starts)?;
    shared.set_step(
        "catching up with the topic (reading Kafka up to the offsets it had at the start)",
    );
    let replay: i64 = starts.iter().map(|s| s.high - s.offset).sum();
    info!(
        table = %table.name,
        topic = %config.topic,
        partitions = starts.len(),
        records_to_replay = replay,
        "following the topic"
    );
    let n = starts.len();
    *lock(&shared.positions) = starts
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
        value_format: config.value_format.describe(),
        check_partitioning: applier.ts_column.is_none(),
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
        start_lsn,
        slot_marker,
        seen_until,
        checkpoints,
    })
}

/// Checks the table's shape against the settings and builds the applier for it.
fn applier_for<K, V>(
    config: &Config,
    shared: &Arc<Shared<K, V>>,
    table: &TableInfo,
    ts_column: Option<&str>,
    generation: u32,
) -> Result<Applier<K, V>> {
    for (setting, col) in [
        ("owner_column", config.owner_column.as_deref()),
        ("strategy", ts_column),
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
        ts_column: ts_column.map(str::to_owned),
        generation,
    })
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
