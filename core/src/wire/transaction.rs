//! Transaction metadata (`--provide-transaction-metadata`), as Debezium's
//! `provide.transaction.metadata` writes it.
//!
//! For every PostgreSQL transaction that produced at least one change record, the
//! bridge writes a `BEGIN` and an `END` [`TransactionEvent`] to the topic
//! `<prefix>.transaction` ([`topic`]), keyed by `{"id": <id>}`, and every change
//! record of the transaction carries a [`TransactionBlock`] in its envelope's
//! `transaction` field. A consumer that buffers a transaction's changes until it has
//! as many as the `END` event counts per table (`data_collections`) applies whole
//! transactions, across topics.
//!
//! The id is `"<txId>:<commit LSN>"` ([`id`]): the 32-bit xid alone wraps around, and
//! the commit LSN is what pgoutput's Begin message carries (it names no first LSN);
//! both halves are the envelope's `source.txId` and `source.commit_lsn`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The topic of the transaction events under `prefix`: `<prefix>.transaction`
/// (Debezium's default `topic.transaction`). No table's topic has this name: a table's
/// has two dots after the prefix.
pub fn topic(prefix: &str) -> String {
    format!("{prefix}.transaction")
}

/// A transaction's id: `"<txId>:<commit LSN>"`, the LSN in decimal.
pub fn id(xid: u32, commit_lsn: u64) -> String {
    format!("{xid}:{commit_lsn}")
}

/// A transaction event's key: `{"id": <id>}`.
pub fn key(id: &str) -> Vec<u8> {
    crate::wire::key::encode([("id", &Value::String(id.to_owned()))])
}

/// The `transaction` field of a change record's envelope: which transaction wrote it
/// and where the record stands among the transaction's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionBlock {
    /// The transaction's [`id`].
    pub id: String,
    /// The record's position among all change records of the transaction, from 1.
    pub total_order: u64,
    /// The record's position among the transaction's change records of the same
    /// table, from 1.
    pub data_collection_order: u64,
}

/// Whether a [`TransactionEvent`] opens or closes its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Written before the transaction's first change record.
    #[serde(rename = "BEGIN")]
    Begin,
    /// Written after its last change record, with the counts.
    #[serde(rename = "END")]
    End,
}

/// How many change records of one transaction went to one table's topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCollection {
    /// The table, `schema.table`.
    pub data_collection: String,
    /// Its change records in the transaction.
    pub event_count: u64,
}

/// One record of the transaction topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionEvent {
    /// `BEGIN` or `END`.
    pub status: Status,
    /// The transaction's [`id`].
    pub id: String,
    /// The transaction's commit time, milliseconds since the epoch.
    pub ts_ms: i64,
    /// On `END`, the number of change records the transaction wrote; `null` on `BEGIN`.
    pub event_count: Option<u64>,
    /// On `END`, the count per table, in the order the tables first appeared; `null`
    /// on `BEGIN`.
    pub data_collections: Option<Vec<DataCollection>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_have_debeziums_shape() {
        let begin = TransactionEvent {
            status: Status::Begin,
            id: id(571, 53195832),
            ts_ms: 5,
            event_count: None,
            data_collections: None,
        };
        assert_eq!(
            serde_json::to_value(&begin).unwrap(),
            json!({"status": "BEGIN", "id": "571:53195832", "ts_ms": 5,
                   "event_count": null, "data_collections": null})
        );
        let end = TransactionEvent {
            status: Status::End,
            event_count: Some(2),
            data_collections: Some(vec![DataCollection {
                data_collection: "s1.a".into(),
                event_count: 2,
            }]),
            ..begin
        };
        assert_eq!(
            serde_json::to_value(&end).unwrap()["data_collections"],
            json!([{"data_collection": "s1.a", "event_count": 2}])
        );
        assert_eq!(key("571:53195832"), br#"{"id":"571:53195832"}"#.to_vec());
        assert_eq!(topic("srv"), "srv.transaction");
    }
}
