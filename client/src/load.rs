//! The bulk load: the whole table, read in one consistent snapshot, plus the facts
//! the follower needs to join the stream exactly where the snapshot ends.
//!
//! One `REPEATABLE READ READ ONLY` transaction:
//! 1. `SELECT pg_current_snapshot(), clock_timestamp()`: the first statement fixes
//!    the transaction's snapshot, so this is the snapshot every later statement
//!    reads, and the server time at which it was taken (the seek time).
//! 2. (watermark strategy) `max(ts_column)`, in the same snapshot.
//! 3. `COPY table TO STDOUT`, decoded row by row as the data arrives, through the
//!    shared codec into the map; progress (rows, rows/s) goes to the log.
//! 4. `pg_current_wal_insert_lsn()`: every transaction whose commit record lies at
//!    or past this point committed after the snapshot was taken.
//!
//! See <https://www.postgresql.org/docs/current/transaction-iso.html#XACT-REPEATABLE-READ>.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::Value;
use tokio_postgres::{Client, IsolationLevel};
use tracing::info;

use crate::apply::{typed_key, Applier, Rejected};
use crate::builder::Config;
use crate::cache::Origin;
use crate::error::{Error, Result};
use crate::partitioner::partition_of;
use crate::postgres::ConnectError;
use crate::snapshot::{parse_lsn, Snapshot};
use crate::table::TableInfo;
use crate::wire::Row;

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
    /// The watermark strategy's `max(ts_column)`, as PostgreSQL's text.
    pub max_ts: Option<String>,
    /// Rows loaded.
    pub rows: u64,
}

/// Connects to PostgreSQL with the URL's TLS settings and the codec's session options.
pub(crate) async fn connect(config: &Config) -> Result<Client> {
    config.postgres.connect().await.map_err(|e| match e {
        ConnectError::Settings(e) => Error::Config {
            field: "postgres",
            problem: e.to_string(),
        },
        ConnectError::Postgres(source) => Error::PostgresUnreachable {
            target: config.postgres_target.clone(),
            source,
        },
    })
}

/// Loads the whole table into the map through `applier`.
pub(crate) async fn load<K, V>(
    client: &mut Client,
    table: &TableInfo,
    applier: &Applier<K, V>,
    partitions: i32,
    ts_column: Option<&str>,
) -> Result<Loaded>
where
    K: serde::de::DeserializeOwned + std::hash::Hash + Eq + Clone,
    V: serde::de::DeserializeOwned,
{
    let txn = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(Error::postgres("starting the load transaction"))?;
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
        table: table.name.to_string(),
        problem: e.to_string(),
    })?;
    let snapshot_ms: i64 = row.get(1);
    let max_ts = match ts_column {
        Some(col) => {
            let sql = format!(
                "SELECT max({})::text FROM {}",
                crate::wire::envelope::quote_ident(col),
                table.name.quoted()
            );
            txn.query_one(sql.as_str(), &[])
                .await
                .map_err(Error::postgres("reading max(ts column)"))?
                .get::<_, Option<String>>(0)
        }
        None => None,
    };
    info!(table = %table.name, snapshot = %snapshot, "bulk load starts");
    let stream = txn
        .copy_out(table.copy_sql().as_str())
        .await
        .map_err(Error::postgres("starting COPY"))?;
    let rows = copy_rows(stream, table, "bulk load", |row| {
        store(applier, table, row, partitions, Origin::BulkLoad)
    })
    .await?;
    let lsn_text: String = txn
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .map_err(Error::postgres("reading the WAL insert position"))?
        .get(0);
    txn.commit()
        .await
        .map_err(Error::postgres("ending the load transaction"))?;
    let insert_lsn = parse_lsn(&lsn_text).ok_or_else(|| Error::Decode {
        table: table.name.to_string(),
        problem: format!("cannot parse the LSN {lsn_text:?}"),
    })?;
    Ok(Loaded {
        snapshot,
        snapshot_ms,
        insert_lsn,
        max_ts,
        rows,
    })
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
    K: serde::de::DeserializeOwned + std::hash::Hash + Eq + Clone,
    V: serde::de::DeserializeOwned,
{
    let col = table.column(ts_column).ok_or_else(|| Error::Table {
        table: table.name.to_string(),
        problem: format!("it has no column {ts_column}"),
        fix: "set the watermark strategy's ts column to a column of the table".into(),
    })?;
    let filter = match max_ts {
        Some(m) => format!(
            " WHERE {} >= '{}'::{}",
            crate::wire::envelope::quote_ident(ts_column),
            m.replace('\'', "''"),
            table.columns[col].sql_type
        ),
        None => String::new(),
    };
    let names: Vec<String> = table
        .columns
        .iter()
        .map(|c| crate::wire::envelope::quote_ident(&c.name))
        .collect();
    let sql = format!(
        "COPY (SELECT {} FROM {}{filter}) TO STDOUT",
        names.join(", "),
        table.name.quoted()
    );
    let stream = client
        .copy_out(sql.as_str())
        .await
        .map_err(Error::postgres("re-querying rows newer than the watermark"))?;
    copy_rows(stream, table, "re-query", |row| {
        let origin = applier.origin_of(&row);
        store(applier, table, row, partitions, origin)
    })
    .await
}

/// Stores one row read from PostgreSQL.
fn store<K, V>(
    applier: &Applier<K, V>,
    table: &TableInfo,
    row: Row,
    partitions: i32,
    origin: Origin,
) -> Result<()>
where
    K: serde::de::DeserializeOwned + std::hash::Hash + Eq + Clone,
    V: serde::de::DeserializeOwned,
{
    let key_row = table.key_of(&row);
    let key_bytes = serde_json::to_vec(&Value::Object(key_row.clone())).unwrap_or_default();
    let partition = partition_of(&key_bytes, partitions);
    let key = typed_key::<K>(&key_row).map_err(|source| Error::Deserialize {
        what: "key",
        table: table.name.to_string(),
        source,
    })?;
    match applier.upsert(key, row, partition, origin) {
        Ok(()) | Err(Rejected::Stale) => Ok(()),
        Err(Rejected::Type { what, error }) => Err(Error::Deserialize {
            what,
            table: table.name.to_string(),
            source: error,
        }),
    }
}

/// Decodes a COPY text stream line by line as it arrives, logging progress.
async fn copy_rows<S, E>(
    stream: S,
    table: &TableInfo,
    what: &'static str,
    mut each: impl FnMut(Row) -> Result<()>,
) -> Result<u64>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<tokio_postgres::Error>,
{
    let started = Instant::now();
    let mut last_report = started;
    let mut rows: u64 = 0;
    let mut pending: Vec<u8> = Vec::new();
    let mut stream = std::pin::pin!(stream);
    let mut line = |line: &[u8], rows: &mut u64| -> Result<()> {
        let row = table
            .decode_copy_line(line)
            .map_err(|problem| Error::Decode {
                table: table.name.to_string(),
                problem,
            })?;
        *rows += 1;
        each(row)
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(Into::into)
            .map_err(Error::postgres("reading COPY data"))?;
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(nl) = pending[start..].iter().position(|&b| b == b'\n') {
            line(&pending[start..start + nl], &mut rows)?;
            start += nl + 1;
        }
        pending.drain(..start);
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            info!(table = %table.name, what, rows, rows_per_sec = rate(rows, started), "loading");
        }
    }
    if !pending.is_empty() {
        line(&pending, &mut rows)?;
    }
    info!(
        table = %table.name,
        what,
        rows,
        seconds = started.elapsed().as_secs_f64(),
        rows_per_sec = rate(rows, started),
        "loaded"
    );
    Ok(rows)
}

fn rate(rows: u64, since: Instant) -> u64 {
    let secs = since.elapsed().as_secs_f64();
    if secs > 0.0 {
        (rows as f64 / secs) as u64
    } else {
        rows
    }
}
