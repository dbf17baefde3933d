//! Where on the topic a warm start joins the stream, and the consumer that reads it.
//!
//! Every instance reads every partition by manual assignment: no consumer group, no
//! committed offsets, so hundreds of instances never rebalance one another. Each
//! partition starts at `offsetsForTimes(seek time)`, the first record whose
//! timestamp (the commit time) is at or after the seek time, clamped into the
//! partition's `[low, high]` watermarks. Starting earlier than needed is always
//! safe: the follower skips what the snapshot already holds. A time after every
//! record is answered with "end" (offset -1), and the partition starts at its high
//! watermark.
//!
//! The high watermarks are sampled here, after the load: the cache is ready once
//! every partition has been consumed up to them.
//!
//! librdkafka's calls here block, so they run on Tokio's blocking pool.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer as _, ConsumerContext, StreamConsumer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

use crate::config::Config;
use crate::error::{Error, Result};

/// How long one metadata, offset or watermark request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends librdkafka's own log lines to `tracing`: errors at `warn` (the cache
/// retries by itself), the rest at `debug`. Keeps the last error line: a failed
/// request says only "broker transport failure", the line says why.
#[derive(Default)]
pub(crate) struct LogContext {
    last_error: Mutex<Option<String>>,
}

impl LogContext {
    /// librdkafka's last error line, without its thread name.
    fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        use RDKafkaLogLevel::*;
        match level {
            Emerg | Alert | Critical | Error => {
                tracing::warn!(facility = fac, "librdkafka: {log_message}");
                // "[thrd:sasl_ssl://host:9094/bootstrap]: " names only the thread.
                let reason = match log_message.split_once("]: ") {
                    Some((thread, rest)) if thread.starts_with("[thrd:") => rest,
                    _ => log_message,
                };
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(reason.to_owned());
            }
            _ => tracing::debug!(facility = fac, "librdkafka: {log_message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "librdkafka error");
    }
}

impl ConsumerContext for LogContext {}

/// The cache's consumer.
pub(crate) type Consumer = StreamConsumer<LogContext>;

/// Where one partition starts and when it is caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Start {
    pub partition: i32,
    /// The first offset to read.
    pub offset: i64,
    /// The high watermark sampled after the load.
    pub high: i64,
}

/// Creates the consumer: manual assignment only, nothing committed, and an error
/// (not a silent jump) when an offset is out of range.
pub(crate) fn consumer(config: &Config, instance_id: uuid::Uuid) -> Result<Arc<Consumer>> {
    let consumer: Consumer = client_config(config, instance_id)
        .create_with_context(LogContext::default())
        .map_err(Error::kafka("creating the consumer"))?;
    Ok(Arc::new(consumer))
}

/// The consumer settings: the passthrough properties, then the cache's own.
fn client_config(config: &Config, instance_id: uuid::Uuid) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("client.id", format!("tidemark-client-{instance_id}"))
        .set("fetch.wait.max.ms", "100")
        .set("log_level", "6");
    for (k, v) in &config.kafka_properties {
        cc.set(k, v);
    }
    // librdkafka's consumer API needs a group id even for manual assignment; a
    // unique one that is never joined (assign, not subscribe) and never committed to
    // keeps instances independent.
    cc.set("bootstrap.servers", &config.kafka)
        .set("group.id", format!("tidemark-client-{instance_id}"))
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error");
    cc
}

/// Runs a blocking librdkafka call on the blocking pool.
pub(crate) async fn blocking<T, F>(consumer: &Arc<Consumer>, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Consumer) -> Result<T> + Send + 'static,
{
    let c = consumer.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .map_err(|e| Error::Stopped(format!("a Kafka request panicked: {e}")))?
}

/// How long the topic keeps every record uncompacted: its `min.compaction.lag.ms`
/// when its `cleanup.policy` compacts, `None` when it does not (then only retention
/// removes records, which moves the low watermark).
pub(crate) async fn compaction_lag(
    config: &Config,
    instance_id: uuid::Uuid,
) -> Result<Option<i64>> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client_config(config, instance_id)
            .create()
            .map_err(Error::kafka("creating an admin client"))?;
    let opts = AdminOptions::new().request_timeout(Some(REQUEST_TIMEOUT));
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(&config.topic)], &opts)
        .await
        .map_err(Error::kafka(
            "reading the topic's cleanup.policy and min.compaction.lag.ms",
        ))?;
    let resource = described
        .into_iter()
        .next()
        .and_then(|r| r.ok())
        .ok_or_else(|| Error::Kafka {
            during: "reading the topic's cleanup.policy and min.compaction.lag.ms (DescribeConfigs on the topic is needed for checkpoints)",
            source: rdkafka::error::KafkaError::AdminOpCreation("no answer for the topic".into()),
        })?;
    let value = |name: &str| resource.get(name).and_then(|e| e.value.clone());
    if !value("cleanup.policy").is_some_and(|p| p.contains("compact")) {
        return Ok(None);
    }
    Ok(Some(
        value("min.compaction.lag.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    ))
}

/// The topic's partition count; a typed error when the topic does not exist.
pub(crate) async fn partitions(consumer: &Arc<Consumer>, config: &Config) -> Result<i32> {
    let topic = config.topic.clone();
    let brokers = config.kafka.clone();
    let result = blocking(consumer, move |c| {
        let md = c
            .fetch_metadata(Some(&topic), REQUEST_TIMEOUT)
            .map_err(Error::kafka("reading the topic's metadata"))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if n == 0 {
            return Err(Error::TopicMissing { topic, brokers });
        }
        Ok(n as i32)
    })
    .await;
    match result {
        Err(Error::Kafka { during, source }) => {
            Err(with_broker_error(consumer, during, source).await)
        }
        other => other,
    }
}

/// A failed request's error, with librdkafka's last broker error when there is one
/// (why the brokers are unreachable). librdkafka's log lines wait in the consumer's
/// queue until it is polled: nothing is assigned yet, so a short poll serves them
/// without consuming a record.
async fn with_broker_error(
    consumer: &Arc<Consumer>,
    during: &'static str,
    source: rdkafka::error::KafkaError,
) -> Error {
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        loop {
            let _ = consumer.recv().await;
        }
    })
    .await;
    match consumer.context().last_error() {
        Some(reason) => Error::KafkaUnreachable {
            during,
            reason,
            source,
        },
        None => Error::Kafka { during, source },
    }
}

/// The start of every partition for a replay from `time_ms`, with the high
/// watermarks sampled now.
///
/// A replay that would start at the low watermark of a partition whose log no longer
/// starts at offset 0 fails with [`Error::RetentionGap`]: the records before the low
/// watermark are gone (retention, or records deleted by an operator), and some of them
/// may have been written after `time_ms`. Compaction alone never moves the low
/// watermark, so the bridge's compacted topics do not meet this. (A partition with
/// no record at or after `time_ms`, "end", is fine: the deleted records are older.)
pub(crate) async fn seek(
    consumer: &Arc<Consumer>,
    topic: &str,
    partitions: i32,
    time_ms: i64,
) -> Result<Vec<Start>> {
    let topic = topic.to_owned();
    blocking(consumer, move |c| {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Offset(time_ms))
                .map_err(Error::kafka("building the offset request"))?;
        }
        let answers = c
            .offsets_for_times(tpl, REQUEST_TIMEOUT)
            .map_err(Error::kafka("looking up offsets for the snapshot time"))?;
        let mut starts = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let (low, high) = c
                .fetch_watermarks(&topic, p, REQUEST_TIMEOUT)
                .map_err(Error::kafka("reading the high watermarks"))?;
            let answer = answers
                .find_partition(&topic, p)
                .filter(|e| e.error().is_ok())
                .map(|e| e.offset());
            let offset = start_offset(answer, low, high);
            if low > 0 && matches!(answer, Some(Offset::Offset(o)) if o <= low) {
                return Err(Error::RetentionGap {
                    topic: topic.clone(),
                    partition: p,
                    low,
                });
            }
            starts.push(Start {
                partition: p,
                offset,
                high,
            });
        }
        Ok(starts)
    })
    .await
}

/// The start offset from an offsetsForTimes answer and the watermarks: "end" or a
/// time after every record starts at `high`; an unusable answer starts at `low`
/// (longer, but safe).
pub(crate) fn start_offset(answer: Option<Offset>, low: i64, high: i64) -> i64 {
    match answer {
        Some(Offset::Offset(o)) => o.clamp(low, high.max(low)),
        Some(Offset::End) => high,
        _ => low,
    }
}

/// Assigns every partition at its start offset.
pub(crate) fn assign(consumer: &Consumer, topic: &str, starts: &[Start]) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for s in starts {
        tpl.add_partition_offset(topic, s.partition, Offset::Offset(s.offset))
            .map_err(Error::kafka("building the assignment"))?;
    }
    consumer
        .assign(&tpl)
        .map_err(Error::kafka("assigning the partitions"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_offsets() {
        assert_eq!(start_offset(Some(Offset::Offset(5)), 2, 9), 5);
        assert_eq!(start_offset(Some(Offset::Offset(0)), 2, 9), 2);
        assert_eq!(start_offset(Some(Offset::Offset(12)), 2, 9), 9);
        assert_eq!(start_offset(Some(Offset::End), 2, 9), 9);
        assert_eq!(start_offset(Some(Offset::Invalid), 2, 9), 2);
        assert_eq!(start_offset(None, 0, 0), 0);
    }
}
