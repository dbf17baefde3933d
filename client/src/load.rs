//! The bulk load: the whole table, read in one consistent snapshot, plus the facts
//! the follower needs to join the stream exactly where the snapshot ends.
//!
//! One `REPEATABLE READ READ ONLY` transaction:
//! 1. `LOCK TABLE ONLY table IN ACCESS SHARE MODE`. LOCK takes no snapshot, so a
//!    schema change that holds or waits for an `ACCESS EXCLUSIVE` lock (a rewriting
//!    `ALTER TABLE`) either commits before the snapshot below or waits until the
//!    load ends. Without the lock, a rewrite committed between the snapshot and the
//!    `COPY` shows the older snapshot an empty table.
//! 2. `SELECT pg_current_snapshot(), clock_timestamp()`: the first statement that
//!    takes a snapshot fixes the transaction's snapshot, so this is the snapshot every
//!    later statement reads, and the server time at which it was taken (the seek time).
//! 3. The table's columns, types and key, in that snapshot (and under the lock).
//! 4. (watermark strategy) `max(ts_column)`, in the same snapshot.
//! 5. The planner's row estimate, for which the map makes room first (see
//!    [`Shared::reserve`](crate::state::Shared::reserve)), and whether the table's
//!    TOAST table is empty (then no value the snapshot shows is stored out of line,
//!    and the load keeps no TOAST copies, see [`out_of_line`]); then
//!    `COPY (SELECT ... FROM ONLY table) TO STDOUT`, decoded row by row as the data
//!    arrives, through the shared codec into the map; progress (rows, rows/s) goes to
//!    the log. With several readers ([`readers`]), the transaction exports its
//!    snapshot and each reader copies one range of the table's pages in it.
//! 6. `pg_current_wal_insert_lsn()`: every transaction whose commit record lies at
//!    or past this point committed after the snapshot was taken.
//!
//! See <https://www.postgresql.org/docs/current/transaction-iso.html#XACT-REPEATABLE-READ>
//! and the notes of <https://www.postgresql.org/docs/current/sql-lock.html> (lock
//! before the first query of a `REPEATABLE READ` transaction).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::PgLsn;
use tokio_postgres::{Client, IsolationLevel};
use tracing::{info, warn};

use crate::apply::{Applier, ToastCopyWriter};
use crate::config::Config;
use crate::copy_row::CopyRow;
use crate::error::{Error, Result};
use crate::state::Origin;
use crate::table::{TableInfo, ToastCopy};
use crate::ts::Ts;

mod readers;
use tidemark_core::pg::snapshot::Snapshot;
use tidemark_core::wire::connect;
use tidemark_core::wire::partitioner::partition_of;
use tidemark_core::wire::{TableName, ValueKind};

/// How often the load reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What a bulk load established.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    /// The snapshot the rows were read in.
    pub snapshot: Snapshot,
    /// Server time when the snapshot was taken, milliseconds since the epoch.
    pub snapshot_ms: i64,
    /// The WAL insert position read after the load.
    pub insert_lsn: u64,
    /// A server time at or before the commit time of every transaction the snapshot
    /// does not show: the earliest of the time sampled before the load, the start of
    /// the oldest transaction then holding an xid, and the oldest prepared
    /// transaction. Milliseconds since the epoch.
    pub running_since_ms: i64,
    /// The WAL insert position sampled just before the load transaction: a change
    /// committed before it is in the snapshot or in the topic.
    pub start_lsn: u64,
    /// The watermark strategy's `max(ts_column)`, as PostgreSQL's text.
    pub max_ts: Option<String>,
    /// Rows loaded.
    pub rows: u64,
    /// The COPY readers that read them.
    pub readers: usize,
}

/// What the load transaction read besides the rows: the table's shape as the snapshot
/// sees it, and the applier built for that shape.
pub(crate) struct Shaped<K, V> {
    pub table: TableInfo,
    pub applier: Applier<K, V>,
    pub loaded: Loaded,
}

/// Loads the whole table `name` into the map. `applier_for` checks the table's shape
/// and builds the applier the rows go through; it runs inside the load transaction,
/// after the lock and the snapshot, so the shape is the one the rows have.
pub(crate) async fn load<K, V>(
    client: &mut Client,
    config: &Config,
    partitions: i32,
    ts_column: Option<&str>,
    applier_for: impl FnOnce(&TableInfo) -> Result<Applier<K, V>>,
) -> Result<Shaped<K, V>>
where
    K: serde::de::DeserializeOwned + std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (name, format, prefix) = (&config.table, &config.value_format, &config.topic_prefix);
    let (running_since_ms, start_lsn) = running_since(client, name).await?;
    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(Error::postgres("starting the load transaction"))?;
    // Before the snapshot: LOCK takes none, so a DDL statement that holds or waits for
    // a conflicting lock commits before the snapshot is taken, or waits for the load.
    txn.batch_execute(&format!(
        "LOCK TABLE ONLY {} IN ACCESS SHARE MODE",
        name.quoted()
    ))
    .await
    .map_err(|e| match e.code() {
        Some(&SqlState::UNDEFINED_TABLE) => TableInfo::missing(name),
        _ => Error::postgres("locking the table (ACCESS SHARE) for the load")(e),
    })?;
    let row = txn
        .query_one(
            "SELECT pg_current_snapshot()::text, \
                    (extract(epoch FROM clock_timestamp()) * 1000)::int8",
            &[],
        )
        .await
        .map_err(Error::postgres("reading the snapshot"))?;
    let snapshot_text: String = row.get(0);
    let snapshot = Snapshot::parse(&snapshot_text).map_err(|e| Error::Decode {
        table: name.to_string(),
        problem: e.to_string(),
    })?;
    let snapshot_ms: i64 = row.get(1);
    let mut table = TableInfo::read(&txn, name, format).await?;
    table.set_key_schema(format, prefix)?;
    let applier = applier_for(&table)?;
    applier.shared.reserve(estimated_rows(&txn, &table).await?);
    let out_of_line = out_of_line(&txn, &table).await?;
    let max_ts = match ts_column {
        Some(col) => {
            let sql = format!(
                "SELECT max({})::text FROM ONLY {}",
                tidemark_core::wire::envelope::quote_ident(col),
                table.name.quoted()
            );
            txn.query_one(sql.as_str(), &[])
                .await
                .map_err(Error::postgres("reading max(ts column)"))?
                .get::<_, Option<String>>(0)
        }
        None => None,
    };
    let helpers = readers::open(&txn, config, &table).await?;
    info!(table = %table.name, snapshot = %snapshot, readers = helpers.readers(), "bulk load starts");
    let mut ranges = helpers.filters().into_iter();
    let (sql, flagged) = table.bulk_copy_sql(&ranges.next().unwrap_or_default(), out_of_line);
    let mut streams = vec![txn
        .copy_out(sql.as_str())
        .await
        .map_err(Error::postgres("starting COPY"))?];
    for (helper, filter) in helpers.clients().zip(ranges) {
        let (sql, _) = table.bulk_copy_sql(&filter, out_of_line);
        streams.push(
            helper
                .copy_out(sql.as_str())
                .await
                .map_err(Error::postgres("starting COPY on a parallel reader"))?,
        );
    }
    let source = CopySource {
        what: "bulk load",
        origin: Some(Origin::BulkLoad),
        flagged,
        copies: out_of_line,
    };
    let rows = decode_in_parallel(streams, source, &table, &applier, partitions).await?;
    let readers = helpers.readers();
    helpers.close().await;
    let insert_lsn: PgLsn = txn
        .query_one("SELECT pg_current_wal_insert_lsn()", &[])
        .await
        .map_err(Error::postgres("reading the WAL insert position"))?
        .get(0);
    let insert_lsn = u64::from(insert_lsn);
    txn.commit()
        .await
        .map_err(Error::postgres("ending the load transaction"))?;
    Ok(Shaped {
        table,
        applier,
        loaded: Loaded {
            snapshot,
            snapshot_ms,
            insert_lsn,
            running_since_ms,
            start_lsn,
            max_ts,
            rows,
            readers,
        },
    })
}

/// The planner's estimate of the table's rows, scaled to its current size as the
/// planner scales it (`reltuples / relpages` times the pages now); `reltuples` as it is
/// when the statistics saw no pages, and 0 when the table was never analysed.
const ESTIMATE_SQL: &str = "SELECT (CASE WHEN c.reltuples <= 0 THEN 0 \
    WHEN c.relpages <= 0 THEN c.reltuples \
    ELSE c.reltuples / c.relpages * (pg_relation_size(c.oid) / current_setting('block_size')::int8) \
    END)::int8 FROM pg_catalog.pg_class c WHERE c.oid = $1::text::regclass";

/// Whether a value the load's snapshot shows may be stored out of line: false when
/// the table has no TOAST table, or one of zero pages. Read after the snapshot was
/// taken: the snapshot holds back vacuum's cleanup (of the TOAST table too), so the
/// chunks of every value it shows stay there until the load ends, and the load's
/// lock keeps TRUNCATE and rewrites out. A TOAST table of zero pages therefore
/// means that no row the load reads has a value out of line, and none can come back
/// as unchanged TOAST from a version the snapshot shows. One whose chunks are all
/// dead but not yet truncated still counts as having some (flags are asked for, as
/// before). A partitioned table's values live in its partitions' TOAST tables, so
/// it counts as having some. `NULL` (the TOAST table gone) counts as some.
const OUT_OF_LINE_SQL: &str = "SELECT coalesce(c.relkind <> 'r' \
    OR (c.reltoastrelid <> 0 AND pg_relation_size(c.reltoastrelid) > 0), true) \
    FROM pg_catalog.pg_class c WHERE c.oid = $1::text::regclass";

/// Whether a value of the table may be stored out of line ([`OUT_OF_LINE_SQL`]).
async fn out_of_line(txn: &tokio_postgres::Transaction<'_>, table: &TableInfo) -> Result<bool> {
    Ok(txn
        .query_one(OUT_OF_LINE_SQL, &[&table.name.quoted()])
        .await
        .map_err(Error::postgres(
            "reading whether the table has values out of line",
        ))?
        .get(0))
}

/// How many rows the load should expect, for sizing the map ([`ESTIMATE_SQL`]).
async fn estimated_rows(txn: &tokio_postgres::Transaction<'_>, table: &TableInfo) -> Result<usize> {
    let rows: i64 = txn
        .query_one(ESTIMATE_SQL, &[&table.name.quoted()])
        .await
        .map_err(Error::postgres("reading the table's row estimate"))?
        .get(0);
    Ok(usize::try_from(rows).unwrap_or(0))
}

/// Reads, before the load transaction starts, a time at or before the commit time of
/// every transaction that the load's snapshot will not show (see [`Loaded::running_since_ms`]).
///
/// A commit's time is fixed before the commit becomes visible: a transaction waiting
/// for a synchronous standby, or slow to leave the proc array, has its commit record
/// (and so, through the bridge, a record stamped with that time) while snapshots still
/// count it as running. Such a transaction already held an xid now, so its commit time
/// is at or after its `xact_start`; a transaction that takes its xid later commits
/// after now. A prepared transaction commits after its `prepared` time.
/// `pg_stat_activity` hides `xact_start` of other roles' sessions from a role without
/// `pg_read_all_stats`; when a session with an xid is hidden, the time is moved back by
/// [`MAX_SAFETY_WINDOW`](crate::config::MAX_SAFETY_WINDOW) and a warning names the fix.
///
/// Also returns the WAL insert position at the same moment ([`Loaded::start_lsn`]).
async fn running_since(client: &Client, name: &TableName) -> Result<(i64, u64)> {
    const SQL: &str = "SELECT \
        (extract(epoch FROM clock_timestamp()) * 1000)::int8, \
        pg_current_wal_insert_lsn(), \
        (SELECT (extract(epoch FROM min(xact_start)) * 1000)::int8 \
           FROM pg_catalog.pg_stat_activity WHERE backend_xid IS NOT NULL), \
        (SELECT count(*) FROM pg_catalog.pg_stat_activity \
           WHERE backend_xid IS NOT NULL AND xact_start IS NULL), \
        (SELECT (extract(epoch FROM min(prepared)) * 1000)::int8 \
           FROM pg_catalog.pg_prepared_xacts)";
    let row = client
        .query_one(SQL, &[])
        .await
        .map_err(Error::postgres("reading the oldest running transaction"))?;
    let now: i64 = row.get(0);
    let lsn: PgLsn = row.get(1);
    let oldest: Option<i64> = row.get(2);
    let hidden: i64 = row.get(3);
    let prepared: Option<i64> = row.get(4);
    let mut since = [Some(now), oldest, prepared]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now);
    if hidden > 0 {
        warn!(
            table = %name,
            sessions = hidden,
            "sessions of other roles hold transaction ids but their start times are hidden from this role; \
             the replay starts a day earlier to be safe. Fix: GRANT pg_read_all_stats TO the cache's role"
        );
        since -= crate::config::MAX_SAFETY_WINDOW.as_millis() as i64;
    }
    if now - since > 60_000 {
        info!(
            table = %name,
            seconds = (now - since) / 1000,
            "a transaction has been running for a while; the replay starts before it began"
        );
    }
    Ok((since, u64::from(lsn)))
}

/// The watermark strategy's re-query: the rows with `ts_column >= max_ts`, read now
/// (after the topic positions were fixed) and applied with last-writer-wins.
pub(crate) async fn requery<K, V>(
    client: &Client,
    table: &TableInfo,
    applier: &Applier<K, V>,
    partitions: i32,
    ts_column: &str,
    max_ts: Option<&str>,
) -> Result<u64>
where
    K: serde::de::DeserializeOwned + std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let col = table.column(ts_column).ok_or_else(|| Error::Table {
        table: table.name.to_string(),
        problem: format!("it has no column {ts_column}"),
        fix: "set the watermark strategy's ts column to a column of the table".into(),
    })?;
    let filter = match max_ts {
        Some(m) => format!(
            " WHERE {} >= '{}'::{}",
            tidemark_core::wire::envelope::quote_ident(ts_column),
            m.replace('\'', "''"),
            table.columns[col].sql_type
        ),
        None => String::new(),
    };
    let names: Vec<String> = table
        .columns
        .iter()
        .map(|c| tidemark_core::wire::envelope::quote_ident(&c.name))
        .collect();
    let sql = format!(
        "COPY (SELECT {} FROM ONLY {}{filter}) TO STDOUT",
        names.join(", "),
        table.name.quoted()
    );
    let stream = client
        .copy_out(sql.as_str())
        .await
        .map_err(Error::postgres("re-querying rows newer than the watermark"))?;
    let source = CopySource {
        what: "re-query",
        origin: None,
        flagged: Vec::new(),
        copies: true,
    };
    decode_in_parallel(vec![stream], source, table, applier, partitions).await
}

/// Stores rows read from PostgreSQL with COPY, deserialised straight from the text.
struct Store<'a, K, V> {
    applier: &'a Applier<K, V>,
    table: &'a TableInfo,
    partitions: i32,
    /// Every column's index, in table order: the row `V` is read from.
    all: Vec<usize>,
    /// The columns whose values may need a TOAST copy, with their rule and the
    /// index of the field that flags a value stored out of line, when the line has one.
    toast: Vec<(usize, ToastCopy, Option<usize>)>,
    /// The watermark strategy's `ts` column.
    ts: Option<usize>,
    /// The owner column, when rows are not all bulk-loaded.
    owner: Option<usize>,
    /// Scratch space for the key's JSON bytes.
    key_bytes: Vec<u8>,
    /// Whether a one-column key is read bare without trying the object first: true
    /// once the object failed because `K` takes no map at all (`i64`, `String`), whose
    /// failed attempt would otherwise cost a formatted error on every row. A type
    /// that may take a map (a struct, an untagged enum) keeps trying the object
    /// first, as the stream does, so both read the same key. A row whose bare value
    /// fails is read the long way, for the object's error. `None` until a row showed.
    key_bare: Option<bool>,
    /// With `--value-schema`, the key's schema, which the key's bytes (and so its
    /// partition) include.
    key_schema: Option<Arc<Vec<u8>>>,
    /// Rows decoded but not yet in the map.
    pending: Vec<Pending<K, V>>,
}

impl<'a, K, V> Store<'a, K, V>
where
    K: serde::de::DeserializeOwned + std::hash::Hash + Eq + Clone,
    V: serde::de::DeserializeOwned,
{
    /// `flagged` lists the columns whose out-of-line flag follows the table's columns
    /// on each line, in that order; without `copies`, no row keeps a TOAST copy.
    fn new(
        applier: &'a Applier<K, V>,
        table: &'a TableInfo,
        partitions: i32,
        flagged: &[usize],
        copies: bool,
    ) -> Self {
        let n = table.columns.len();
        Store {
            applier,
            table,
            partitions,
            all: (0..table.columns.len()).collect(),
            toast: table
                .columns
                .iter()
                .enumerate()
                .filter(|(_, c)| copies && c.toast != ToastCopy::Never)
                .map(|(i, c)| {
                    (
                        i,
                        c.toast,
                        flagged.iter().position(|&f| f == i).map(|k| n + k),
                    )
                })
                .collect(),
            ts: applier.ts_column.as_deref().and_then(|c| table.column(c)),
            owner: applier.owner.as_ref().and_then(|(c, _)| table.column(c)),
            key_bytes: Vec::with_capacity(64),
            key_bare: None,
            pending: Vec::with_capacity(PREFETCH_AHEAD),
            key_schema: table.key_schema.clone(),
        }
    }

    /// Stores one row; `origin` is `None` when the owner column decides it.
    fn row(&mut self, row: CopyRow<'_>, origin: Option<Origin>) -> Result<()> {
        let (table, applier) = (self.table, self.applier);
        let decode = |problem: String| Error::Decode {
            table: table.name.to_string(),
            problem,
        };
        let typed = |what: &'static str| {
            move |source| Error::Deserialize {
                what,
                table: table.name.to_string(),
                source,
            }
        };
        row.write_object(&table.key, &mut self.key_bytes)
            .map_err(decode)?;
        if let Some(schema) = &self.key_schema {
            self.key_bytes = connect::wrap(schema, &self.key_bytes);
        }
        let partition = partition_of(&self.key_bytes, self.partitions);
        let bare = match self.key_bare {
            Some(true) => row.deserialize_field(table.key[0]).ok(),
            _ => None,
        };
        let key: K = match bare {
            Some(k) => k,
            // As the stream reads keys: the key columns as an object, else (one
            // column) the bare value; a failure reports the object's error.
            None => match row.deserialize(&table.key) {
                Ok(k) => k,
                Err(e) if table.key.len() == 1 => {
                    if self.key_bare.is_none() {
                        self.key_bare = Some(rejects_maps(&e));
                    }
                    row.deserialize_field(table.key[0])
                        .map_err(|_| typed("key")(e))?
                }
                Err(e) => return Err(typed("key")(e)),
            },
        };
        let origin = origin.unwrap_or_else(|| applier.origin_by(|_| row.text(self.owner?)));
        let ts = applier.ts_of(|_| row.value(self.ts?).ok());
        if applier.is_stale(&key, ts.as_ref(), origin) {
            return Ok(());
        }
        let mut copy = ToastCopyWriter::default();
        for &(i, rule, flag) in &self.toast {
            let out_of_line = flag.is_none_or(|f| row.text(f) == Some("t"));
            match row.text(i) {
                Some(text) if out_of_line && rule.keeps(Some(text)) => {
                    match table.columns[i].kind {
                        ValueKind::Text | ValueKind::Numeric => {
                            copy.push(&table.columns[i].name, &text)
                        }
                        _ => copy.push(&table.columns[i].name, &row.value(i).map_err(decode)?),
                    }
                }
                _ => {}
            }
        }
        let value: V = row.deserialize(&self.all).map_err(typed("row"))?;
        applier.shared.prefetch(&key);
        self.pending.push(Pending {
            key,
            value,
            partition,
            toast: copy.finish(),
            ts,
            origin,
        });
        if self.pending.len() >= PREFETCH_AHEAD {
            self.flush();
        }
        Ok(())
    }

    /// Puts the rows decoded since the last flush into the map.
    fn flush(&mut self) {
        for p in self.pending.drain(..) {
            self.applier
                .put(p.key, p.value, p.partition, p.toast, p.ts, p.origin);
        }
    }
}

/// Whether a failed read of the key columns as an object says that the type takes no
/// map at all (serde's "invalid type: map" from a visitor without `visit_map`), not
/// that these values did not fit: then every row's object read fails, whatever it holds.
fn rejects_maps(e: &serde_json::Error) -> bool {
    e.to_string().starts_with("invalid type: map")
}

/// How many decoded rows wait for their insert while the processor fetches their
/// slots in the map ([`Shared::prefetch`](crate::state::Shared::prefetch)). Each key
/// occurs once in a COPY's result, so the wait changes nothing any row's staleness
/// check sees.
const PREFETCH_AHEAD: usize = 64;

/// A decoded row waiting for its insert.
struct Pending<K, V> {
    key: K,
    value: V,
    partition: i32,
    toast: Option<Box<str>>,
    ts: Option<Ts>,
    origin: Origin,
}

/// How many threads decode the bulk load: one per core but one, which is left to
/// PostgreSQL, the COPY reader and the rest of the service; at least 1, at most 4.
fn decode_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).clamp(1, 4))
}

/// The bulk load hands lines to the decoding threads in batches of about this size.
const BATCH_BYTES: usize = 128 * 1024;

/// What a COPY stream holds and how its rows are stored.
struct CopySource {
    /// For the log: "bulk load" or "re-query".
    what: &'static str,
    /// The origin of every row; `None` when the owner column decides it.
    origin: Option<Origin>,
    /// The columns whose out-of-line flag follows the table's columns on each line.
    flagged: Vec<usize>,
    /// Whether rows may need TOAST copies at all (a row of a table whose TOAST table
    /// is empty needs none).
    copies: bool,
}

/// Decodes COPY streams on [`decode_threads`] blocking threads while this task
/// keeps reading them all, so reading, decoding and PostgreSQL's side of COPY
/// overlap. Each key occurs once in one query's result (the streams of a parallel
/// load read disjoint ranges of one snapshot), so the order in which the threads
/// insert rows does not matter. The first error stops the load.
async fn decode_in_parallel<S, E, K, V>(
    streams: Vec<S>,
    source: CopySource,
    table: &TableInfo,
    applier: &Applier<K, V>,
    partitions: i32,
) -> Result<u64>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<tokio_postgres::Error>,
    K: serde::de::DeserializeOwned + std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let threads = decode_threads();
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Bytes>>(threads * 4);
    let rx = Arc::new(Mutex::new(rx));
    let failure: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
    let rows = Arc::new(AtomicU64::new(0));
    let shared_table = Arc::new(table.clone());
    let CopySource {
        what,
        origin,
        flagged,
        copies,
    } = source;
    let flagged = Arc::new(flagged);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (rx, failure, rows) = (rx.clone(), failure.clone(), rows.clone());
            let (table, applier, flagged) =
                (shared_table.clone(), applier.clone(), flagged.clone());
            tokio::task::spawn_blocking(move || {
                let mut store = Store::new(&applier, &table, partitions, &flagged, copies);
                // Holding the lock while waiting is fine: the others would wait too.
                while let Some(batch) = lock(&rx).blocking_recv() {
                    let mut count = 0;
                    // Every piece of a batch ends with a newline.
                    let lines = batch
                        .iter()
                        .flat_map(|piece| lines(&piece[..piece.len() - 1]));
                    for line in lines {
                        count += 1;
                        let stored = CopyRow::parse_with_extra(&table, line, flagged.len())
                            .map_err(|problem| Error::Decode {
                                table: table.name.to_string(),
                                problem,
                            })
                            .and_then(|row| store.row(row, origin));
                        if let Err(e) = stored {
                            lock(&failure).get_or_insert(e);
                            return;
                        }
                    }
                    store.flush();
                    rows.fetch_add(count, Relaxed);
                }
            })
        })
        .collect();
    drop(rx);

    let started = Instant::now();
    let last_report = Mutex::new(started);
    let read = |(reader, stream): (usize, S)| {
        let tx = tx.clone();
        let (rows, last_report) = (&rows, &last_report);
        async move {
            // PostgreSQL sends each row of a COPY in a message of its own, which is
            // passed on as it is (no copy); `partial` joins the pieces of a line that
            // would come split, so that every piece sent ends with a newline.
            let (mut batch, mut batch_bytes) = (Vec::new(), 0);
            let mut partial = BytesMut::new();
            let mut stream = std::pin::pin!(stream);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    let doing = match reader {
                        0 => "reading COPY data",
                        _ => "reading COPY data on a parallel reader's connection",
                    };
                    Error::postgres(doing)(e.into())
                })?;
                batch_bytes += chunk.len();
                if partial.is_empty() && chunk.ends_with(b"\n") {
                    batch.push(chunk);
                } else {
                    partial.extend_from_slice(&chunk);
                    // Only the new piece can hold the line's end.
                    if let Some(nl) = memchr::memrchr(b'\n', &chunk) {
                        let end = partial.len() - chunk.len() + nl + 1;
                        batch.push(partial.split_to(end).freeze());
                    }
                }
                if batch_bytes < BATCH_BYTES || batch.is_empty() {
                    continue;
                }
                batch_bytes = 0;
                if tx.send(std::mem::take(&mut batch)).await.is_err() {
                    return Ok(()); // every thread stopped on an error
                }
                // Once a batch, not once a row: the clock and the lock cost the reader
                // about a tenth of its time when read for every row.
                let due = {
                    let mut last = lock(last_report);
                    let due = last.elapsed() >= PROGRESS_EVERY;
                    if due {
                        *last = Instant::now();
                    }
                    due
                };
                if due {
                    let rows = rows.load(Relaxed);
                    info!(table = %table.name, what, rows, rows_per_sec = rate(rows, started), "loading");
                }
            }
            if !partial.is_empty() {
                partial.extend_from_slice(b"\n");
                batch.push(partial.freeze());
            }
            if !batch.is_empty() {
                let _ = tx.send(batch).await;
            }
            Ok::<(), Error>(())
        }
    };
    // The first failed stream stops the others.
    let read_error = futures::future::try_join_all(streams.into_iter().enumerate().map(read))
        .await
        .err();
    drop(tx);
    for worker in workers {
        worker.await.map_err(|e| Error::Decode {
            table: table.name.to_string(),
            problem: format!("a decoding thread failed: {e}"),
        })?;
    }
    if let Some(e) = lock(&failure).take().or(read_error) {
        return Err(e);
    }
    let rows = rows.load(Relaxed);
    info!(
        table = %table.name,
        what,
        rows,
        seconds = started.elapsed().as_secs_f64(),
        rows_per_sec = rate(rows, started),
        threads,
        "loaded"
    );
    Ok(rows)
}

/// The lines of `text`.
fn lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    crate::copy_row::split_at(text, b'\n').map(|at| &text[at])
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn rate(rows: u64, since: Instant) -> u64 {
    let secs = since.elapsed().as_secs_f64();
    if secs > 0.0 {
        (rows as f64 / secs) as u64
    } else {
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::lines;

    #[test]
    fn only_a_key_type_that_takes_no_map_is_read_bare_at_once() {
        use crate::copy_row::CopyRow;
        use crate::table::tests::sample;
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        #[serde(untagged)]
        enum Either {
            Object { id: u8 },
            Bare(i64),
        }
        let t = sample();
        let row = CopyRow::parse(&t, b"300\tx\t{}\t{}").unwrap();
        let object_error =
            |e: Result<(), serde_json::Error>| super::rejects_maps(&e.err().unwrap());
        assert!(object_error(row.deserialize::<i64>(&t.key).map(drop)));
        assert!(object_error(row.deserialize::<String>(&t.key).map(drop)));
        // 300 does not fit the object variant, but 5 would: keep trying it first.
        assert!(!object_error(row.deserialize::<Either>(&t.key).map(drop)));
    }

    #[test]
    fn lines_split_at_every_newline_empty_lines_included() {
        fn split(text: &[u8]) -> Vec<&[u8]> {
            lines(text).collect()
        }
        assert_eq!(split(b"a\tb\n\nc"), [&b"a\tb"[..], b"", b"c"]);
        assert_eq!(split(b"only"), [&b"only"[..]]);
        // A one-column row holding '' is an empty line of its own.
        assert_eq!(split(b""), [&b""[..]]);
    }
}
