//! The consumer loop: reads every partition from the warm start's offsets and
//! applies each change that the loaded snapshot does not already contain.
//!
//! For each record, in order:
//! 1. A tombstone (null value) is placed in the stream by the stamp the bridge gives
//!    it (the position and transaction of its delete) and applied as a delete unless
//!    that delete was already applied or is in the snapshot; compaction may have
//!    removed the delete and kept the tombstone. Unstamped tombstones are ignored.
//!    A slot marker (the bridge created its slot anew) beyond the WAL position at
//!    which the load began ends the loop with [`End::Rewarm`]: changes between the
//!    old slot and the new one never reached the topic.
//!    A record of the bridge's initial snapshot (an op `r` row or the marker that
//!    ends a table's snapshot, both with the snapshot it was read in) is skipped when
//!    the load's snapshot contains that snapshot, and otherwise ends the loop with
//!    [`End::Rewarm`]: the load is older than the topic's start for the table, and
//!    rows deleted in between are in no record.
//! 2. A record that is not an envelope of this table is counted, logged with its
//!    partition and offset, and skipped.
//! 3. De-duplication: the bridge replays from its slot after a crash, so a
//!    partition may repeat records. Records reach a partition in the order of their
//!    [`Envelope::position`] `(commit_lsn, lsn, seq)`, which strictly increases (the
//!    bridge numbers the records that share an LSN, such as the rows of one `COPY`
//!    page or the delete and create of a primary-key change, in `seq`), so a record
//!    whose position is not above the last one applied there is a replay.
//! 4. Snapshot filter (snapshot strategy): a record whose transaction is visible in
//!    the load snapshot is already in the map and is skipped. Once a record's
//!    `commit_lsn` is at or past the insert LSN read after the load, the partition's
//!    later records all committed after the snapshot and the filter is switched off.
//! 5. Apply: upsert (merging unchanged TOAST columns from the cached row, or from a
//!    re-read of the row), delete, or truncate of the keys this partition owns.
//!
//! The cache is ready when every partition has reached the high watermark sampled
//! after the load. An offset that is no longer on the broker (retention) ends the
//! loop with [`End::Rewarm`]: the cache warm-starts again rather than diverge. A
//! broker outage is waited out: librdkafka reconnects and resumes at its position.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tracing::{debug, info, warn};

use crate::apply::{merge_toast, typed_key, Applier, Rejected};
use crate::checkpoint::{self, format, Encoders};
use crate::error::Error;
use crate::seek::{Consumer, Start};
use crate::state::{Origin, PartitionPosition, Status};
use crate::table::TableInfo;
use rdkafka::message::Headers as _;
use tidemark_core::pg::snapshot::Snapshot;
use tidemark_core::wire::connect;
use tidemark_core::wire::debezium::FORMAT_HEADER;
use tidemark_core::wire::envelope::{
    Position, SlotMarker, TombstoneStamp, SLOT_MARKER_HEADER, SNAPSHOT_HEADER, TOMBSTONE_HEADER,
};
use tidemark_core::wire::partitioner::partition_of;
use tidemark_core::wire::{Envelope, Op, Row};

/// How often positions, lag and readiness are refreshed while records flow.
const TICK: Duration = Duration::from_secs(2);

/// How often a persisting consumer error is logged at `warn`.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(30);

/// Why the loop ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The cache was shut down.
    Stopped,
    /// The cache must warm-start again; the reason is for the log.
    Rewarm(String),
    /// The cache cannot follow the topic (its records are in another value format).
    Fail(crate::error::Error),
}

/// The snapshot filter of one partition.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub snapshot: Arc<Snapshot>,
    pub insert_lsn: u64,
}

/// Per-partition de-duplication and snapshot filter.
#[derive(Debug, Default)]
pub(crate) struct PartitionState {
    /// `None` once switched off (or for the watermark strategy).
    filter: Option<Filter>,
    /// The load's snapshot, also after the filter is off; `None` for the watermark
    /// strategy and for a checkpoint restored with the filter off.
    loaded: Option<Arc<Snapshot>>,
    last: Option<Position>,
}

impl PartitionState {
    pub fn new(filter: Option<Filter>) -> Self {
        Self::restored(filter, None)
    }

    /// The state a checkpoint saved.
    pub fn restored(filter: Option<Filter>, last: Option<Position>) -> Self {
        PartitionState {
            loaded: filter.as_ref().map(|f| f.snapshot.clone()),
            filter,
            last,
        }
    }

    /// Whether the loaded rows hold everything the bridge's snapshot `theirs` read
    /// (an op `r` record of its initial snapshot, or the marker that ends it).
    pub fn holds(&self, theirs: &Snapshot) -> bool {
        self.loaded
            .as_ref()
            .is_some_and(|ours| ours.contains(theirs))
    }

    /// The state as a checkpoint saves it.
    pub fn saved(
        &self,
        partition: i32,
        next_offset: i64,
        seen_until_ms: i64,
    ) -> format::PartitionState {
        format::PartitionState {
            partition,
            next_offset,
            seen_until_ms,
            last: self.last,
            filter: self.filter.as_ref().map(|f| format::Filter {
                snapshot: f.snapshot.to_string(),
                insert_lsn: f.insert_lsn,
            }),
        }
    }

    /// Whether the record at `pos` replays one already seen on this partition;
    /// remembers it if not.
    pub fn is_duplicate(&mut self, pos: Position) -> bool {
        if self.last.is_some_and(|last| pos <= last) {
            return true;
        }
        self.last = Some(pos);
        false
    }

    /// Whether the record's transaction is already in the loaded snapshot. Errs when
    /// the filter is on and the record has no transaction id.
    pub fn in_snapshot(
        &mut self,
        commit_lsn: Option<u64>,
        xid: Option<u64>,
    ) -> Result<bool, &'static str> {
        let Some(filter) = &self.filter else {
            return Ok(false);
        };
        if commit_lsn.is_some_and(|c| c >= filter.insert_lsn) {
            self.filter = None;
            return Ok(false);
        }
        match xid {
            Some(x) => Ok(filter.snapshot.visible(x as u32)),
            None => Err("the record has no source.txId, which the snapshot strategy needs; use the watermark strategy for topics another tool writes"),
        }
    }

    /// Whether the filter is still on.
    pub fn filtering(&self) -> bool {
        self.filter.is_some()
    }
}

/// A record, copied out of librdkafka's buffer so the loop can await while using it.
struct Record {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    /// The envelope; `Ok(None)` for a tombstone.
    value: Result<Option<Envelope>, String>,
    /// A tombstone's stamp: the delete it follows (the bridge writes one).
    stamp: Option<TombstoneStamp>,
    /// A slot marker: the bridge created its slot anew.
    marker: Option<SlotMarker>,
    /// The snapshot of the bridge's initial snapshot that wrote the record (an op
    /// `r` record, or the marker that ends a table's snapshot); `Err` when the header
    /// does not parse.
    snapshot: Option<Result<Snapshot, String>>,
    /// The record's timestamp (the commit time, as the bridge writes it).
    timestamp_ms: Option<i64>,
    /// The value format the record names ([`FORMAT_HEADER`]), when it names one.
    format: Option<String>,
    /// Whether the key and value are wrapped as `{"schema": …, "payload": …}`, as the
    /// format header says (`--value-schema`).
    wrapped: bool,
}

impl Record {
    fn read<M: Message>(m: &M) -> Self {
        let header = |name: &str| {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value.map(<[u8]>::to_vec))
            })
        };
        // A heartbeat (`--heartbeat-interval`) is a tombstone of a key no row has,
        // without a stamp: `tombstone` skips it, and its timestamp (the server's
        // time) still counts for `seen_until`.
        let heartbeat = header(tidemark_core::wire::heartbeat::HEARTBEAT_HEADER).is_some();
        let stamp = header(TOMBSTONE_HEADER)
            .filter(|_| !heartbeat)
            .and_then(|v| serde_json::from_slice(&v).ok());
        let marker: Option<SlotMarker> =
            header(SLOT_MARKER_HEADER).and_then(|v| serde_json::from_slice(&v).ok());
        let snapshot = header(SNAPSHOT_HEADER)
            .map(|v| Snapshot::parse(&String::from_utf8_lossy(&v)).map_err(|e| e.to_string()));
        let format = header(FORMAT_HEADER).map(|v| String::from_utf8_lossy(&v).into_owned());
        let wrapped = format.as_deref().is_some_and(connect::header_says_wrapped);
        if marker.is_some() {
            return Record {
                partition: m.partition(),
                offset: m.offset(),
                timestamp_ms: m.timestamp().to_millis(),
                format,
                wrapped,
                stamp: None,
                marker,
                snapshot: None,
                key: None,
                value: Ok(None),
            };
        }
        Record {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            format,
            wrapped,
            stamp,
            marker: None,
            snapshot,
            key: m.key().map(<[u8]>::to_vec),
            value: match m.payload() {
                None => Ok(None),
                Some(bytes) => connect::read::<Envelope>(bytes, wrapped)
                    .map(Some)
                    .map_err(|e| format!("not a change envelope: {e}")),
            },
        }
    }
}

/// The consumer loop of one warm start.
pub(crate) struct Follower<K, V> {
    pub consumer: Arc<Consumer>,
    pub topic: String,
    /// [`ValueFormat::describe`](tidemark_core::wire::ValueFormat::describe) of the
    /// cache's format, which a record's [`FORMAT_HEADER`] must match.
    pub value_format: String,
    pub table: TableInfo,
    pub applier: Applier<K, V>,
    /// For re-reading rows whose unchanged TOAST values the cache does not have.
    pub pg: Client,
    pub states: Vec<PartitionState>,
    pub starts: Vec<Start>,
    /// The next offset to consume, per partition.
    pub next: Vec<i64>,
    /// Partitions that reported end-of-partition since the warm start.
    pub at_end: Vec<bool>,
    pub high: Vec<i64>,
    pub ready: bool,
    pub started: Instant,
    /// When a consumer error was last logged at `warn`.
    pub last_error_log: Option<Instant>,
    /// Whether a change must sit on its key's partition under the current count
    /// (tidemark's topics; see `handle`).
    pub check_partitioning: bool,
    /// The WAL position sampled just before the load: a slot marker beyond it means
    /// changes the load did not see may be missing from the topic.
    pub start_lsn: u64,
    /// The newest slot marker passed, for checkpoints.
    pub slot_marker: Option<SlotMarker>,
    /// Per partition, a time (ms since the epoch) such that every record with an
    /// earlier timestamp is below `next`: the greatest timestamp read, or the time
    /// the partition was last seen caught up. Checkpoints carry it, so that a restore
    /// can tell whether compaction may have touched the records after them.
    pub seen_until: Vec<i64>,
    /// Writing checkpoints, when the cache has a checkpoint directory.
    pub checkpoints: Option<Checkpointing<K, V>>,
}

/// How the follower writes checkpoints.
pub(crate) struct Checkpointing<K, V> {
    pub dir: std::path::PathBuf,
    pub every: Duration,
    pub encoders: Encoders<K, V>,
    pub shape: format::Shape,
    /// When the last checkpoint was written (or found current, or the follower
    /// started); `None`: due now.
    pub last: Option<Instant>,
    /// The offsets of the newest checkpoint in `dir`, when this cache wrote or
    /// loaded it: unchanged offsets need no new one.
    pub saved: Option<Vec<i64>>,
}

/// What one refresh read from the broker: the topic's partition count and each
/// partition's high watermark (`None` where the broker did not answer, or the
/// requests failed), asked at `asked_ms`.
struct Watermarks {
    asked_ms: i64,
    /// The follower's next offsets when it asked: the lag figures count from them,
    /// so records applied while the requests ran do not make the lag look smaller.
    next: Vec<i64>,
    count: Option<i32>,
    highs: Vec<Option<i64>>,
}

/// The result of the refresh in flight; never ready when there is none.
async fn finished(
    refreshing: &mut Option<JoinHandle<Watermarks>>,
) -> Result<Watermarks, tokio::task::JoinError> {
    match refreshing {
        Some(requests) => requests.await,
        None => std::future::pending().await,
    }
}

impl<K, V> Follower<K, V>
where
    K: serde::de::DeserializeOwned + std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    /// Consumes until stopped or until a warm start is needed.
    pub async fn run(mut self, stop: &mut watch::Receiver<bool>) -> End {
        let consumer = self.consumer.clone();
        // The warm start just talked to Kafka.
        self.applier
            .shared
            .counters
            .kafka_answered_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
        // The first refresh comes a tick after the start, not at once: it asks the
        // broker for every partition's watermarks one by one, each answered only
        // after the consumer's pending fetch (up to `fetch.wait.max.ms`) on the same
        // connection, and done first it held back a warm start with records to
        // replay by about 0.4 s on three partitions (more with more partitions). The
        // positions the warm start found are published already.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.check_ready();
        // The refresh's requests run beside the loop, which goes on applying records:
        // each waits on the consumer's connection behind its pending fetch (up to
        // `fetch.wait.max.ms`), one partition after another, and awaited here they
        // held every record back for that long at each tick.
        let mut refreshing: Option<JoinHandle<Watermarks>> = None;
        let end = loop {
            let record = tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        if self.ready {
                            self.checkpoint().await;
                        }
                        break End::Stopped;
                    }
                    continue;
                }
                read = finished(&mut refreshing) => {
                    refreshing = None;
                    // Requests that panicked count as unanswered.
                    let read = read.unwrap_or_else(|_| Watermarks {
                        asked_ms: chrono::Utc::now().timestamp_millis(),
                        next: self.next.clone(),
                        count: None,
                        highs: Vec::new(),
                    });
                    if let Some(end) = self.refreshed(read) {
                        break end;
                    }
                    let due = self.checkpoints.as_ref().is_some_and(|c| {
                        c.last.is_none_or(|t| t.elapsed() >= c.every)
                    });
                    if self.ready && due {
                        self.checkpoint().await;
                    }
                    continue;
                }
                _ = tick.tick(), if refreshing.is_none() => {
                    refreshing = Some(self.refresh());
                    continue;
                }
                received = consumer.recv() => match received {
                    Ok(m) => Record::read(&m),
                    Err(e) => match self.on_error(e) {
                        Some(end) => break end,
                        None => continue,
                    },
                },
            };
            if let Some(end) = self.handle(record).await {
                break end;
            }
            self.check_ready();
        };
        // Its requests hold the consumer; they end within their timeouts.
        if let Some(requests) = refreshing {
            let _ = requests.await;
        }
        end
    }

    /// Handles a consumer error; `Some` when the loop must end.
    fn on_error(&mut self, e: KafkaError) -> Option<End> {
        match &e {
            KafkaError::PartitionEOF(p) => {
                if let Some(flag) = self.at_end.get_mut(*p as usize) {
                    *flag = true;
                }
                // Every record written before now has been read on this partition.
                let now_ms = chrono::Utc::now().timestamp_millis();
                if let Some(seen) = self.seen_until.get_mut(*p as usize) {
                    *seen = (*seen).max(now_ms);
                }
                self.check_ready();
                None
            }
            KafkaError::MessageConsumption(
                RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset,
            ) => Some(End::Rewarm(format!(
                "the offsets the cache needs are gone from the broker ({e})"
            ))),
            _ => {
                // librdkafka retries by itself; say so now and then, not per retry.
                if self
                    .last_error_log
                    .is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY)
                {
                    self.last_error_log = Some(Instant::now());
                    warn!(topic = %self.topic, error = %e, "consumer error; retrying");
                } else {
                    debug!(error = %e, "consumer error; retrying");
                }
                None
            }
        }
    }

    /// A tombstone. The bridge stamps each with the position and transaction of the
    /// delete it follows, so it is placed in the stream like that delete: dropped as a
    /// replay when the delete (or anything later) was already applied on the
    /// partition, skipped when the snapshot holds the delete, and otherwise applied
    /// as a delete of its key. That matters when compaction removed the delete and
    /// kept the tombstone. A tombstone without a stamp, such as a heartbeat, is
    /// ignored (and is no bad record).
    fn tombstone(&mut self, rec: &Record) {
        // The watermark strategy orders by the ts column, which a tombstone lacks.
        let Some(stamp) = rec.stamp.filter(|_| self.applier.ts_column.is_none()) else {
            return;
        };
        let state = &mut self.states[rec.partition as usize];
        if state.is_duplicate(stamp.position())
            || state.in_snapshot(Some(stamp.commit_lsn), Some(stamp.tx_id)) != Ok(false)
        {
            return;
        }
        let key = rec
            .key
            .as_deref()
            .and_then(|k| connect::read::<Row>(k, rec.wrapped).ok())
            .and_then(|k| typed_key::<K>(&k).ok());
        match key {
            Some(key) => {
                if self.applier.delete(key, None, Origin::Stream).is_ok() {
                    self.applier.count_applied(stamp.ts_ms);
                }
            }
            None => self.bad(rec, "a tombstone whose key does not fit the key type"),
        }
    }

    /// Applies one record; `Some` when the loop must end.
    async fn handle(&mut self, rec: Record) -> Option<End> {
        if let Some(format) = rec.format.as_deref().filter(|f| *f != self.value_format) {
            return Some(End::Fail(Error::Config {
                field: "value_format",
                problem: format!(
                    "the records of {} are in the value format {format} (record header {FORMAT_HEADER}, the bridge's --value-format and its modes), but the cache is built for {}; build the cache with Builder::value_format (and Builder::value_schema for --value-schema) matching the bridge's settings",
                    self.topic, self.value_format
                ),
            }));
        }
        let p = rec.partition as usize;
        if p >= self.states.len() {
            return Some(End::Rewarm(format!(
                "a record on partition {p}, beyond the {} partitions the topic had at the warm start",
                self.states.len()
            )));
        }
        self.next[p] = self.next[p].max(rec.offset + 1);
        if let Some(ts) = rec.timestamp_ms {
            self.seen_until[p] = self.seen_until[p].max(ts);
        }
        if let Some(marker) = &rec.marker {
            if marker.lsn > self.start_lsn {
                return Some(End::Rewarm(format!(
                    "the bridge created slot {} anew at {:X}/{:X}, after this cache's load began: changes before it may never have reached the topic",
                    marker.slot,
                    marker.lsn >> 32,
                    marker.lsn & 0xffff_ffff
                )));
            }
            if self.slot_marker.as_ref().is_none_or(|m| m.lsn < marker.lsn) {
                self.slot_marker = Some(marker.clone());
            }
            return None;
        }
        // The bridge's initial snapshot (the watermark strategy applies its rows by
        // their ts column, as any other).
        if let Some(theirs) = rec
            .snapshot
            .as_ref()
            .filter(|_| self.applier.ts_column.is_none())
        {
            match theirs {
                Ok(theirs) if self.states[p].holds(theirs) => {
                    if rec.value.as_ref().is_ok_and(Option::is_some) {
                        self.applier.shared.counters.counts.skipped_in_snapshot.add(1);
                    }
                    return None;
                }
                Ok(theirs) => {
                    return Some(End::Rewarm(format!(
                        "the bridge's initial snapshot of this table ({theirs}) is newer than this cache's load: the changes between the two are in no record, only their result; loading again"
                    )))
                }
                Err(problem) => {
                    self.bad(&rec, problem);
                    return None;
                }
            }
        }
        let env = match &rec.value {
            Ok(None) => {
                self.tombstone(&rec);
                return None;
            }
            Ok(Some(env)) => env,
            Err(problem) => {
                self.bad(&rec, problem);
                return None;
            }
        };
        let name = &self.table.name;
        if env.source.schema != name.schema || env.source.table != name.table {
            let problem = format!(
                "belongs to table {}.{}, not {name}",
                env.source.schema, env.source.table
            );
            self.bad(&rec, &problem);
            return None;
        }
        let counters = &self.applier.shared.counters;
        let state = &mut self.states[p];
        if let Some(pos) = env.position() {
            if state.is_duplicate(pos) {
                counters.counts.duplicates.add(1);
                return None;
            }
        }
        match state.in_snapshot(env.source.commit_lsn, env.source.tx_id) {
            Ok(true) => {
                counters.counts.skipped_in_snapshot.add(1);
                return None;
            }
            Ok(false) => {}
            Err(problem) => {
                self.bad(&rec, problem);
                return None;
            }
        }
        if self.check_partitioning && env.op != Op::Truncate {
            let n = self.states.len() as i32;
            let owner = rec.key.as_deref().map(|k| partition_of(k, n));
            if owner.is_some_and(|o| o != rec.partition) {
                return Some(End::Rewarm(format!(
                    "partition {} holds a change the snapshot does not, written for another partition count (its key belongs on partition {} of {n}); a snapshot after the bridge's switch is needed",
                    rec.partition,
                    owner.unwrap_or_default()
                )));
            }
        }
        let commit_ms = env.source.ts_ms;
        if env.op == Op::Truncate {
            let n = self.applier.truncate(rec.partition, Origin::Stream);
            info!(table = %name, partition = rec.partition, keys = n, "truncate applied");
            self.applier.count_applied(commit_ms);
            return None;
        }
        let key_row = match rec
            .key
            .as_deref()
            .map(|k| connect::read::<Row>(k, rec.wrapped))
        {
            Some(Ok(k)) => k,
            Some(Err(e)) => {
                self.bad(&rec, &format!("the key is not a JSON object: {e}"));
                return None;
            }
            None => {
                self.bad(&rec, "the record has no key");
                return None;
            }
        };
        let key = match typed_key::<K>(&key_row) {
            Ok(k) => k,
            Err(e) => {
                self.bad(&rec, &format!("the key does not fit the key type: {e}"));
                return None;
            }
        };
        let outcome = match env.op {
            Op::Delete => self
                .applier
                .delete(key, env.before.as_ref(), Origin::Stream),
            Op::Create | Op::Update | Op::Read => {
                let Some(mut after) = env.after.clone() else {
                    self.bad(&rec, "a create or update without an after row");
                    return None;
                };
                if !env.unchanged_toast.is_empty() {
                    let cached = self.applier.cached_toast(&key);
                    let missing = merge_toast(&mut after, &env.unchanged_toast, cached.as_ref());
                    if !missing.is_empty() {
                        counters.counts.toast_rereads.add(1);
                        match self.table.reread(&self.pg, &key_row).await {
                            Ok(Some(current)) => {
                                for col in missing {
                                    let v = current.get(&col).cloned().unwrap_or_default();
                                    after.insert(col, v);
                                }
                            }
                            Ok(None) => {
                                // The row is gone; its delete is later on this partition.
                                debug!(
                                    partition = rec.partition,
                                    offset = rec.offset,
                                    "row to re-read is gone"
                                );
                                return None;
                            }
                            Err(e) => {
                                return Some(End::Rewarm(format!(
                                    "cannot re-read a row for its unchanged TOAST columns: {e}"
                                )))
                            }
                        }
                    }
                }
                let origin = self.applier.origin_of(&after);
                let result = self
                    .applier
                    .upsert(key.clone(), after, rec.partition, origin);
                if let Err(Rejected::Type { what: "row", error }) = &result {
                    // No stale value: the key goes, and the cache says it is degraded.
                    let _ = self.applier.delete(key, None, Origin::Unfit);
                    counters.counts.unfit_rows.add(1);
                    warn!(
                        table = %name,
                        partition = rec.partition,
                        offset = rec.offset,
                        error = %error,
                        "a changed row does not fit the value type; its key is removed and the cache is degraded. Fix: make the value type match the table"
                    );
                    return None;
                }
                result
            }
            Op::Truncate => unreachable!("handled above"),
        };
        match outcome {
            Ok(()) => self.applier.count_applied(commit_ms),
            Err(Rejected::Stale) => {
                counters.counts.stale.add(1);
            }
            Err(Rejected::Type { what, error }) => {
                self.bad(
                    &rec,
                    &format!("the {what} does not fit the {what} type: {error}"),
                );
            }
        }
        None
    }

    fn bad(&self, rec: &Record, problem: &str) {
        self.applier.shared.counters.counts.bad_records.add(1);
        warn!(
            topic = %self.topic,
            partition = rec.partition,
            offset = rec.offset,
            problem,
            "bad record skipped"
        );
    }

    /// Marks the cache ready once every partition reached its target.
    fn check_ready(&mut self) {
        if self.ready {
            return;
        }
        let caught_up = self.starts.iter().all(|s| {
            self.at_end[s.partition as usize] || self.next[s.partition as usize] >= s.high
        });
        if caught_up {
            self.ready = true;
            self.publish_positions();
            self.applier
                .shared
                .counters
                .counts
                .warm_start_took(self.started.elapsed().as_secs_f64());
            info!(
                table = %self.table.name,
                rows = self.applier.shared.map.len(),
                seconds = self.started.elapsed().as_secs_f64(),
                "cache ready"
            );
            self.applier.shared.status.send_replace(Status::Ready);
        }
    }

    /// Starts reading the topic's partition count and high watermarks (for the lag
    /// figures), on the blocking pool; [`Follower::refreshed`] takes the result.
    fn refresh(&self) -> JoinHandle<Watermarks> {
        let (topic, consumer) = (self.topic.clone(), self.consumer.clone());
        let n = self.starts.len() as i32;
        let next = self.next.clone();
        tokio::task::spawn_blocking(move || {
            let asked_ms = chrono::Utc::now().timestamp_millis();
            let count = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .ok()
                .and_then(|md| md.topics().first().map(|t| t.partitions().len() as i32))
                .filter(|&c| c > 0);
            let highs = (0..n)
                .map(|p| {
                    consumer
                        .fetch_watermarks(&topic, p, Duration::from_secs(2))
                        .map(|(_, h)| h)
                        .ok()
                })
                .collect();
            Watermarks {
                asked_ms,
                next,
                count,
                highs,
            }
        })
    }

    /// Takes a refresh's result and publishes positions; ends the loop (`Some`) when
    /// the topic's partition count changed.
    fn refreshed(&mut self, read: Watermarks) -> Option<End> {
        let Watermarks {
            asked_ms,
            next: asked_next,
            count,
            highs,
        } = read;
        let n = self.starts.len() as i32;
        if let Some(count) = count.filter(|&c| c != n) {
            return Some(End::Rewarm(format!(
                "the topic now has {count} partitions, not {n}: keys move to new partitions"
            )));
        }
        // A broker that accepts connections and never answers leaves the lag figures
        // at their last values: say so, in the stats, a gauge and the log.
        let answered = !highs.is_empty() && highs.iter().all(Option::is_some);
        let counters = &self.applier.shared.counters;
        let now_ms = chrono::Utc::now().timestamp_millis();
        if answered || counters.kafka_answered_ms.load(Ordering::Relaxed) == 0 {
            counters.kafka_answered_ms.store(now_ms, Ordering::Relaxed);
        }
        let silent_ms = now_ms - counters.kafka_answered_ms.load(Ordering::Relaxed);
        counters.counts.kafka_silent(silent_ms as f64 / 1000.0);
        if !answered
            && self
                .last_error_log
                .is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY)
        {
            self.last_error_log = Some(Instant::now());
            warn!(topic = %self.topic, silent_secs = silent_ms / 1000, "Kafka does not answer the cache's watermark requests; its lag figures are stale");
        }
        for (p, h) in highs.into_iter().enumerate() {
            if let (Some(h), Some(slot)) = (h, self.high.get_mut(p)) {
                *slot = h;
                // Every record written before the refresh asked is below `h`.
                if self.next[p] >= h {
                    self.seen_until[p] = self.seen_until[p].max(asked_ms);
                }
            }
        }
        self.publish_positions();
        let counts = &self.applier.shared.counters.counts;
        for (p, (&high, &next)) in self.high.iter().zip(&asked_next).enumerate() {
            counts.lag(p as i32, (high - next).max(0));
        }
        let filtering = self.states.iter().filter(|s| s.filtering()).count();
        debug!(table = %self.table.name, filtering, "positions refreshed");
        None
    }

    /// Writes a checkpoint of the map and the follower's state, unless the newest
    /// one already holds these offsets. The loop waits for it, so no record is
    /// applied meanwhile (readers go on). A failure is logged, never fatal.
    async fn checkpoint(&mut self) {
        let Some(c) = &mut self.checkpoints else {
            return;
        };
        if c.saved.as_ref() == Some(&self.next) {
            c.last = Some(Instant::now());
            return;
        }
        let shared = self.applier.shared.clone();
        let header = format::Header {
            table: self.table.name.to_string(),
            topic: self.topic.clone(),
            shape: c.shape.clone(),
            partitions: self
                .states
                .iter()
                .zip(&self.next)
                .enumerate()
                .map(|(p, (s, &next))| s.saved(p as i32, next, self.seen_until[p]))
                .collect(),
            start_lsn: self.start_lsn,
            slot_marker: self.slot_marker.clone(),
            taken_ms: chrono::Utc::now().timestamp_millis(),
            instance: shared.instance_id.to_string(),
            value_fields: Vec::new(),
            value_format: self.value_format.clone(),
        };
        let (encoders, dir) = (c.encoders, c.dir.clone());
        let started = Instant::now();
        let written =
            tokio::task::spawn_blocking(move || checkpoint::take(&shared, encoders, &dir, &header))
                .await
                .unwrap_or_else(|e| {
                    Err(std::io::Error::other(format!("the writer panicked: {e}")))
                });
        c.last = Some(Instant::now());
        match written {
            Ok((path, rows)) => {
                c.saved = Some(self.next.clone());
                self.applier
                    .shared
                    .counters
                    .counts
                    .checkpoints_written
                    .add(1);
                info!(table = %self.table.name, path = %path.display(), rows, seconds = started.elapsed().as_secs_f64(), "checkpoint written");
            }
            Err(e) => {
                warn!(table = %self.table.name, dir = %c.dir.display(), error = %e, "cannot write a checkpoint; the cache goes on without one. Fix: make the checkpoint directory writable, with room for the table");
            }
        }
    }

    fn publish_positions(&self) {
        let positions = self
            .starts
            .iter()
            .map(|s| {
                let p = s.partition as usize;
                PartitionPosition {
                    partition: s.partition,
                    next_offset: self.next[p],
                    high_watermark: self.high[p].max(self.next[p]),
                    ready_at: s.high,
                }
            })
            .collect();
        *self
            .applier
            .shared
            .positions
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = positions;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered() -> PartitionState {
        PartitionState::new(Some(Filter {
            snapshot: Arc::new(Snapshot::parse("100:105:102").unwrap()),
            insert_lsn: 1000,
        }))
    }

    #[test]
    fn replays_are_duplicates() {
        let mut s = PartitionState::new(None);
        assert!(!s.is_duplicate((10, 5, 0)));
        assert!(!s.is_duplicate((10, 6, 0)));
        assert!(s.is_duplicate((10, 5, 0)));
        assert!(s.is_duplicate((10, 6, 0)));
        assert!(!s.is_duplicate((20, 1, 0)));
        assert!(s.is_duplicate((10, 6, 0)));
    }

    #[test]
    fn a_primary_key_change_at_one_lsn_is_not_a_duplicate() {
        let mut s = PartitionState::new(None);
        assert!(!s.is_duplicate((10, 5, 0))); // delete of the old key
        assert!(!s.is_duplicate((10, 5, 1))); // create of the new key
        assert!(s.is_duplicate((10, 5, 0))); // replayed
        assert!(s.is_duplicate((10, 5, 1)));
        assert!(!s.is_duplicate((11, 1, 0)));
    }

    #[test]
    fn snapshot_filter_until_the_insert_lsn() {
        let mut s = filtered();
        assert_eq!(s.in_snapshot(Some(500), Some(99)), Ok(true));
        assert_eq!(s.in_snapshot(Some(501), Some(102)), Ok(false)); // was running
        assert_eq!(s.in_snapshot(Some(502), Some(103)), Ok(true));
        assert_eq!(s.in_snapshot(Some(503), Some(105)), Ok(false));
        assert!(s.in_snapshot(Some(504), None).is_err());
        assert!(s.filtering());
        // At the insert LSN the filter switches off for good, whatever the xid says.
        assert_eq!(s.in_snapshot(Some(1000), Some(101)), Ok(false));
        assert!(!s.filtering());
        assert_eq!(s.in_snapshot(Some(1001), Some(99)), Ok(false));
        assert_eq!(s.in_snapshot(None, None), Ok(false));
    }

    #[test]
    fn no_filter_applies_everything() {
        let mut s = PartitionState::new(None);
        assert_eq!(s.in_snapshot(None, None), Ok(false));
        assert_eq!(s.in_snapshot(Some(1), Some(1)), Ok(false));
    }
}
