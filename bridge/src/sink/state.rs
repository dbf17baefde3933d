//! The bridge's own state, kept in Kafka beside the records it describes.
//!
//! One compacted topic per topic prefix, `<prefix>.tidemark-state` (one partition),
//! holds small JSON documents keyed by slot and kind: `{"slot":"<slot>","kind":"<kind>"}`.
//! The initial snapshot keeps its progress there (which tables are done, and the
//! snapshot each was read in, see [`crate::source::snapshot`]). Kafka is the place for
//! it: the records it speaks of are there, a state record is written through the same
//! producer after them, and it survives the bridge's machine. Written records are read
//! back with `isolation.level=read_committed`, so a transactional writer's aborted
//! state never counts.
//!
//! The table topics are `<prefix>.<schema>.<table>`, three names; the state topic has
//! two, so it never collides with a table's topic under the same prefix.

use std::time::Duration;

use rdkafka::Message;
use serde::{de::DeserializeOwned, Serialize};

use crate::config::Config;
use crate::error::BridgeError;
use crate::sink::{readback, Record};

/// How long reading the state may go without progress.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The state topic of the bridge's topic prefix.
pub fn topic(config: &Config) -> String {
    format!("{}.tidemark-state", config.topic_prefix)
}

/// The key of one state document: the slot and the kind of state.
pub fn key(slot: &str, kind: &str) -> Vec<u8> {
    use serde_json::Value;
    tidemark_core::wire::key::encode([
        ("slot", &Value::String(slot.to_owned())),
        ("kind", &Value::String(kind.to_owned())),
    ])
}

/// Creates the state topic when it is missing: one partition, compacted, with the
/// replication factor and topic settings of the table topics.
pub async fn ensure_topic(config: &Config) -> Result<(), BridgeError> {
    // Retention by time would forget a finished snapshot.
    crate::sink::topics::ensure_own_topic(
        config,
        &topic(config),
        &[("cleanup.policy", "compact")],
        &["retention.ms"],
        "the state topic",
    )
    .await
    .map(|_| ())
}

/// The newest state document under `key`, `None` when there is none (or it was
/// deleted with a tombstone). Reads the whole topic, which compaction keeps small.
pub fn load<T: DeserializeOwned>(config: &Config, key: &[u8]) -> Result<Option<T>, BridgeError> {
    let name = topic(config);
    let consumer = readback::consumer(config, "the state topic")?;
    let mut newest: Option<Option<Vec<u8>>> = None;
    readback::read_partition(&consumer, &name, 0, READ_TIMEOUT, |m| {
        if m.key() == Some(key) {
            newest = Some(m.payload().map(<[u8]>::to_vec));
        }
        false
    })?;
    match newest.flatten() {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            BridgeError::Decode(format!(
                "the state in {name} under {} does not parse: {e}; delete it with a tombstone for that key, or use another --slot",
                String::from_utf8_lossy(key)
            ))
        }),
    }
}

/// A record that stores `state` under `key`.
pub fn record(
    config: &Config,
    key: Vec<u8>,
    state: &impl Serialize,
    now_ms: i64,
) -> Result<Record, BridgeError> {
    let topic: std::sync::Arc<str> = topic(config).into();
    let value = serde_json::to_vec(state).map_err(|e| BridgeError::Decode(e.to_string()))?;
    Ok(Record {
        topic: topic.clone(),
        partition: Some(0),
        key,
        value: Some(value),
        timestamp_ms: now_ms,
        table: topic,
        op: None,
        headers: Vec::new(),
        lsn: 0,
    })
}
