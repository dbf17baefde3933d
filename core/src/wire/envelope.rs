//! The Kafka record format: topic names, keys and the Debezium-style envelope.
//!
//! The bridge writes exactly these types and the client reads exactly these types,
//! so the two cannot drift apart. The format is Debezium's JSON converter output with
//! `schemas.enable=false`, plus `source.commit_lsn` and `unchanged_toast`; fields that
//! Debezium leaves out are optional on the way in, so the client also reads Debezium
//! topics.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A row or a key: column name to JSON value, in column order.
pub type Row = Map<String, Value>;

/// The kind of change a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// An insert.
    #[serde(rename = "c")]
    Create,
    /// An update.
    #[serde(rename = "u")]
    Update,
    /// A delete (followed by a tombstone record with the same key).
    #[serde(rename = "d")]
    Delete,
    /// A row read by a snapshot.
    #[serde(rename = "r")]
    Read,
    /// A TRUNCATE; the bridge writes one to every partition of the topic.
    #[serde(rename = "t")]
    Truncate,
}

/// Where a change came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The writer's version (the bridge's crate version; Debezium's own version on a
    /// Debezium topic). Left out when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// Always `postgresql`.
    #[serde(default)]
    pub connector: String,
    /// The logical name of the writer: the topic prefix (Debezium's `topic.prefix`).
    #[serde(default)]
    pub name: String,
    /// The database name.
    #[serde(default)]
    pub db: String,
    /// The table's schema.
    pub schema: String,
    /// The table's name.
    pub table: String,
    /// The 32-bit id of the transaction that made the change.
    #[serde(rename = "txId", default)]
    pub tx_id: Option<u64>,
    /// The LSN of the change itself.
    #[serde(default)]
    pub lsn: Option<u64>,
    /// The LSN of the commit record of the change's transaction.
    #[serde(default)]
    pub commit_lsn: Option<u64>,
    /// Numbers the records of one transaction that share `lsn` (the rows of one
    /// `COPY` page, the delete and create of a primary-key change), from 0 in stream
    /// order. Left out when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u32,
    /// The transaction's commit time, in milliseconds since the epoch.
    #[serde(default)]
    pub ts_ms: i64,
    /// The commit time in microseconds since the epoch (Debezium 2.6 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_us: Option<i64>,
    /// The commit time in nanoseconds since the epoch (Debezium 2.6 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_ns: Option<i64>,
    /// `"false"` for streamed changes; for a snapshot's op `r` records `"true"`, or
    /// `"first"`, `"first_in_data_collection"`, `"last_in_data_collection"` and
    /// `"last"` at the edges (Debezium's convention).
    #[serde(default)]
    pub snapshot: Value,
    /// Debezium's ordering token: a JSON array, as a string, of the previous
    /// transaction's commit LSN (`null` when unknown) and this change's LSN, both as
    /// decimal strings: `["24023119","24023128"]` ([`sequence`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<String>,
}

/// [`Source::sequence`] as Debezium's PostgreSQL connector writes it.
pub fn sequence(previous_commit_lsn: Option<u64>, lsn: u64) -> String {
    let previous = previous_commit_lsn.map_or(Value::Null, |l| Value::String(l.to_string()));
    Value::Array(vec![previous, Value::String(lsn.to_string())]).to_string()
}

/// The header Debezium writes on the delete that an update of the primary key
/// becomes: the row's new key (the record's key is the old one).
pub const NEW_KEY_HEADER: &str = "__debezium.newkey";

/// The header Debezium writes on the create that an update of the primary key
/// becomes: the row's old key.
pub const OLD_KEY_HEADER: &str = "__debezium.oldkey";

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Where a record stands in the change stream: `(commit_lsn, lsn, seq)`. Records reach
/// each partition in this order, so a reader drops a record whose position is not
/// newer than the last one it applied from that partition: that is a replay.
pub type Position = (u64, u64, u32);

/// The record header a tombstone carries: the [`TombstoneStamp`] of the delete it
/// follows, as JSON. Headers survive compaction, so a reader that meets the tombstone
/// without its delete (compacted away) can still place it in the stream and apply it.
pub const TOMBSTONE_HEADER: &str = "tidemark.delete";

/// Where the delete a tombstone follows stands: the same transaction and position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TombstoneStamp {
    /// The deleting transaction's 32-bit id.
    #[serde(rename = "txId")]
    pub tx_id: u64,
    /// The LSN of its commit record.
    pub commit_lsn: u64,
    /// The LSN of the delete.
    pub lsn: u64,
    /// See [`Source::seq`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u32,
    /// The commit time, milliseconds since the epoch.
    pub ts_ms: i64,
}

impl TombstoneStamp {
    /// The delete's [`Position`].
    pub fn position(&self) -> Position {
        (self.commit_lsn, self.lsn, self.seq)
    }
}

/// The record header of a slot marker: the bridge created its replication slot anew
/// (the first time, or after the old one was dropped or lost), so the changes between
/// the old slot's last position and the new slot's start never reached the topic.
/// The bridge writes one marker, with a [`SlotMarker`] as its value and this header,
/// on every partition before the new slot's first change.
pub const SLOT_MARKER_HEADER: &str = "tidemark.slot-created";

/// The record header of an op `r` record the bridge's initial snapshot wrote: the
/// `pg_current_snapshot()` text (`xmin:xmax:xip,...`) of the transaction that read the
/// row. A reader whose own snapshot contains it already holds the row (or a newer
/// version); a reader whose snapshot does not may be older than the topic's start for
/// that table and must load again.
pub const SNAPSHOT_HEADER: &str = "tidemark.snapshot";

/// What a slot marker says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotMarker {
    /// The slot's name.
    pub slot: String,
    /// The LSN from which the new slot streams (its consistent point): every change
    /// committed before it is either in an older part of the topic or nowhere.
    pub lsn: u64,
}

impl SlotMarker {
    /// The marker's record key: `{"tidemark.slot": "<slot>"}` (never a row's key).
    pub fn key(&self) -> Vec<u8> {
        crate::wire::key::encode([("tidemark.slot", &Value::String(self.slot.clone()))])
    }
}

/// One record value: a change to one row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The old row (full with `REPLICA IDENTITY FULL`, key columns on delete, else `null`).
    pub before: Option<Row>,
    /// The new row; `null` on delete and truncate.
    pub after: Option<Row>,
    /// The kind of change.
    pub op: Op,
    /// When the bridge wrote the record, in milliseconds since the epoch.
    #[serde(default)]
    pub ts_ms: i64,
    /// The same time in microseconds (Debezium 2.6 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_us: Option<i64>,
    /// The same time in nanoseconds (Debezium 2.6 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_ns: Option<i64>,
    /// Where the change came from.
    pub source: Source,
    /// The transaction the change belongs to and the record's place in it, with
    /// `--provide-transaction-metadata` (see [`crate::wire::transaction`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<crate::wire::transaction::TransactionBlock>,
    /// Columns of `after` whose TOASTed value did not change and was not sent; the
    /// reader keeps the value it already has.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged_toast: Vec<String>,
}

impl Envelope {
    /// The record's [`Position`], when it carries `commit_lsn` and `lsn` (tidemark's
    /// bridge always writes both).
    pub fn position(&self) -> Option<Position> {
        Some((self.source.commit_lsn?, self.source.lsn?, self.source.seq))
    }
}

/// A table name, `schema.table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableName {
    /// The schema (`public` when the name has no dot).
    pub schema: String,
    /// The table.
    pub table: String,
}

impl TableName {
    /// Parses `schema.table` or `table` (schema `public`). Names are taken as written:
    /// quote nothing, and use the exact (usually lower-case) catalog spelling.
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.trim();
        let (schema, table) = match name.split_once('.') {
            Some((s, t)) => (s, t),
            None => ("public", name),
        };
        if schema.is_empty() || table.is_empty() || table.contains('.') {
            return None;
        }
        Some(TableName {
            schema: schema.to_owned(),
            table: table.to_owned(),
        })
    }

    /// The SQL identifier, each part double-quoted.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// The topic of this table under `prefix`: `<prefix>.<schema>.<table>`, with every
    /// character Kafka does not allow in a topic name (anything but ASCII letters,
    /// digits, `.`, `_` and `-`) replaced by `_`, as Debezium's default topic naming
    /// does.
    pub fn topic(&self, prefix: &str) -> String {
        format!("{prefix}.{}.{}", self.schema, self.table)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Double-quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The key a TRUNCATE record carries. Compacted topics refuse records without a key, so
/// a truncate gets this fixed one; readers recognise truncates by `op`, not by key.
pub const TRUNCATE_KEY: &[u8] = b"{}";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn envelope_round_trips_and_reads_debezium() {
        let debezium = json!({
            "before": null, "after": {"id": 1, "name": "Ada"}, "op": "c", "ts_ms": 5,
            "source": {"version": "2.5", "connector": "postgresql", "name": "srv", "db": "app",
                       "schema": "public", "table": "t", "txId": 7, "lsn": 100, "ts_ms": 4,
                       "snapshot": "false", "sequence": "[null,\"100\"]"}
        });
        let env: Envelope = serde_json::from_value(debezium).unwrap();
        assert_eq!(env.op, Op::Create);
        assert_eq!(env.source.tx_id, Some(7));
        assert_eq!(env.source.commit_lsn, None);
        let back: Envelope = serde_json::from_str(&serde_json::to_string(&env).unwrap()).unwrap();
        assert_eq!(back, env);
        assert!(!serde_json::to_string(&env)
            .unwrap()
            .contains("unchanged_toast"));
    }

    #[test]
    fn reads_debeziums_transaction_block_and_new_fields() {
        let debezium = json!({
            "before": null, "after": {"id": 1}, "op": "c", "ts_ms": 5, "ts_us": 5001, "ts_ns": 5001002,
            "source": {"version": "2.7.0.Final", "connector": "postgresql", "name": "srv", "db": "app",
                       "schema": "public", "table": "t", "txId": 7, "lsn": 100, "ts_ms": 4,
                       "ts_us": 4000, "ts_ns": 4000000, "snapshot": "false", "xmin": null,
                       "sequence": "[\"90\",\"100\"]"},
            "transaction": {"id": "7:100", "total_order": 1, "data_collection_order": 1}
        });
        let env: Envelope = serde_json::from_value(debezium).unwrap();
        assert_eq!(env.ts_us, Some(5001));
        assert_eq!(env.source.sequence.as_deref(), Some(r#"["90","100"]"#));
        assert_eq!(env.source.version, "2.7.0.Final");
        let block = env.transaction.unwrap();
        assert_eq!((block.id.as_str(), block.total_order), ("7:100", 1));
    }

    #[test]
    fn sequence_is_debeziums_array_string() {
        assert_eq!(sequence(None, 24023128), r#"[null,"24023128"]"#);
        assert_eq!(
            sequence(Some(24023119), 24023128),
            r#"["24023119","24023128"]"#
        );
    }

    #[test]
    fn table_names() {
        let t = TableName::parse("app.accounts").unwrap();
        assert_eq!(t.topic("tidemark"), "tidemark.app.accounts");
        assert_eq!(TableName::parse("accounts").unwrap().schema, "public");
        assert!(TableName::parse("a.b.c").is_none());
        assert_eq!(
            TableName::parse("s.we\"ird").unwrap().quoted(),
            "\"s\".\"we\"\"ird\""
        );
    }
}
