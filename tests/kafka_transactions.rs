//! The broker of the development stack takes Kafka transactions, as exactly-once
//! delivery into Kafka will need: a read_committed consumer sees the records of a
//! committed transaction and none of an aborted one, which a read_uncommitted
//! consumer shows were written.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::support::*;

/// The payloads of `topic`'s partition 0 up to its end, read at `isolation`.
fn payloads(topic: &str, isolation: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("group.id", "tidemark-tests-unused")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into())
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            None => {}
        }
    }
    panic!("reading {topic} at {isolation} did not reach its end within 30 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_commits_and_aborts_transactions() {
    let topic = unique("tidemark_tx_check");
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("transactional.id", &topic)
        .create()
        .expect("transactional producer");
    let timeout = Duration::from_secs(30);
    let p = producer;
    let t = topic.clone();
    tokio::task::spawn_blocking(move || {
        p.init_transactions(timeout).expect("InitProducerId");
        for (outcome, n) in [("committed", 3), ("aborted", 2), ("committed-again", 1)] {
            p.begin_transaction().expect("begin");
            for i in 0..n {
                let payload = format!("{outcome} {i}");
                p.send(BaseRecord::<(), _>::to(&t).partition(0).payload(&payload))
                    .map_err(|(e, _)| e)
                    .expect("send");
            }
            p.flush(timeout).expect("flush");
            if outcome == "aborted" {
                p.abort_transaction(timeout).expect("abort");
            } else {
                p.commit_transaction(timeout).expect("commit");
            }
        }
    })
    .await
    .unwrap();
    let t = topic.clone();
    let (committed, uncommitted) = tokio::task::spawn_blocking(move || {
        (
            payloads(&t, "read_committed"),
            payloads(&t, "read_uncommitted"),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        committed,
        [
            "committed 0",
            "committed 1",
            "committed 2",
            "committed-again 0"
        ],
        "a read_committed consumer"
    );
    assert_eq!(
        uncommitted.len(),
        6,
        "a read_uncommitted consumer sees the aborted records too: {uncommitted:?}"
    );
}
