//! Topics: creates the missing ones and learns every topic's partition count.
//!
//! New topics get the configured partition count, `cleanup.policy=compact`, so
//! Kafka keeps the latest record per key and drops deleted keys after their
//! tombstone, and `min.compaction.lag.ms` (an hour by default), so the records a
//! warm-starting cache replays are still all there. Existing topics are used as they are. Creating them first matters on
//! Apache Kafka, whose default `auto.create.topics.enable=true` would otherwise
//! create a topic on the first produce with the broker's defaults (one partition,
//! `cleanup.policy=delete`); brokers that do not create topics on demand need it too.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use tracing::info;

use crate::config::Config;
use crate::error::BridgeError;
use crate::sink::producer::client_config;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Creates missing topics and returns each topic's partition count.
pub async fn ensure_topics(config: &Config) -> Result<HashMap<String, i32>, BridgeError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(BridgeError::kafka("creating the admin client"))?;
    let names: Vec<String> = config
        .tables
        .iter()
        .map(|t| t.topic(&config.topic_prefix))
        .collect();
    // Metadata of the configured topics only: asking for every topic is expensive
    // on clusters with many topics.
    let mut existing: HashMap<&str, usize> = HashMap::new();
    for name in &names {
        let md = admin
            .inner()
            .fetch_metadata(Some(name), METADATA_TIMEOUT)
            .map_err(BridgeError::kafka(format!(
                "reaching the brokers at {}",
                config.kafka
            )))?;
        let count = md
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        existing.insert(name, count);
    }
    let lag = config.min_compaction_lag_ms.to_string();
    let new: Vec<NewTopic<'_>> = names
        .iter()
        .filter(|n| existing.get(n.as_str()).is_none_or(|&p| p == 0))
        .map(|n| {
            let topic = NewTopic::new(
                n,
                config.partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
            .set("cleanup.policy", "compact")
            .set("min.compaction.lag.ms", &lag);
            config
                .topic_config
                .iter()
                .fold(topic, |t, (k, v)| t.set(k, v))
        })
        .collect();
    if !new.is_empty() {
        let opts = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
        let results = admin
            .create_topics(&new, &opts)
            .await
            .map_err(BridgeError::kafka("creating topics"))?;
        for result in results {
            match result {
                Ok(name) => info!(topic = %name, partitions = config.partitions, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BridgeError::kafka(format!("creating topic {name}"))(
                        rdkafka::error::KafkaError::AdminOp(code),
                    ))
                }
            }
        }
    }
    let mut partitions = HashMap::new();
    for name in names {
        let md = admin
            .inner()
            .fetch_metadata(Some(&name), METADATA_TIMEOUT)
            .map_err(BridgeError::kafka(format!("reading metadata of {name}")))?;
        let count = md.topics().first().map_or(0, |t| t.partitions().len());
        if count == 0 {
            return Err(BridgeError::Kafka {
                context: format!("topic {name} has no partitions after creation"),
                source: rdkafka::error::KafkaError::AdminOp(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ),
            });
        }
        partitions.insert(name, count as i32);
    }
    Ok(partitions)
}
