//! Topics: creates the missing ones and learns every topic's partition count.
//!
//! New topics get the configured partition count, `cleanup.policy=compact`, so
//! Kafka keeps the latest record per key and drops deleted keys after their
//! tombstone, and `min.compaction.lag.ms` (an hour by default), so the records a
//! warm-starting cache replays are still all there. Existing topics are used as they are. Creating them first matters on
//! Apache Kafka, whose default `auto.create.topics.enable=true` would otherwise
//! create a topic on the first produce with the broker's defaults (one partition,
//! `cleanup.policy=delete`); brokers that do not create topics on demand need it too.
//!
//! A broker that cannot be reached fails the metadata request with a bare "broker
//! transport failure"; the reason (a refused SASL authentication, a TLS certificate
//! that does not verify, a refused connection) is librdkafka's last broker error,
//! which the error then carries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::BridgeError;
use crate::sink::producer::client_config;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Remembers librdkafka's last broker error (its text names the broker and the
/// reason), for the error of a failed metadata request.
#[derive(Default)]
pub struct BrokerErrors {
    last: Mutex<Option<String>>,
}

impl BrokerErrors {
    /// The last broker error librdkafka reported, if any.
    pub fn last(&self) -> Option<String> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, reason: &str) {
        // Without librdkafka's thread name: "[thrd:sasl_ssl://host:9094/bootstrap]: ".
        let reason = match reason.split_once("]: ") {
            Some((thread, rest)) if thread.starts_with("[thrd:") => rest,
            _ => reason,
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
    }
}

/// librdkafka's log goes to `debug`: its errors (a broker connection that failed, and
/// why) reach the bridge's own error instead.
impl ClientContext for BrokerErrors {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(facility = fac, "librdkafka: {log_message}");
        use RDKafkaLogLevel::*;
        if matches!(level, Emerg | Alert | Critical | Error) {
            self.record(log_message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "librdkafka error");
        // "1/1 brokers are down" follows the error that says why.
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown) {
            self.record(reason);
        }
    }
}

/// The metadata client never produces; delivery reports cannot occur.
impl ProducerContext for BrokerErrors {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

/// A client for metadata requests whose failures say why the brokers are unreachable.
struct MetadataClient {
    client: BaseProducer<BrokerErrors>,
    brokers: String,
}

impl MetadataClient {
    fn new(config: &Config) -> Result<Self, BridgeError> {
        let client = client_config(config)
            .create_with_context(BrokerErrors::default())
            .map_err(BridgeError::kafka("creating the metadata client"))?;
        Ok(MetadataClient {
            client,
            brokers: config.kafka.clone(),
        })
    }

    /// The partition count of `topic`; 0 when it does not exist.
    fn partitions(&self, topic: &str, doing: &str) -> Result<usize, BridgeError> {
        let md = self
            .client
            .client()
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|e| {
                // Serves the queued error events, which record the reason.
                self.client.poll(Duration::ZERO);
                let context = match self.client.context().last() {
                    Some(reason) => format!(
                        "{doing} at {} (last broker error: {reason}; check the brokers and the security.protocol, sasl.* and ssl.* Kafka properties)",
                        self.brokers
                    ),
                    None => format!("{doing} at {}", self.brokers),
                };
                BridgeError::kafka(context)(e)
            })?;
        Ok(md
            .topics()
            .first()
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len()))
    }
}

/// Each topic's `max.message.bytes` (its own setting or the broker's default), the
/// largest record batch the broker accepts for it. Empty, with a warning, when the
/// broker does not answer or the bridge may not describe the topic's settings: then
/// only librdkafka's own `message.max.bytes` check applies.
pub async fn record_limits<'a>(
    config: &Config,
    topics: impl Iterator<Item = &'a String>,
) -> HashMap<String, usize> {
    let specs: Vec<String> = topics.cloned().collect();
    let described = async {
        let admin: AdminClient<DefaultClientContext> =
            client_config(config).create().map_err(|e| e.to_string())?;
        let resources: Vec<ResourceSpecifier<'_>> =
            specs.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let opts = AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT));
        admin
            .describe_configs(&resources, &opts)
            .await
            .map_err(|e| e.to_string())
    };
    let results = match described.await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot read the topics' max.message.bytes; records over it fail at delivery");
            return HashMap::new();
        }
    };
    let mut limits = HashMap::new();
    for result in results {
        match result {
            Ok(resource) => {
                let limit = resource
                    .get("max.message.bytes")
                    .and_then(|e| e.value.as_deref())
                    .and_then(|v| v.parse().ok());
                if let (OwnedResourceSpecifier::Topic(topic), Some(limit)) =
                    (&resource.specifier, limit)
                {
                    limits.insert(topic.clone(), limit);
                }
            }
            Err(code) => {
                warn!(error = %code, "cannot read a topic's max.message.bytes; records over it fail at delivery")
            }
        }
    }
    limits
}

/// Creates one of the bridge's own topics (not a table's) when it is missing: one
/// partition, `settings`, and the configured topic settings but those named in
/// `settings` or `not_here`. Returns its partition count (an existing topic is kept
/// as it is). `what` names the topic in logs and errors.
pub async fn ensure_own_topic(
    config: &Config,
    name: &str,
    settings: &[(&str, &str)],
    not_here: &[&str],
    what: &str,
) -> Result<i32, BridgeError> {
    let admin: AdminClient<DefaultClientContext> = client_config(config)
        .create()
        .map_err(BridgeError::kafka("creating the admin client"))?;
    let base = settings.iter().fold(
        NewTopic::new(name, 1, TopicReplication::Fixed(config.replication_factor)),
        |t, (k, v)| t.set(k, v),
    );
    let spec = config.topic_config.iter().fold(base, |t, (k, v)| {
        let theirs = settings.iter().any(|(own, _)| own == k) || not_here.contains(&k.as_str());
        if theirs {
            t
        } else {
            t.set(k, v)
        }
    });
    let opts = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
    let results = admin
        .create_topics([&spec], &opts)
        .await
        .map_err(BridgeError::kafka(format!("creating {what}")))?;
    for result in results {
        match result {
            Ok(name) => info!(topic = %name, "created {what}"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(BridgeError::kafka(format!("creating topic {name}"))(
                    KafkaError::AdminOp(code),
                ))
            }
        }
    }
    let count =
        MetadataClient::new(config)?.partitions(name, &format!("reading metadata of {name}"))?;
    Ok((count as i32).max(1))
}

/// Creates missing topics and returns each topic's partition count.
pub async fn ensure_topics(config: &Config) -> Result<HashMap<String, i32>, BridgeError> {
    let metadata = MetadataClient::new(config)?;
    let names: Vec<String> = config
        .tables
        .iter()
        .map(|t| t.topic(&config.topic_prefix))
        .collect();
    // Metadata of the configured topics only: asking for every topic is expensive
    // on clusters with many topics.
    let mut existing: HashMap<&str, usize> = HashMap::new();
    for name in &names {
        existing.insert(name, metadata.partitions(name, "reaching the brokers")?);
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
        let admin: AdminClient<DefaultClientContext> = client_config(config)
            .create()
            .map_err(BridgeError::kafka("creating the admin client"))?;
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
        let count = metadata.partitions(&name, &format!("reading metadata of {name}"))?;
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
