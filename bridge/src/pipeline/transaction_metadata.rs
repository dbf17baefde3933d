//! Transaction metadata (`--provide-transaction-metadata`): numbers the change records
//! of each PostgreSQL transaction and writes its BEGIN and END events (the format is
//! [`tidemark_core::wire::transaction`]).
//!
//! The session opens a [`TxnOrder`] at each Begin message. Every change record takes
//! its [`TransactionBlock`] from it ([`TxnOrder::next`]); the session writes the BEGIN
//! event just before the transaction's first change record, and the END event, with
//! the counts, at its Commit message, before the transaction counts as done in the
//! frontier. A transaction that wrote no change record (only tables the bridge does
//! not follow, or changes its initial snapshot already holds) gets no events, as
//! Debezium writes none for it. Events go through the same producer, and with
//! `--exactly-once` into the same Kafka transaction, as the change records; without
//! it, a replay after a crash writes them again with the records, as it does the
//! records.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use tidemark_core::wire::connect::{self, compact};
use tidemark_core::wire::partitioner::partition_of;
use tidemark_core::wire::transaction::{
    self, DataCollection, Status, TransactionBlock, TransactionEvent,
};

use crate::config::Config;
use crate::error::BridgeError;
use crate::sink::{topics, Record};

/// The change records one transaction has written so far.
#[derive(Debug)]
pub struct TxnOrder {
    id: String,
    commit_lsn: u64,
    commit_ms: i64,
    total: Cell<u64>,
    /// Per table (`schema.table`), in the order the tables first appeared.
    per_table: RefCell<Vec<(Arc<str>, u64)>>,
    begun: bool,
}

impl TxnOrder {
    /// The order of the transaction `xid` that commits at `commit_lsn`, at `commit_ms`.
    pub fn new(xid: u32, commit_lsn: u64, commit_ms: i64) -> Self {
        TxnOrder {
            id: transaction::id(xid, commit_lsn),
            commit_lsn,
            commit_ms,
            total: Cell::new(0),
            per_table: RefCell::new(Vec::new()),
            begun: false,
        }
    }

    /// The block of the transaction's next change record, one of `table`'s.
    pub fn next(&self, table: &Arc<str>) -> TransactionBlock {
        self.total.set(self.total.get() + 1);
        let mut per_table = self.per_table.borrow_mut();
        let in_table = match per_table.iter_mut().find(|(t, _)| t == table) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                per_table.push((table.clone(), 1));
                1
            }
        };
        TransactionBlock {
            id: self.id.clone(),
            total_order: self.total.get(),
            data_collection_order: in_table,
        }
    }

    /// True once, when the transaction has numbered a record and its BEGIN event is
    /// still to be written.
    pub fn take_begin(&mut self) -> bool {
        let due = !self.begun && self.total.get() > 0;
        self.begun |= due;
        due
    }

    /// Whether its BEGIN event was written, so its END event is due at the commit.
    pub fn begun(&self) -> bool {
        self.begun
    }
}

/// Where the events go: `<prefix>.transaction`.
#[derive(Debug, Clone)]
pub struct TransactionTopic {
    topic: Arc<str>,
    partitions: i32,
    /// With `--value-schema`, the key's and the value's serialised schemas.
    schemas: Option<(Vec<u8>, Vec<u8>)>,
}

impl TransactionTopic {
    /// The topic of the configured prefix, created when missing: one partition (so
    /// the events keep the commit order) and `cleanup.policy=delete` (a compacted
    /// topic would keep only the END of each transaction, whose key its BEGIN shares).
    pub async fn ensure(config: &Config) -> Result<Self, BridgeError> {
        let name = transaction::topic(&config.topic_prefix);
        let partitions = topics::ensure_own_topic(
            config,
            &name,
            &[("cleanup.policy", "delete")],
            &["min.compaction.lag.ms"],
            "the transaction topic",
        )
        .await?;
        Ok(Self::new(
            &config.topic_prefix,
            partitions,
            config.records.format.schemas(),
        ))
    }

    /// The topic of `prefix` with `partitions`; `wrapped` with `--value-schema`.
    pub fn new(prefix: &str, partitions: i32, wrapped: bool) -> Self {
        TransactionTopic {
            topic: transaction::topic(prefix).into(),
            partitions,
            schemas: wrapped.then(|| {
                (
                    compact(&connect::transaction_key_schema()),
                    compact(&connect::transaction_value_schema()),
                )
            }),
        }
    }

    /// The BEGIN event of `order`'s transaction.
    pub fn begin(&self, order: &TxnOrder) -> Result<Record, BridgeError> {
        self.event(order, Status::Begin, None, None)
    }

    /// The END event of `order`'s transaction, with its counts.
    pub fn end(&self, order: &TxnOrder) -> Result<Record, BridgeError> {
        let collections = order
            .per_table
            .borrow()
            .iter()
            .map(|(table, n)| DataCollection {
                data_collection: table.to_string(),
                event_count: *n,
            })
            .collect();
        self.event(
            order,
            Status::End,
            Some(order.total.get()),
            Some(collections),
        )
    }

    fn event(
        &self,
        order: &TxnOrder,
        status: Status,
        event_count: Option<u64>,
        data_collections: Option<Vec<DataCollection>>,
    ) -> Result<Record, BridgeError> {
        let event = TransactionEvent {
            status,
            id: order.id.clone(),
            ts_ms: order.commit_ms,
            event_count,
            data_collections,
        };
        let value = serde_json::to_vec(&event).map_err(|e| BridgeError::Decode(e.to_string()))?;
        let key = transaction::key(&order.id);
        let (key, value) = match &self.schemas {
            Some((k, v)) => (connect::wrap(k, &key), connect::wrap(v, &value)),
            None => (key, value),
        };
        Ok(Record {
            topic: self.topic.clone(),
            partition: Some(partition_of(&key, self.partitions)),
            key,
            value: Some(value),
            timestamp_ms: order.commit_ms,
            table: self.topic.clone(),
            op: None,
            headers: Vec::new(),
            lsn: order.commit_lsn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn records_are_numbered_per_transaction_and_table_and_counted_at_the_end() {
        let (a, b): (Arc<str>, Arc<str>) = ("s.a".into(), "s.b".into());
        let mut order = TxnOrder::new(7, 100, 5);
        assert!(!order.take_begin(), "no BEGIN before a record");
        let orders: Vec<(u64, u64)> = [&a, &b, &a]
            .iter()
            .map(|t| {
                let block = order.next(t);
                assert_eq!(block.id, "7:100");
                (block.total_order, block.data_collection_order)
            })
            .collect();
        assert_eq!(orders, [(1, 1), (2, 1), (3, 2)]);
        assert!(order.take_begin());
        assert!(!order.take_begin(), "one BEGIN");
        let topic = TransactionTopic::new("srv", 1, false);
        let end = topic.end(&order).unwrap();
        assert_eq!(&*end.topic, "srv.transaction");
        let value: Value = serde_json::from_slice(end.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            value,
            json!({"status": "END", "id": "7:100", "ts_ms": 5, "event_count": 3,
                   "data_collections": [{"data_collection": "s.a", "event_count": 2},
                                        {"data_collection": "s.b", "event_count": 1}]})
        );
        let wrapped = TransactionTopic::new("srv", 1, true).begin(&order).unwrap();
        let key: Value = serde_json::from_slice(&wrapped.key).unwrap();
        assert_eq!(key["payload"], json!({"id": "7:100"}));
        assert_eq!(
            key["schema"]["name"],
            "io.debezium.connector.common.TransactionMetadataKey"
        );
    }
}
