//! Turns decoded pgoutput changes into Kafka records in the wire format.
//!
//! Per table it keeps what the Relation messages said (columns, their codec kinds
//! and which form the key; see [`key_columns`]). A new Relation message (after
//! `ALTER TABLE`) replaces the entry, so later changes carry the new columns.
//! Decisions beyond the wire format in `docs/design.md`, as Debezium makes them:
//! * an update that changes the primary key becomes a delete of the old key (with
//!   its tombstone) followed by a create of the new key, so each key's history stays
//!   on that key's partition;
//! * `before` of an update is the full old row with `REPLICA IDENTITY FULL`, `null`
//!   otherwise;
//! * a TRUNCATE becomes one `op: "t"` record on every partition of the topic, so a
//!   reader meets it in order with the records of each partition.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;
use tidemark_core::pg::snapshot::Snapshot;
use tidemark_core::wire::connect::{self, TableSchemas};
use tidemark_core::wire::debezium::FORMAT_HEADER;
use tidemark_core::wire::envelope::{
    sequence, TombstoneStamp, NEW_KEY_HEADER, OLD_KEY_HEADER, SNAPSHOT_HEADER, TOMBSTONE_HEADER,
    TRUNCATE_KEY,
};
use tidemark_core::wire::partitioner::partition_of;
use tidemark_core::wire::{codec, key};
use tidemark_core::wire::{Envelope, Op, Row, Source, TableName, ValueFormat, ValueKind};
use tokio_postgres::Client;
use tracing::{info, warn};

use super::transaction_metadata::TxnOrder;
use crate::config::TruncateMode;
use crate::error::BridgeError;
use crate::sink::Record;
use crate::source::pgoutput::{Datum, Message, OldTuple, RelColumn, Relation, Tuple};
use crate::source::setup::{primary_key, TypeCache};
use crate::telemetry::now_ns;

/// The transaction a change belongs to (from its Begin message).
#[derive(Debug, Clone, Copy)]
pub struct TxnInfo {
    /// 32-bit transaction id.
    pub xid: u32,
    /// LSN of the commit record.
    pub commit_lsn: u64,
    /// Commit time, milliseconds since the epoch.
    pub commit_ms: i64,
    /// Commit time, microseconds since the epoch.
    pub commit_us: i64,
    /// The commit LSN of the transaction before this one in the stream, when this
    /// session has seen one (the first half of Debezium's `source.sequence`).
    pub previous_commit_lsn: Option<u64>,
}

struct Table {
    name: TableName,
    /// `schema.table`, shared by every record (a metrics label).
    label: Arc<str>,
    topic: Arc<str>,
    partitions: i32,
    columns: Vec<(String, ValueKind)>,
    /// Indexes into `columns` of the primary key, in key order.
    key: Vec<usize>,
    /// With `--value-schema`, the key's and value's Kafka Connect schemas, serialised
    /// once per Relation message.
    schemas: Option<TableSchemas>,
}

/// The key columns of a relation, as indexes into its columns in key order.
///
/// Key membership comes from the Relation message, which describes the schema the
/// change was written with: with replica identity `d` (default) its flagged columns
/// are the primary key of that schema, so a primary-key column renamed since, or a
/// table dropped and created again, does not stop the stream. The order is the
/// current catalog's primary-key order (`catalog_key`) when that names the same
/// columns, as it does unless the key changed; else the relation's column order.
/// With identity `f` (full) every column is flagged, so the key is the catalog's
/// primary key, which must still name columns of the relation. Identity `n`
/// (nothing) and an index other than the primary key are refused: the records could
/// not carry the key the readers use.
fn key_columns(
    rel: &Relation,
    catalog_key: &[String],
    name: &TableName,
) -> Result<Vec<usize>, BridgeError> {
    let position = |k: &String| rel.columns.iter().position(|c| &c.name == k);
    let flagged: Vec<usize> = (0..rel.columns.len())
        .filter(|&i| rel.columns[i].key)
        .collect();
    let from_catalog: Option<Vec<usize>> = catalog_key.iter().map(position).collect();
    let same_set = |cat: &Vec<usize>| {
        let mut sorted = cat.clone();
        sorted.sort_unstable();
        sorted == flagged
    };
    let key = match (rel.replica_identity, from_catalog) {
        (b'd', Some(cat)) if !cat.is_empty() && same_set(&cat) => cat,
        (b'd', _) => flagged,
        (b'f', Some(cat)) if !cat.is_empty() => cat,
        (b'i', Some(cat)) if !cat.is_empty() && same_set(&cat) => cat,
        (b'f', _) => {
            return Err(BridgeError::Setup {
                problem: format!(
                    "table {name} has REPLICA IDENTITY FULL and its primary key in the catalog ({}) no longer names columns of the changes being decoded; the key of these changes is unknown",
                    catalog_key.join(", ")
                ),
                fix: format!(
                    "use REPLICA IDENTITY DEFAULT, which carries the key in the WAL (ALTER TABLE {} REPLICA IDENTITY DEFAULT), or drop the slot and warm-start the caches again",
                    name.quoted()
                ),
            })
        }
        (b'n', _) => {
            return Err(BridgeError::Setup {
                problem: format!("table {name} has REPLICA IDENTITY NOTHING: its updates and deletes carry no key"),
                fix: format!("ALTER TABLE {} REPLICA IDENTITY DEFAULT", name.quoted()),
            })
        }
        _ => {
            return Err(BridgeError::Setup {
                problem: format!(
                    "table {name} has a replica identity index that is not its primary key; records are keyed by the primary key"
                ),
                fix: format!("ALTER TABLE {} REPLICA IDENTITY DEFAULT", name.quoted()),
            })
        }
    };
    if key.is_empty() {
        return Err(BridgeError::Setup {
            problem: format!("table {name} has no primary key any more"),
            fix: format!(
                "add one back: ALTER TABLE {} ADD PRIMARY KEY (...)",
                name.quoted()
            ),
        });
    }
    if rel.replica_identity == b'd' && key.iter().map(|&i| &rel.columns[i].name).ne(catalog_key) {
        warn!(table = %name, "the primary key in the catalog differs from the one these changes were written with (renamed, or the table was created again); keys follow the WAL");
    }
    Ok(key)
}

/// Numbers the changes of one transaction that share a WAL position.
///
/// pgoutput sends each change with the LSN of the WAL record it was decoded from,
/// and one record can hold many changes: a `COPY` or a multi-row `INSERT` writes one
/// `XLOG_HEAP2_MULTI_INSERT` record per heap page (`heap_multi_insert` in
/// PostgreSQL's `heapam.c`), and an update that changes the primary key becomes two
/// records here. Logical decoding replays a transaction's changes in WAL order every
/// time it decodes it, so counting from 0 at each new LSN gives a replay the same
/// numbers, and `(commit_lsn, lsn, seq)` strictly increases within a transaction.
#[derive(Debug, Default)]
pub struct Numbering {
    lsn: u64,
    next: u32,
}

impl Numbering {
    /// The counter for a change at `lsn`: continued if the previous change of the
    /// transaction had the same LSN, else restarted at 0.
    pub fn at(&mut self, lsn: u64) -> &mut u32 {
        if lsn != self.lsn {
            *self = Numbering { lsn, next: 0 };
        }
        &mut self.next
    }
}

/// What a table's initial snapshot read: changes of the transactions it shows are in
/// its op `r` records already, so the stream leaves them out, until the first change
/// that committed at or past `insert_lsn` (sampled after the snapshot was taken, so
/// every later change committed after it). The client's filter, applied in the bridge.
#[derive(Debug, Clone)]
pub struct SnapshotFilter {
    /// The snapshot the rows were read in.
    pub snapshot: Snapshot,
    /// The WAL insert position sampled right after the snapshot was taken.
    pub insert_lsn: u64,
}

/// One snapshot read, for its op `r` records.
#[derive(Debug, Clone)]
pub struct SnapshotRead {
    /// The `pg_current_snapshot()` text ([`SNAPSHOT_HEADER`]).
    pub snapshot: String,
    /// The WAL insert position right after it was taken (`source.lsn`).
    pub insert_lsn: u64,
    /// The server's time when it was taken (`source.ts_ms`, the record timestamp).
    pub ts_ms: i64,
}

/// How records are written: the settings every record of the session shares.
#[derive(Debug, Clone)]
pub struct Output {
    /// The topic prefix, also `source.name`.
    pub prefix: String,
    /// The database name, `source.db`.
    pub db: String,
    /// What a TRUNCATE becomes.
    pub truncate: TruncateMode,
    /// The encoding of the values.
    pub format: ValueFormat,
}

/// The tables seen on the stream, and how to write their records.
pub struct Tables {
    by_id: HashMap<u32, Table>,
    filters: HashMap<TableName, SnapshotFilter>,
    ignored: HashSet<u32>,
    types: TypeCache,
    configured: Vec<TableName>,
    partitions: HashMap<String, i32>,
    out: Output,
}

fn decode_err(msg: impl Into<String>) -> BridgeError {
    BridgeError::Decode(msg.into())
}

impl Tables {
    /// An empty set for the configured tables; `partitions` maps topic to partition count.
    pub fn new(configured: Vec<TableName>, partitions: HashMap<String, i32>, out: Output) -> Self {
        Tables {
            by_id: HashMap::new(),
            filters: HashMap::new(),
            ignored: HashSet::new(),
            types: TypeCache::default(),
            configured,
            partitions,
            out,
        }
    }

    /// Takes in a Relation message, reading the key order and column types from the catalog.
    pub async fn learn(&mut self, client: &Client, rel: Relation) -> Result<(), BridgeError> {
        let name = TableName {
            schema: rel.schema.clone(),
            table: rel.table.clone(),
        };
        if !self.configured.contains(&name) {
            if self.ignored.insert(rel.id) {
                warn!(table = %name, "the publication carries a table that is not configured; its changes are skipped");
            }
            return Ok(());
        }
        let types: Vec<(u32, i32)> = rel.columns.iter().map(|c| (c.type_oid, c.typmod)).collect();
        let kinds = self.types.kinds(client, &types, &self.out.format).await?;
        let key = key_columns(&rel, &primary_key(client, rel.id).await?, &name)?;
        let columns: Vec<(String, ValueKind)> =
            rel.columns.into_iter().map(|c| c.name).zip(kinds).collect();
        let topic = name.topic(&self.out.prefix);
        let partitions = *self.partitions.get(&topic).unwrap_or(&1);
        let schemas = if self.out.format.schemas() {
            Some(
                TableSchemas::new(&self.out.prefix, &name, &columns, &key).map_err(|e| {
                    BridgeError::Setup {
                        problem: format!("table {name}: {e}"),
                        fix: "run the bridge with --value-format debezium".into(),
                    }
                })?,
            )
        } else {
            None
        };
        info!(table = %name, columns = columns.len(), "relation");
        self.by_id.insert(
            rel.id,
            Table {
                label: name.to_string().into(),
                name,
                topic: topic.into(),
                partitions,
                columns,
                key,
                schemas,
            },
        );
        Ok(())
    }

    /// Learns a configured table from the catalog, as a Relation message would
    /// describe it now (for the snapshot, which reads before the stream starts).
    /// Returns its OID and its column names, in the order of the records' columns.
    pub async fn learn_from_catalog(
        &mut self,
        client: &Client,
        name: &TableName,
    ) -> Result<(u32, Vec<String>), BridgeError> {
        let pg = |e| BridgeError::postgres(format!("reading the columns of {name}"))(e);
        let row = client
            .query_one(
                "SELECT c.oid, c.relreplident::text FROM pg_catalog.pg_class c WHERE c.oid = $1::text::regclass",
                &[&name.quoted()],
            )
            .await
            .map_err(pg)?;
        let (id, identity): (u32, String) = (row.get(0), row.get(1));
        let key = primary_key(client, id).await?;
        let columns: Vec<RelColumn> = client
            .query(
                "SELECT attname::text, atttypid, atttypmod FROM pg_catalog.pg_attribute \
                 WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = '' \
                 ORDER BY attnum",
                &[&id],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                RelColumn {
                    key: identity == "f" || key.contains(&name),
                    name,
                    type_oid: r.get(1),
                    typmod: r.get(2),
                }
            })
            .collect();
        let rel = Relation {
            id,
            schema: name.schema.clone(),
            table: name.table.clone(),
            replica_identity: identity.bytes().next().unwrap_or(b'd'),
            columns,
        };
        let names = rel.columns.iter().map(|c| c.name.clone()).collect();
        self.learn(client, rel).await?;
        Ok((id, names))
    }

    /// From now on, leaves out the changes of `table` that its snapshot holds.
    pub fn filter(&mut self, table: TableName, filter: SnapshotFilter) {
        self.filters.insert(table, filter);
    }

    /// Whether the change of `txn` to relation `rel` is in that table's snapshot
    /// already; the filter goes at the first change committed past the snapshot.
    fn in_snapshot(&mut self, rel: u32, txn: &TxnInfo) -> bool {
        let Some(name) = self.by_id.get(&rel).map(|t| &t.name) else {
            return false;
        };
        let Some(filter) = self.filters.get(name) else {
            return false;
        };
        if txn.commit_lsn >= filter.insert_lsn {
            self.filters.remove(&name.clone());
            return false;
        }
        filter.snapshot.visible(txn.xid)
    }

    /// The op `r` record of one row a snapshot of relation `rel` read; `mark` is its
    /// `source.snapshot` (`"true"`, or `"first"`, `"last"`, ... at the edges).
    pub fn snapshot_record(
        &self,
        rel: u32,
        tuple: &Tuple,
        read: &SnapshotRead,
        mark: &str,
    ) -> Result<Record, BridgeError> {
        let t = self.by_id.get(&rel).ok_or_else(|| {
            decode_err(format!("snapshot of relation {rel} before it was learned"))
        })?;
        let txn = TxnInfo {
            xid: 0,
            commit_lsn: read.insert_lsn,
            commit_ms: read.ts_ms,
            commit_us: read.ts_ms.saturating_mul(1000),
            previous_commit_lsn: None,
        };
        let w = Writer {
            t,
            lsn: read.insert_lsn,
            seq: 0,
            txn: &txn,
            out: &self.out,
            order: None,
        };
        let (after, _) = t.row(tuple)?;
        let mut env = w.envelope_of(Op::Read, None, Some(after), Vec::new());
        // No transaction wrote the row: no txId and no commit position.
        env.source.tx_id = None;
        env.source.commit_lsn = None;
        env.source.snapshot = Value::String(mark.to_owned());
        let value = serde_json::to_vec(&env).map_err(|e| decode_err(e.to_string()))?;
        let mut record = w.record(t.key_of(tuple)?, Some(t.wrap_value(value)));
        record.op = Some("r");
        record
            .headers
            .push((SNAPSHOT_HEADER, read.snapshot.clone().into_bytes()));
        Ok(record)
    }

    /// The records that close the snapshot of relation `rel`: on every partition of its
    /// topic, a tombstone of the key `{"tidemark.snapshot":"<schema.table>"}` (never a
    /// row's key, so a consumer that rebuilds the table sees nothing) with the
    /// [`SNAPSHOT_HEADER`]. A cache whose load is older than the snapshot meets one on
    /// every partition, even where the table had no row.
    pub fn snapshot_markers(
        &self,
        rel: u32,
        read: &SnapshotRead,
    ) -> Result<Vec<Record>, BridgeError> {
        let t = self.by_id.get(&rel).ok_or_else(|| {
            decode_err(format!("snapshot of relation {rel} before it was learned"))
        })?;
        let key = key::encode([("tidemark.snapshot", &Value::String(t.label.to_string()))]);
        let key = match &t.schemas {
            Some(s) => connect::wrap(&s.snapshot_key, &key),
            None => key,
        };
        Ok((0..t.partitions)
            .map(|p| Record {
                topic: t.topic.clone(),
                partition: Some(p),
                key: key.clone(),
                value: None,
                timestamp_ms: read.ts_ms,
                table: t.label.clone(),
                op: None,
                headers: vec![(SNAPSHOT_HEADER, read.snapshot.clone().into_bytes())],
                lsn: read.insert_lsn,
            })
            .collect())
    }

    /// The records for one change at `lsn` of transaction `txn`. `seq` numbers the
    /// changes that share `lsn` (see [`Numbering`]): the first record gets `*seq`, and
    /// `*seq` is moved past the numbers used. With transaction metadata, `order`
    /// numbers the change records in the transaction.
    pub fn records(
        &mut self,
        msg: Message,
        lsn: u64,
        seq: &mut u32,
        txn: &TxnInfo,
        order: Option<&TxnOrder>,
    ) -> Result<Vec<Record>, BridgeError> {
        let rel = match &msg {
            Message::Insert { rel, .. }
            | Message::Update { rel, .. }
            | Message::Delete { rel, .. } => *rel,
            Message::Truncate { rels } => {
                let rels: Vec<u32> = rels
                    .iter()
                    .copied()
                    .filter(|&r| !self.in_snapshot(r, txn))
                    .collect();
                let out = self.truncates(&rels, lsn, *seq, txn, order);
                *seq += 1;
                return out;
            }
            Message::Relation(_) | Message::Ignored(_) => return Ok(Vec::new()),
        };
        if self.ignored.contains(&rel) || self.in_snapshot(rel, txn) {
            return Ok(Vec::new());
        }
        let t = self.by_id.get(&rel).ok_or_else(|| {
            decode_err(format!(
                "change for relation {rel} before its Relation message"
            ))
        })?;
        let w = Writer {
            t,
            lsn,
            seq: *seq,
            txn,
            out: &self.out,
            order,
        };
        *seq += 1;
        Ok(match msg {
            Message::Insert { new, .. } => vec![w.change(Op::Create, None, &new)?],
            Message::Update {
                old: Some(old),
                new,
                ..
            } if t.key_of(&old.tuple)? != t.key_of(&new)? => {
                // Debezium's headers: the delete names the new key, the create the old.
                let (old_key, new_key) = (t.key_of(&old.tuple)?, t.key_of(&new)?);
                let mut out = w.delete(&old)?;
                out[0].headers.push((NEW_KEY_HEADER, new_key));
                let second = Writer { seq: *seq, ..w };
                *seq += 1;
                let mut create = second.change(Op::Create, None, &new)?;
                create.headers.push((OLD_KEY_HEADER, old_key));
                out.push(create);
                out
            }
            Message::Update {
                old: Some(OldTuple { full: true, tuple }),
                new,
                ..
            } => {
                vec![w.change(Op::Update, Some(t.row(&tuple)?.0), &new)?]
            }
            Message::Update { new, .. } => vec![w.change(Op::Update, None, &new)?],
            Message::Delete { old, .. } => w.delete(&old)?,
            _ => Vec::new(),
        })
    }

    fn truncates(
        &self,
        rels: &[u32],
        lsn: u64,
        seq: u32,
        txn: &TxnInfo,
        order: Option<&TxnOrder>,
    ) -> Result<Vec<Record>, BridgeError> {
        let mut out = Vec::new();
        for t in rels.iter().filter_map(|r| self.by_id.get(r)) {
            if self.out.truncate == TruncateMode::Skip {
                metrics::counter!(crate::telemetry::SKIPPED_TRUNCATES, "table" => t.label.to_string())
                    .increment(1);
                warn!(table = %t.name, lsn = %pgwire_replication::Lsn(lsn),
                    "TRUNCATE skipped (--truncate skip): caches following the topic keep the truncated rows");
                continue;
            }
            let w = Writer {
                t,
                lsn,
                seq,
                txn,
                out: &self.out,
                order,
            };
            // An envelope per partition: with transaction metadata each record is
            // one change record of the transaction, with its own place in it.
            for p in 0..t.partitions {
                let value = w.envelope(Op::Truncate, None, None, Vec::new())?;
                out.push(Record {
                    partition: Some(p),
                    op: (p == 0).then_some("t"),
                    ..w.record(t.truncate_key(), Some(value))
                });
            }
        }
        Ok(out)
    }
}

impl Table {
    /// One column's value through the codec. A value the codec cannot read travels as
    /// its text (the client's bulk load does the same, see
    /// [`ValueKind::decode_lenient`]): one odd value must not stop every table's stream.
    fn decode(&self, column: &str, kind: &ValueKind, bytes: &[u8]) -> Value {
        let (value, error) = kind.decode_lenient(&codec::text_of(bytes));
        if let Some(e) = error {
            metrics::counter!(crate::telemetry::UNDECODABLE_VALUES, "table" => self.name.to_string())
                .increment(1);
            warn!(table = %self.name, column, error = %e, "a value the codec cannot read is written as its text");
        }
        value
    }

    /// The row of a tuple: all sent columns, or only the non-null ones for a key-only
    /// old tuple. Unchanged TOAST columns are left out and named.
    fn row(&self, tuple: &Tuple) -> Result<(Row, Vec<String>), BridgeError> {
        if tuple.len() > self.columns.len() {
            return Err(decode_err(format!(
                "{} sent {} columns, expected {}",
                self.name,
                tuple.len(),
                self.columns.len()
            )));
        }
        let mut row = Row::new();
        let mut unchanged = Vec::new();
        for ((name, kind), datum) in self.columns.iter().zip(tuple) {
            match datum {
                Datum::Null => {
                    row.insert(name.clone(), Value::Null);
                }
                Datum::UnchangedToast => unchanged.push(name.clone()),
                Datum::Text(bytes) => {
                    row.insert(name.clone(), self.decode(name, kind, bytes));
                }
            }
        }
        Ok((row, unchanged))
    }

    fn key_of(&self, tuple: &Tuple) -> Result<Vec<u8>, BridgeError> {
        let mut values = Vec::with_capacity(self.key.len());
        for &i in &self.key {
            let (name, kind) = &self.columns[i];
            let value = match tuple.get(i) {
                Some(Datum::Text(b)) => self.decode(name, kind, b),
                Some(Datum::Null) | None => Value::Null,
                Some(Datum::UnchangedToast) => {
                    return Err(decode_err(format!(
                        "key column {}.{name} arrived as unchanged TOAST",
                        self.name
                    )))
                }
            };
            values.push((name.as_str(), value));
        }
        let key = key::encode(values.iter().map(|(n, v)| (*n, v)));
        Ok(match &self.schemas {
            Some(s) => connect::wrap(&s.key, &key),
            None => key,
        })
    }

    /// A value as written: with `--value-schema`, wrapped with the value's schema.
    fn wrap_value(&self, value: Vec<u8>) -> Vec<u8> {
        match &self.schemas {
            Some(s) => connect::wrap(&s.value, &value),
            None => value,
        }
    }

    /// The key of a TRUNCATE record ([`TRUNCATE_KEY`], wrapped with `--value-schema`).
    fn truncate_key(&self) -> Vec<u8> {
        match &self.schemas {
            Some(s) => connect::wrap(&s.truncate_key, TRUNCATE_KEY),
            None => TRUNCATE_KEY.to_vec(),
        }
    }
}

/// Builds the records of one change.
#[derive(Clone, Copy)]
struct Writer<'a> {
    t: &'a Table,
    lsn: u64,
    /// See [`Source::seq`].
    seq: u32,
    txn: &'a TxnInfo,
    out: &'a Output,
    /// With transaction metadata, the transaction's numbering of its change records.
    order: Option<&'a TxnOrder>,
}

impl Writer<'_> {
    fn envelope(
        &self,
        op: Op,
        before: Option<Row>,
        after: Option<Row>,
        unchanged_toast: Vec<String>,
    ) -> Result<Vec<u8>, BridgeError> {
        serde_json::to_vec(&self.envelope_of(op, before, after, unchanged_toast))
            .map(|v| self.t.wrap_value(v))
            .map_err(|e| decode_err(e.to_string()))
    }

    fn envelope_of(
        &self,
        op: Op,
        before: Option<Row>,
        after: Option<Row>,
        unchanged_toast: Vec<String>,
    ) -> Envelope {
        let now = now_ns();
        Envelope {
            before,
            after,
            op,
            ts_ms: now / 1_000_000,
            ts_us: Some(now / 1_000),
            ts_ns: Some(now),
            source: Source {
                version: env!("CARGO_PKG_VERSION").into(),
                connector: "postgresql".into(),
                name: self.out.prefix.clone(),
                db: self.out.db.clone(),
                schema: self.t.name.schema.clone(),
                table: self.t.name.table.clone(),
                tx_id: Some(u64::from(self.txn.xid)),
                lsn: Some(self.lsn),
                commit_lsn: Some(self.txn.commit_lsn),
                seq: self.seq,
                ts_ms: self.txn.commit_ms,
                ts_us: Some(self.txn.commit_us),
                ts_ns: Some(self.txn.commit_us.saturating_mul(1_000)),
                snapshot: Value::String("false".into()),
                sequence: Some(sequence(self.txn.previous_commit_lsn, self.lsn)),
            },
            transaction: self.order.map(|o| o.next(&self.t.label)),
            unchanged_toast,
        }
    }

    /// A record of `key`, on the key's partition under the session's partition count.
    /// A record in a format other than tidemark's names it in [`FORMAT_HEADER`].
    fn record(&self, key: Vec<u8>, value: Option<Vec<u8>>) -> Record {
        let headers = match self.out.format {
            ValueFormat::Tidemark => Vec::new(),
            other => vec![(FORMAT_HEADER, other.describe().into_bytes())],
        };
        Record {
            topic: self.t.topic.clone(),
            partition: Some(partition_of(&key, self.t.partitions)),
            key,
            value,
            timestamp_ms: self.txn.commit_ms,
            table: self.t.label.clone(),
            op: None,
            headers,
            lsn: self.lsn,
        }
    }

    /// The tombstone that follows a delete, stamped with the delete's transaction
    /// and position ([`TOMBSTONE_HEADER`]).
    fn tombstone(&self, key: Vec<u8>) -> Result<Record, BridgeError> {
        let stamp = TombstoneStamp {
            tx_id: u64::from(self.txn.xid),
            commit_lsn: self.txn.commit_lsn,
            lsn: self.lsn,
            seq: self.seq,
            ts_ms: self.txn.commit_ms,
        };
        let mut record = self.record(key, None);
        record.headers.push((
            TOMBSTONE_HEADER,
            serde_json::to_vec(&stamp).map_err(|e| decode_err(e.to_string()))?,
        ));
        Ok(record)
    }

    fn change(&self, op: Op, before: Option<Row>, new: &Tuple) -> Result<Record, BridgeError> {
        let (after, unchanged) = self.t.row(new)?;
        let value = self.envelope(op, before, Some(after), unchanged)?;
        let code = if op == Op::Create { "c" } else { "u" };
        Ok(Record {
            op: Some(code),
            ..self.record(self.t.key_of(new)?, Some(value))
        })
    }

    /// A delete and its tombstone. `before` holds the key columns only, unless the old
    /// tuple carried the full row (REPLICA IDENTITY FULL).
    fn delete(&self, old: &OldTuple) -> Result<Vec<Record>, BridgeError> {
        let key = self.t.key_of(&old.tuple)?;
        let (old_row, _) = self.t.row(&old.tuple)?;
        let before = if old.full {
            old_row
        } else {
            let key_names: Vec<&String> =
                self.t.key.iter().map(|&i| &self.t.columns[i].0).collect();
            old_row
                .into_iter()
                .filter(|(name, _)| key_names.contains(&name))
                .collect()
        };
        let value = self.envelope(Op::Delete, Some(before), None, Vec::new())?;
        Ok(vec![
            Record {
                op: Some("d"),
                ..self.record(key.clone(), Some(value))
            },
            self.tombstone(key)?,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::{key_columns, Numbering};
    use crate::source::pgoutput::{RelColumn, Relation};
    use tidemark_core::wire::TableName;

    fn rel(identity: u8, columns: &[(&str, bool)]) -> Relation {
        Relation {
            id: 1,
            schema: "public".into(),
            table: "t".into(),
            replica_identity: identity,
            columns: columns
                .iter()
                .map(|&(name, key)| RelColumn {
                    name: name.into(),
                    type_oid: 23,
                    typmod: -1,
                    key,
                })
                .collect(),
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn key_membership_follows_the_wal_and_order_the_catalog() {
        let t = TableName::parse("public.t").unwrap();
        // Key (b, a) in the catalog, columns a, b, c.
        let r = rel(b'd', &[("a", true), ("b", true), ("c", false)]);
        assert_eq!(key_columns(&r, &names(&["b", "a"]), &t).unwrap(), [1, 0]);
        // Renamed since the change was written, or the table is gone: the WAL's key.
        let r = rel(b'd', &[("id", true), ("v", false)]);
        assert_eq!(key_columns(&r, &names(&["id2"]), &t).unwrap(), [0]);
        assert_eq!(key_columns(&r, &[], &t).unwrap(), [0]);
        // FULL flags every column: the catalog's key.
        let r = rel(b'f', &[("id", true), ("v", true)]);
        assert_eq!(key_columns(&r, &names(&["id"]), &t).unwrap(), [0]);
        assert!(key_columns(&r, &names(&["id2"]), &t).is_err());
        // NOTHING, and an index that is not the primary key, are refused.
        let r = rel(b'n', &[("id", false), ("v", false)]);
        assert!(key_columns(&r, &names(&["id"]), &t).is_err());
        let r = rel(b'i', &[("id", false), ("v", true)]);
        assert!(key_columns(&r, &names(&["id"]), &t).is_err());
        let r = rel(b'i', &[("id", true), ("v", false)]);
        assert_eq!(key_columns(&r, &names(&["id"]), &t).unwrap(), [0]);
        // No key at all.
        let r = rel(b'd', &[("id", false)]);
        assert!(key_columns(&r, &[], &t).is_err());
    }

    #[test]
    fn numbering_counts_within_one_lsn_and_restarts_at_the_next() {
        let mut n = Numbering::default();
        let mut take = |lsn| {
            let seq = n.at(lsn);
            let got = *seq;
            *seq += 1;
            got
        };
        assert_eq!([take(100), take(100), take(100)], [0, 1, 2]);
        assert_eq!([take(200), take(200), take(300)], [0, 1, 0]);
    }
}
