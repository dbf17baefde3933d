//! Heartbeat records: the bridge's sign of life on a topic that had no change for a
//! while (`--heartbeat-interval`).
//!
//! A heartbeat is a tombstone (no value) of the key `{"tidemark.heartbeat": "<slot>"}`,
//! which is never a row's key, with the header [`HEARTBEAT_HEADER`] holding a
//! [`Heartbeat`]. The bridge writes one on every partition of an idle topic, with the
//! server's time as the record's timestamp. Being a tombstone, it adds nothing to a
//! Kafka Streams table (a `KTable` or `GlobalKTable` deletes a key it never held) and
//! compaction removes it after `delete.retention.ms`; readers that look at headers
//! skip it, and may take its timestamp as the time up to which the partition is read.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The record header of a heartbeat; its value is a [`Heartbeat`] as JSON.
pub const HEARTBEAT_HEADER: &str = "tidemark.heartbeat";

/// What a heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The bridge's replication slot.
    pub slot: String,
    /// The LSN the bridge had confirmed to the slot when it wrote the heartbeat.
    pub lsn: u64,
    /// The server's time when the heartbeat was written, milliseconds since the epoch.
    pub ts_ms: i64,
}

impl Heartbeat {
    /// The heartbeat's record key: `{"tidemark.heartbeat": "<slot>"}` (never a row's key).
    pub fn key(&self) -> Vec<u8> {
        crate::wire::key::encode([("tidemark.heartbeat", &Value::String(self.slot.clone()))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_an_object_no_table_shares() {
        let h = Heartbeat {
            slot: "s".into(),
            lsn: 1,
            ts_ms: 2,
        };
        assert_eq!(h.key(), br#"{"tidemark.heartbeat":"s"}"#.to_vec());
    }
}
