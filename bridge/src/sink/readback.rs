//! Reading the bridge's own topics back as a `read_committed` consumer sees them: the
//! state topic's documents ([`crate::sink::state`]) and, before an initial snapshot,
//! whether a table's topic holds any row (`pipeline::snapshot`). Records of aborted
//! transactions and transaction markers take offsets, so a partition's watermarks
//! alone do not tell whether it holds anything a reader will see.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::Config;
use crate::error::BridgeError;
use crate::sink::producer::client_config;

/// A `read_committed` consumer for reading the bridge's topics back (manual
/// assignment, nothing committed); `what` names it in errors.
pub fn consumer(config: &Config, what: &str) -> Result<BaseConsumer, BridgeError> {
    client_config(config)
        .set("group.id", "tidemark-bridge-state")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(BridgeError::kafka(format!("creating the reader of {what}")))
}

/// Hands every committed record of `partition` of `topic`, from its low to its high
/// watermark as they are now, to `visit`, until `visit` returns `true` or the end is
/// reached. Fails when the reader's position does not move for `timeout`.
pub fn read_partition(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
    mut visit: impl FnMut(&BorrowedMessage<'_>) -> bool,
) -> Result<(), BridgeError> {
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(BridgeError::kafka(format!(
            "reading the watermarks of {topic} [{partition}]"
        )))?;
    if high <= low {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(low))
        .map_err(BridgeError::kafka(format!(
            "assigning {topic} [{partition}]"
        )))?;
    consumer.assign(&tpl).map_err(BridgeError::kafka(format!(
        "assigning {topic} [{partition}]"
    )))?;
    let mut deadline = Instant::now() + timeout;
    let mut reached = low;
    loop {
        // Under read_committed the position can stop short of `high` at an open
        // transaction's records; it ends at the last stable offset, which the position
        // reaches once nothing more is returned.
        let position = match consumer
            .position()
            .ok()
            .and_then(|p| p.find_partition(topic, partition).map(|e| e.offset()))
        {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        if position >= high {
            return Ok(());
        }
        if position > reached {
            reached = position;
            deadline = Instant::now() + timeout;
        }
        if Instant::now() >= deadline {
            return Err(BridgeError::Kafka {
                context: format!("reading {topic} [{partition}]: stuck at offset {position} for {timeout:?}, short of its end ({high})"),
                source: KafkaError::MessageConsumption(RDKafkaErrorCode::RequestTimedOut),
            });
        }
        match consumer.poll(Duration::from_millis(200)) {
            // A message still fetched for an earlier assignment.
            Some(Ok(m)) if m.topic() != topic || m.partition() != partition => {}
            Some(Ok(m)) if visit(&m) || m.offset() + 1 >= high => return Ok(()),
            Some(Ok(_)) => {}
            Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
            Some(Err(e)) => {
                return Err(BridgeError::kafka(format!("reading {topic} [{partition}]"))(e))
            }
            None => {}
        }
    }
}
