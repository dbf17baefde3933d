//! Heartbeats (`--heartbeat-interval`): a record on every partition of a topic that
//! had no record for the interval, so that its readers see the bridge is alive and
//! how far it is (the format: `tidemark_core::wire::heartbeat`).
//!
//! Heartbeats are written between PostgreSQL transactions only, each group as a
//! transaction of its own in the frontier (and inside the open Kafka transaction with
//! `--exactly-once`); they carry the slot's confirmed LSN and the server's time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidemark_core::wire::heartbeat::{Heartbeat, HEARTBEAT_HEADER};

use crate::error::BridgeError;
use crate::sink::Record;

/// When each topic last got a record.
#[derive(Debug)]
pub struct Heartbeats {
    interval: Duration,
    /// Per topic: its partition count and when it last got a record.
    topics: HashMap<Arc<str>, (i32, Instant)>,
}

impl Heartbeats {
    /// Heartbeats every `interval` on the `partitions` topics (name → partition count);
    /// the first comes one interval after the start.
    pub fn new(interval: Duration, partitions: &HashMap<String, i32>) -> Self {
        let now = Instant::now();
        Heartbeats {
            interval,
            topics: partitions
                .iter()
                .map(|(t, &n)| (Arc::from(t.as_str()), (n, now)))
                .collect(),
        }
    }

    /// `topic` got a record now.
    pub fn wrote(&mut self, topic: &str) {
        if let Some((_, last)) = self.topics.get_mut(topic) {
            *last = Instant::now();
        }
    }

    /// Whether some topic is due.
    pub fn any_due(&self) -> bool {
        self.topics
            .values()
            .any(|(_, last)| last.elapsed() >= self.interval)
    }

    /// The heartbeats of every due topic, one per partition, and marks them written.
    pub fn due(&mut self, slot: &str, lsn: u64, now_ms: i64) -> Result<Vec<Record>, BridgeError> {
        let heartbeat = Heartbeat {
            slot: slot.to_owned(),
            lsn,
            ts_ms: now_ms,
        };
        let header =
            serde_json::to_vec(&heartbeat).map_err(|e| BridgeError::Decode(e.to_string()))?;
        let key = heartbeat.key();
        let mut out = Vec::new();
        for (topic, (partitions, last)) in &mut self.topics {
            if last.elapsed() < self.interval {
                continue;
            }
            *last = Instant::now();
            out.extend((0..*partitions).map(|p| Record {
                topic: topic.clone(),
                partition: Some(p),
                key: key.clone(),
                value: None,
                timestamp_ms: now_ms,
                table: topic.clone(),
                op: None,
                headers: vec![(HEARTBEAT_HEADER, header.clone())],
                lsn,
            }));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idle_topics_get_heartbeats_on_every_partition() {
        let partitions = HashMap::from([("a".to_owned(), 3), ("b".to_owned(), 2)]);
        let mut h = Heartbeats::new(Duration::from_millis(30), &partitions);
        assert!(!h.any_due());
        std::thread::sleep(Duration::from_millis(40));
        h.wrote("b");
        assert!(h.any_due());
        let records = h.due("s", 7, 1_000).expect("records");
        assert_eq!(records.len(), 3);
        assert!(records
            .iter()
            .all(|r| &*r.topic == "a" && r.value.is_none()));
        let mut parts: Vec<i32> = records.iter().filter_map(|r| r.partition).collect();
        parts.sort_unstable();
        assert_eq!(parts, [0, 1, 2]);
        assert!(!h.any_due(), "marked written");
    }
}
