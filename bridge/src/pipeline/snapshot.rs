//! The initial snapshot: every row of a table written as an op `r` record before the
//! stream's first change, so a consumer that rebuilds the table from its topic
//! (a KTable, a Connect sink) starts from the whole table, as with Debezium's
//! `snapshot.mode=initial`.
//!
//! **Which snapshot.** The slot is created with `pg_create_logical_replication_slot`,
//! which exports no snapshot, so each table is read afterwards in a snapshot of its
//! own, `S`, in a `REPEATABLE READ` transaction that first locks the table
//! (`ACCESS SHARE`, as the cache's load does). The stream starts at the slot's start,
//! before `S`, so it carries changes `S` already shows; the bridge leaves out exactly
//! those (a change whose transaction is visible in `S`), until the first change that
//! committed at or past the WAL insert position sampled right after `S` was taken
//! ([`SnapshotFilter`]). The records a topic holds are then `S`'s rows followed by
//! every change `S` does not show, in commit order: the table as of `S`, then its
//! history, exactly as if the slot had exported `S`.
//!
//! One hole remains to close: a transaction whose commit record lies before the
//! slot's start is not decoded, and it must therefore be visible in `S`. Right after
//! creating the slot the bridge takes a transaction id (`pg_current_xact_id()`); every
//! such transaction has an older id. `S` is taken again until its `xmin` is above
//! that id, so every one of them has finished (a commit held back by a synchronous
//! standby that does not answer is waited for, with a warning).
//!
//! **Progress and crashes.** The tables to read are decided when the slot is created
//! (`--snapshot initial`: those whose topics hold no row yet, see [`plan`]) and kept in the state
//! topic ([`crate::sink::state`], kind `"snapshot"`) with the slot's start, before
//! the first row is written. A table counts as done once Kafka acknowledged all its
//! rows; then its snapshot is added to the state. The stream starts only when every
//! table is done, and until then the slot is not confirmed past its start. A bridge
//! that stops in the middle reads the state when it starts again and reads the
//! unfinished tables again, each in a new snapshot with its own filter; finished
//! tables are not read again. The filters are rebuilt from the state at every start,
//! so a crash right after the snapshot still leaves out what it holds.
//!
//! **With `--exactly-once`** a table's rows go in Kafka transactions like changes do,
//! and the one that holds its last rows also holds the progress that marks it done.
//! The broker aborts a transaction open longer than `transaction.timeout.ms`, so a
//! table whose rows take longer than a third of that to produce (a large table, or a
//! low `--snapshot-rows-per-second`) is committed in several; otherwise it would fail
//! in every session. After a crash in the middle of such a table, its committed part
//! stays visible to `read_committed` readers and the table is read again whole, as
//! below: its `r` records may then appear twice, while changes stay exactly once.
//!
//! A table read again after a crash has some of its rows in the topic twice: once
//! from the interrupted read and once from the new one, which is newer. A row deleted
//! between the two reads keeps its `r` record from the first: its delete is in the
//! new snapshot, so the stream leaves it out. A consumer that rebuilds the table from
//! the topic then holds that row until its key is written again. tidemark's caches
//! are not affected: they skip every `r` record whose snapshot their own load
//! contains, and load again when it does not ([`SNAPSHOT_HEADER`]).
//!
//! [`SNAPSHOT_HEADER`]: tidemark_core::wire::envelope::SNAPSHOT_HEADER

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{pin_mut, TryStreamExt};
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use serde::{Deserialize, Serialize};
use tidemark_core::pg::snapshot::Snapshot;
use tidemark_core::wire::envelope::{quote_ident, SLOT_MARKER_HEADER, SNAPSHOT_HEADER};
use tidemark_core::wire::heartbeat::HEARTBEAT_HEADER;
use tidemark_core::wire::TableName;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::Client;
use tracing::{info, warn};

use super::lock;
use super::records::{SnapshotFilter, SnapshotRead, Tables};
use crate::config::{Config, SnapshotMode};
use crate::error::BridgeError;
use crate::pipeline::frontier::Frontier;
use crate::sink::{readback, state, Sink};
use crate::source::pgoutput::Datum;

/// The kind of the state document (see [`crate::sink::state`]).
const KIND: &str = "snapshot";

/// How long a snapshot may wait for transactions older than the slot to finish.
const OLDER_TRANSACTIONS_DEADLINE: Duration = Duration::from_secs(600);

/// How long the snapshot waits for PostgreSQL's next row (long: a scan can pass many
/// dead tuples between two rows).
const ROW_DEADLINE: Duration = Duration::from_secs(300);

/// How long reading one partition of a table's topic for a row may go without
/// progress.
const READBACK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long Kafka may take to acknowledge a table's rows once all are sent.
const ACK_TIMEOUT: Duration = Duration::from_secs(120);

/// The snapshot's progress, kept in the state topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The slot's start when it was created; a state of another start belongs to a
    /// slot of the same name that no longer exists.
    pub slot_lsn: u64,
    /// A transaction id taken right after the slot was created (see the module doc).
    pub slot_xid: u64,
    /// The tables to read, `schema.table`, decided when the slot was created.
    pub tables: Vec<String>,
    /// The tables read, each with the snapshot it was read in.
    pub done: BTreeMap<String, Done>,
}

/// One table's finished snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    /// `pg_current_snapshot()` text.
    pub snapshot: String,
    /// The WAL insert position sampled right after it was taken.
    pub insert_lsn: u64,
    /// Rows written.
    pub rows: u64,
}

impl Progress {
    /// Whether every table has been read.
    pub fn finished(&self) -> bool {
        self.tables.iter().all(|t| self.done.contains_key(t))
    }

    /// Leaves out of the stream, per table read, the changes its snapshot holds.
    pub fn install_filters(&self, tables: &mut Tables) -> Result<(), BridgeError> {
        for (name, done) in &self.done {
            let (Some(table), Ok(snapshot)) =
                (TableName::parse(name), Snapshot::parse(&done.snapshot))
            else {
                return Err(BridgeError::Decode(format!(
                    "the snapshot state of {name} does not parse ({:?})",
                    done.snapshot
                )));
            };
            tables.filter(
                table,
                SnapshotFilter {
                    snapshot,
                    insert_lsn: done.insert_lsn,
                },
            );
        }
        Ok(())
    }
}

/// The snapshot for a slot this session just created at `slot_lsn`: the tables whose
/// topics hold no row (see `first_row`; all of them unless `--snapshot never`). Takes the
/// transaction id the snapshots must pass. `None` when there is nothing to read.
pub async fn plan(
    client: &Client,
    config: &Config,
    partitions: &HashMap<String, i32>,
    slot_lsn: u64,
) -> Result<Option<Progress>, BridgeError> {
    if config.snapshot == SnapshotMode::Never {
        return Ok(None);
    }
    let mut tables = Vec::new();
    let consumer = readback::consumer(config, "the table topics")?;
    for table in &config.tables {
        let topic = table.topic(&config.topic_prefix);
        let count = partitions.get(&topic).copied().unwrap_or(1);
        match tokio::task::block_in_place(|| first_row(&consumer, &topic, count))? {
            None => tables.push(table.to_string()),
            Some((partition, offset)) => {
                info!(table = %table, topic, partition, offset, "the topic holds records already: no snapshot of this table")
            }
        }
    }
    if tables.is_empty() {
        return Ok(None);
    }
    let slot_xid: i64 = client
        .query_one("SELECT pg_current_xact_id()::text::int8", &[])
        .await
        .map_err(BridgeError::postgres(
            "taking a transaction id after creating the slot",
        ))?
        .get(0);
    Ok(Some(Progress {
        slot_lsn,
        slot_xid: slot_xid as u64,
        tables,
        done: BTreeMap::new(),
    }))
}

/// The partition and offset of the first record of `topic` (of `partitions`) that a
/// `read_committed` reader sees and that is not one of the bridge's markers, if any:
/// slot markers, heartbeats and the tombstones that end a table's snapshot hold no
/// row, and neither do records of aborted transactions. A failed first attempt to
/// start a slot can leave such records (its markers; with `--exactly-once`, an aborted
/// transaction), which must not cost the table its snapshot.
fn first_row(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
) -> Result<Option<(i32, i64)>, BridgeError> {
    let header = |m: &BorrowedMessage<'_>, name: &str| {
        m.headers().is_some_and(|h| h.iter().any(|h| h.key == name))
    };
    for p in 0..partitions {
        let mut found = None;
        readback::read_partition(consumer, topic, p, READBACK_TIMEOUT, |m| {
            let marker = header(m, SLOT_MARKER_HEADER)
                || header(m, HEARTBEAT_HEADER)
                || (m.payload().is_none() && header(m, SNAPSHOT_HEADER));
            if !marker {
                found = Some((p, m.offset()));
            }
            !marker
        })?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// The saved progress of the slot, if it belongs to the slot as it is: an unfinished
/// snapshot only while the slot has not moved past its start.
pub fn load(config: &Config, confirmed: u64) -> Result<Option<Progress>, BridgeError> {
    let progress: Option<Progress> = state::load(config, &state::key(&config.slot, KIND))?;
    Ok(progress.filter(|p| {
        let ours = p.slot_lsn <= confirmed && (p.finished() || p.slot_lsn == confirmed);
        if !ours {
            warn!(slot = %config.slot, "the saved snapshot state is from an earlier slot of this name; ignored");
        }
        ours
    }))
}

/// The record that saves `progress`, in the frontier transaction `txn`.
pub fn save_record(
    config: &Config,
    progress: &Progress,
    now_ms: i64,
) -> Result<crate::sink::Record, BridgeError> {
    state::record(config, state::key(&config.slot, KIND), progress, now_ms)
}

/// Where the snapshot writes: the producer and the frontier of the session, and the
/// slot's start, which the frontier must not pass.
pub struct Writer<'a> {
    /// The session's producer.
    pub sink: &'a Sink,
    /// The session's frontier.
    pub frontier: &'a Mutex<Frontier>,
    /// The slot's confirmed position.
    pub start: u64,
}

impl Writer<'_> {
    /// Sends `records` as one frontier transaction and waits until Kafka has them.
    async fn send_all(
        &self,
        records: impl IntoIterator<Item = crate::sink::Record>,
        ts_ms: i64,
    ) -> Result<(), BridgeError> {
        let txn = lock(self.frontier).begin(ts_ms);
        for record in records {
            self.sink.send(txn, &record).await?;
        }
        lock(self.frontier).commit(txn, self.start);
        self.acknowledged().await
    }

    async fn acknowledged(&self) -> Result<(), BridgeError> {
        self.sink.drain(ACK_TIMEOUT).await?;
        match lock(self.frontier).in_flight() {
            0 => Ok(()),
            n => Err(BridgeError::Kafka {
                context: format!(
                    "the snapshot: {n} records not acknowledged within {ACK_TIMEOUT:?}"
                ),
                source: rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
                ),
            }),
        }
    }
}

/// Reads every table not done yet and saves the progress after each one.
pub async fn run(
    client: &Client,
    config: &Config,
    writer: &Writer<'_>,
    tables: &mut Tables,
    progress: &mut Progress,
) -> Result<(), BridgeError> {
    let todo: Vec<String> = progress
        .tables
        .iter()
        .filter(|t| !progress.done.contains_key(*t))
        .cloned()
        .collect();
    client
        .batch_execute(tidemark_core::pg::MATCH_SQL_ASCII_SQL)
        .await
        .map_err(BridgeError::postgres(
            "matching the client encoding to a SQL_ASCII database",
        ))?;
    let count = todo.len();
    for (i, name) in todo.into_iter().enumerate() {
        let table = TableName::parse(&name).ok_or_else(|| {
            BridgeError::Decode(format!("bad table name {name:?} in the snapshot state"))
        })?;
        let position = Position {
            first: i == 0 && progress.done.is_empty(),
            last: i + 1 == count,
        };
        // With --exactly-once the progress that says the table is done goes in the
        // same Kafka transaction as its last rows (`read_table` commits earlier ones
        // when the table takes long).
        if writer.sink.is_transactional() {
            writer.sink.begin_transaction()?;
        }
        let done = read_table(
            client,
            config,
            writer,
            tables,
            &table,
            progress.slot_xid,
            position,
        )
        .await?;
        info!(table = %table, rows = done.rows, "snapshot of the table written");
        progress.done.insert(name, done);
        let record = save_record(config, progress, crate::telemetry::now_ms())?;
        writer
            .send_all([record], crate::telemetry::now_ms())
            .await?;
        if writer.sink.is_transactional() {
            writer.sink.commit_transaction()?;
        }
    }
    Ok(())
}

/// A value's text as its bytes, whatever the encoding (the rows' columns are `text`
/// in the binary format, which is the bytes themselves).
struct Text(Datum);

impl<'a> FromSql<'a> for Text {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Text(Datum::Text(bytes::Bytes::copy_from_slice(raw))))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Text(Datum::Null))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT
    }
}

/// Where a table stands in the whole snapshot, for `source.snapshot`.
#[derive(Debug, Clone, Copy)]
struct Position {
    first: bool,
    last: bool,
}

/// Debezium's `source.snapshot` of the row at `index` of `rows` rows of a table at
/// `at` in the snapshot.
fn mark(at: Position, index: u64, rows_known_last: bool) -> &'static str {
    match (index == 0, rows_known_last) {
        (true, _) if at.first => "first",
        (_, true) if at.last => "last",
        (true, _) => "first_in_data_collection",
        (_, true) => "last_in_data_collection",
        _ => "true",
    }
}

/// Reads one table in a snapshot that passes `slot_xid` and writes its rows.
async fn read_table(
    client: &Client,
    config: &Config,
    writer: &Writer<'_>,
    tables: &mut Tables,
    table: &TableName,
    slot_xid: u64,
    at: Position,
) -> Result<Done, BridgeError> {
    let pg = |what: &'static str| {
        let table = table.to_string();
        move |e| BridgeError::postgres(format!("snapshot of {table}: {what}"))(e)
    };
    let began = Instant::now();
    let mut warned = Instant::now();
    let read = loop {
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(pg("beginning the transaction"))?;
        client
            .batch_execute(&format!(
                "LOCK TABLE ONLY {} IN ACCESS SHARE MODE",
                table.quoted()
            ))
            .await
            .map_err(pg("locking the table"))?;
        let row = client
            .query_one(
                "SELECT pg_current_snapshot()::text, (pg_current_wal_insert_lsn() - '0/0')::int8, \
                 (extract(epoch FROM clock_timestamp()) * 1000)::int8",
                &[],
            )
            .await
            .map_err(pg("taking the snapshot"))?;
        let text: String = row.get(0);
        let snapshot = Snapshot::parse(&text).map_err(|e| BridgeError::Decode(e.to_string()))?;
        if snapshot.xmin > slot_xid {
            break SnapshotRead {
                snapshot: text,
                insert_lsn: row.get::<_, i64>(1) as u64,
                ts_ms: row.get(2),
            };
        }
        client
            .batch_execute("ROLLBACK")
            .await
            .map_err(pg("ending the transaction"))?;
        if began.elapsed() >= OLDER_TRANSACTIONS_DEADLINE {
            return Err(BridgeError::Setup {
                problem: format!("the snapshot of {table} waited {OLDER_TRANSACTIONS_DEADLINE:?} for transaction {} (and any older) to finish: transactions that began before the slot was created must end before the snapshot can show all of them", snapshot.xmin),
                fix: "end or cancel that transaction (pg_stat_activity.backend_xid, pg_prepared_xacts; a commit waiting for a synchronous standby that does not answer counts too)".into(),
            });
        }
        if warned.elapsed() >= Duration::from_secs(30) {
            warned = Instant::now();
            warn!(table = %table, xmin = snapshot.xmin, "the snapshot waits for transactions older than the slot to finish");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (rel, names) = tables.learn_from_catalog(client, table).await?;
    let columns: Vec<String> = names
        .iter()
        .map(|n| {
            let c = quote_ident(n);
            format!("CASE WHEN num_nulls({c}) = 1 THEN NULL ELSE format('%s', {c}) END")
        })
        .collect();
    // Each value as its type's output text, which is what pgoutput sends: `format`'s
    // `%s` calls the output function (a cast to text would not: `true::text` is `true`
    // where pgoutput sends `t`, and `inet`'s cast adds the netmask), and `num_nulls`
    // tells SQL NULL from a composite whose fields are all null. The text arrives as
    // its bytes, in the server's encoding, as pgoutput's do (in a SQL_ASCII database
    // they need not be UTF-8).
    let sql = format!("SELECT {} FROM ONLY {}", columns.join(", "), table.quoted());
    let rows = client
        .query_raw(sql.as_str(), std::iter::empty::<&str>())
        .await
        .map_err(pg("reading the rows"))?;
    pin_mut!(rows);
    let limit = config.snapshot_rows_per_second;
    let started = Instant::now();
    // With --exactly-once: when the open Kafka transaction got its first record.
    let split_after = writer
        .sink
        .is_transactional()
        .then(|| super::exactly_once::split_after(config));
    let mut opened: Option<Instant> = None;
    let txn = lock(writer.frontier).begin(read.ts_ms);
    let mut pending: Option<crate::source::pgoutput::Tuple> = None;
    let mut written = 0u64;
    loop {
        // A connection that stops answering ends the session (transient) instead of
        // holding the snapshot forever.
        let row_deadline = tokio::time::Instant::now() + ROW_DEADLINE;
        let next = loop {
            let row = tokio::time::timeout_at(row_deadline, rows.try_next());
            // The broker aborts a transaction open longer than its timeout: a long
            // table goes in several (see the module doc), also while a row is slow
            // to come.
            let split_at = split_after.zip(opened).map(|(after, o)| o + after);
            let Some(split_at) = split_at else {
                break row.await;
            };
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(split_at.into()) => {
                    writer.sink.commit_transaction()?;
                    writer.sink.begin_transaction()?;
                    opened = None;
                    info!(table = %table, rows = written, "committed part of the table's snapshot in Kafka: it takes longer than a third of transaction.timeout.ms");
                }
                next = row => break next,
            }
        }
        .map_err(|_| BridgeError::Timeout {
            during: "reading the snapshot's rows",
            after: ROW_DEADLINE,
        })?;
        let tuple = match next.map_err(pg("reading the rows"))? {
            Some(row) => Some(
                (0..columns.len())
                    .map(|i| row.try_get::<_, Text>(i).map(|t| t.0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(pg("reading a value"))?,
            ),
            None => None,
        };
        if let Some(previous) = pending.take() {
            let record = tables.snapshot_record(
                rel,
                &previous,
                &read,
                mark(at, written, tuple.is_none()),
            )?;
            writer.sink.send(txn, &record).await?;
            opened.get_or_insert_with(Instant::now);
            written += 1;
            metrics::counter!(crate::telemetry::SNAPSHOT_ROWS, "table" => table.to_string())
                .increment(1);
            if limit > 0 {
                let due = Duration::from_secs_f64(written as f64 / limit as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
        }
        match tuple {
            Some(t) => pending = Some(t),
            None => break,
        }
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(pg("ending the transaction"))?;
    for marker in tables.snapshot_markers(rel, &read)? {
        writer.sink.send(txn, &marker).await?;
    }
    lock(writer.frontier).commit(txn, writer.start);
    writer.acknowledged().await?;
    Ok(Done {
        snapshot: read.snapshot,
        insert_lsn: read.insert_lsn,
        rows: written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_follow_debezium() {
        let only = Position {
            first: true,
            last: true,
        };
        assert_eq!(mark(only, 0, false), "first");
        assert_eq!(mark(only, 1, false), "true");
        assert_eq!(mark(only, 2, true), "last");
        let middle = Position {
            first: false,
            last: false,
        };
        assert_eq!(mark(middle, 0, false), "first_in_data_collection");
        assert_eq!(mark(middle, 5, true), "last_in_data_collection");
        // A table of one row in the middle is its first row.
        assert_eq!(mark(middle, 0, true), "first_in_data_collection");
    }
}
