//! Reading topics back: every record of a topic, and waiting for records to arrive.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers as _, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

use super::services::START_STACK;

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Value,
    /// `None` for a tombstone.
    pub value: Option<Value>,
    /// The `tidemark.snapshot` header of an op `r` record.
    pub snapshot: Option<String>,
    /// The record headers, name and value (as text).
    pub headers: Vec<(String, String)>,
}

/// A consumer for reading topics back (no group, manual assignment).
pub fn consumer(brokers: &str) -> BaseConsumer {
    consumer_with(brokers, &[])
}

/// [`consumer`] with more settings.
fn consumer_with(brokers: &str, settings: &[(&str, &str)]) -> BaseConsumer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.auto.commit", "false")
        .set("group.id", "tidemark-tests-unused");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    config.create().unwrap_or_else(|e| {
        panic!("cannot create a Kafka consumer for {brokers} ({e}); {START_STACK}")
    })
}

/// The value of header `name` of `msg`.
fn header(msg: &rdkafka::message::BorrowedMessage<'_>, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    msg.headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == name)
            .map(|h| String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
    })
}

/// Whether `msg` is one of the bridge's markers, not a change: a slot marker
/// (`SLOT_MARKER_HEADER`) or the tombstone that ends a table's snapshot (a
/// value-less record with `SNAPSHOT_HEADER`).
fn is_marker(msg: &rdkafka::message::BorrowedMessage<'_>) -> bool {
    use tidemark_core::wire::envelope::{SLOT_MARKER_HEADER, SNAPSHOT_HEADER};
    header(msg, SLOT_MARKER_HEADER).is_some()
        || (msg.payload().is_none() && header(msg, SNAPSHOT_HEADER).is_some())
}

/// Every record of `topic` but the bridge's markers, partition by partition, up to
/// the current high watermarks. Committed records only (librdkafka's default
/// `read_committed`); a partition whose last offset is a transaction marker, which no
/// consumer receives, ends at its end-of-partition event.
pub fn read_topic(brokers: &str, topic: &str) -> Vec<Rec> {
    let c = consumer_with(brokers, &[("enable.partition.eof", "true")]);
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("broker {brokers} unreachable ({e}); {START_STACK}"));
    let parts: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    let mut highs = HashMap::new();
    for &p in &parts {
        let (low, high) = watermarks(&c, topic, p);
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .expect("assign");
            highs.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if highs.is_empty() {
        return out;
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut done: HashMap<i32, bool> = highs.keys().map(|&p| (p, false)).collect();
    while done.values().any(|d| !d) {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        let msg = match c.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                done.insert(p, true);
                continue;
            }
            Some(msg) => msg.expect("consume"),
        };
        let p = msg.partition();
        if msg.offset() + 1 >= highs[&p] {
            done.insert(p, true);
        }
        if msg.offset() >= highs[&p] || is_marker(&msg) {
            continue;
        }
        out.push(Rec {
            partition: p,
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            key: serde_json::from_slice(msg.key().unwrap_or(b"null")).expect("key is JSON"),
            value: msg
                .payload()
                .map(|v| serde_json::from_slice(v).expect("value is JSON")),
            snapshot: header(&msg, tidemark_core::wire::envelope::SNAPSHOT_HEADER),
            headers: msg
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                            (h.key.to_owned(), value.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    out
}

/// The low and high watermarks of one partition. A broker that has just restarted
/// answers "not leader" (or "leader not available") until its partitions have a
/// leader again, so those answers are retried for up to 30 s.
fn watermarks(c: &BaseConsumer, topic: &str, partition: i32) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
            Ok(w) => return w,
            Err(e) if Instant::now() < deadline => {
                eprintln!("watermarks of {topic}/{partition}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("watermarks of {topic}/{partition}: {e}"),
        }
    }
}

/// Creates `topic` with `partitions` and `configs`, before the bridge starts (it
/// keeps existing topics as they are); returns the admin client.
pub async fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) -> AdminClient<DefaultClientContext> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new_topic = configs.iter().fold(
        NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
        |t, (k, v)| t.set(k, v),
    );
    let created = admin
        .create_topics(&[new_topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    admin
}

/// Waits until `topic` holds at least `n` records and returns them.
pub async fn wait_for_records(brokers: &str, topic: &str, n: usize, timeout: Duration) -> Vec<Rec> {
    let deadline = Instant::now() + timeout;
    loop {
        let (b, t) = (brokers.to_string(), topic.to_string());
        let recs = tokio::task::spawn_blocking(move || read_topic(&b, &t))
            .await
            .expect("read_topic");
        if recs.len() >= n {
            return recs;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} has {} records after {timeout:?}, expected {n}",
            recs.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
