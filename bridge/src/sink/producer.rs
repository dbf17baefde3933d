//! The Kafka producer and its delivery reports.
//!
//! A record counts as delivered only when librdkafka's delivery report says so; the
//! report goes straight into the [`Frontier`]. The producer is idempotent with
//! `acks=all`, so retries neither duplicate nor reorder records within a partition.
//! Back-pressure: librdkafka's queue is bounded (`queue.buffering.max.*`); when it
//! is full, [`Sink::send`] waits for acknowledgements instead of buffering more,
//! which in turn stops reading the replication stream.
//!
//! **No gaps.** Readers drop a record whose position is not above the last one they
//! applied from its partition, so a partition must never hold a later record without
//! every earlier one: a replay would write the missing record after the later one,
//! and every reader would drop it. librdkafka documents two ways an idempotent,
//! non-transactional producer leaves such a gap ("1, 4, 5"): a message that times
//! out while later ones succeed, and errors it cannot recover from without breaking
//! the sequence. So the producer runs with `message.timeout.ms=0` (no timeout:
//! records wait for the broker however long it is away, and the bridge logs the
//! wait) and `enable.gapless.guarantee=true` (any error that could leave a gap is a
//! fatal error: every later record fails too, the session ends, and the next session
//! replays from the slot with a new producer). Neither can be set through a
//! passthrough property.
//!
//! **Exactly once** (`--exactly-once`). The producer is transactional
//! (`transactional.id`, see [`Sink::init_transactions`]). librdkafka refuses an
//! infinite `message.timeout.ms` with transactions: the message timeout follows
//! `transaction.timeout.ms` (60 s unless a passthrough property says otherwise), and
//! `enable.gapless.guarantee` is not set. A record that fails or times out puts the
//! transaction in an abortable state: its records never become visible to
//! `read_committed` readers, the session ends, and the next one starts again from
//! the position stored by the last committed transaction, so no partition of what a
//! `read_committed` reader sees has a gap (see `pipeline::exactly_once`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};
use tokio::sync::Notify;

use crate::config::Config;
use crate::error::BridgeError;

/// A record ready to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Destination topic.
    pub topic: Arc<str>,
    /// Explicit partition (truncates go to every partition); `None` hashes the key.
    pub partition: Option<i32>,
    /// JSON key.
    pub key: Vec<u8>,
    /// JSON envelope; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The transaction's commit time, in milliseconds since the epoch.
    pub timestamp_ms: i64,
    /// The source table, `schema.table` (a metrics label).
    pub table: Arc<str>,
    /// The change's `op` code; `None` for a tombstone.
    pub op: Option<&'static str>,
    /// Record headers, name and value: a tombstone's stamp
    /// ([`TOMBSTONE_HEADER`](tidemark_core::wire::envelope::TOMBSTONE_HEADER)), a
    /// slot marker's ([`SLOT_MARKER_HEADER`](tidemark_core::wire::envelope::SLOT_MARKER_HEADER)),
    /// the key-change headers of Debezium and the value format's.
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// The WAL position of the change, for messages.
    pub lsn: u64,
}

impl Record {
    /// The record's size for messages: key, value and header, uncompressed, plus an
    /// allowance for the record and batch framing.
    pub fn size(&self) -> usize {
        const FRAMING: usize = 128;
        self.key.len()
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + FRAMING
    }
}

/// What the bridge does with a record larger than its topic accepts
/// (`--oversized-records`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Oversized {
    /// Stop with an error that names the table, key, LSN, size and the fix.
    #[default]
    Stop,
    /// Leave the record out of the topic, log it with the same details and count it in
    /// `tidemark_skipped_records_total`.
    Skip,
}

/// Where the sink reports what it produced and what Kafka answered for each record:
/// the pipeline's acknowledgement frontier. Transactions are numbered by the caller.
pub trait Acks: Send + Sync + 'static {
    /// One more record of transaction `txn` is in flight.
    fn produced(&self, txn: u64);
    /// Kafka's answer for one record of transaction `txn`.
    fn delivered(&self, txn: u64, result: Result<(), KafkaError>);
    /// Records produced and not yet answered.
    fn in_flight(&self) -> u64;
    /// The first failed delivery, if any, with librdkafka's error (its code says
    /// whether it is worth retrying).
    fn failure(&self) -> Option<KafkaError>;
}

/// Routes delivery reports to the [`Acks`].
pub struct DeliveryContext {
    acks: Arc<dyn Acks>,
    acked: Arc<Notify>,
}

/// librdkafka reports each broker failure several times (a log line plus global
/// errors); the session's own stall warning and failed deliveries are what matter,
/// so these go to the log at `warn` (errors) and `debug` (everything else).
impl ClientContext for DeliveryContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        use rdkafka::config::RDKafkaLogLevel::*;
        match level {
            Emerg | Alert | Critical | Error => {
                tracing::warn!(facility = fac, "librdkafka: {log_message}")
            }
            _ => tracing::debug!(facility = fac, "librdkafka: {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "librdkafka error");
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, txn: usize) {
        if let Ok(msg) = result {
            if let Some(commit_ms) = rdkafka::Message::timestamp(msg).to_millis() {
                let seconds = (crate::telemetry::now_ms() - commit_ms).max(0) as f64 / 1000.0;
                metrics::histogram!(crate::telemetry::ACK_LATENCY).record(seconds);
            }
        }
        if let Err((e, msg)) = result {
            if crate::error::is_definite_kafka_error(e) {
                use rdkafka::Message as _;
                let key: String = msg
                    .key()
                    .map(|k| String::from_utf8_lossy(k).chars().take(200).collect())
                    .unwrap_or_default();
                let lsn = msg
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                    .and_then(|v| v["source"]["lsn"].as_u64())
                    .map(|l| pgwire_replication::Lsn(l).to_string());
                tracing::error!(
                    topic = msg.topic(),
                    key,
                    lsn,
                    size = msg.payload_len() + msg.key().map_or(0, <[u8]>::len),
                    error = %e,
                    "Kafka refused a record for good; the session stops (see docs/operations.md)"
                );
            }
        }
        let outcome = result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone());
        self.acks.delivered(txn as u64, outcome);
        self.acked.notify_one();
    }
}

/// librdkafka's default `message.max.bytes` and `batch.size`.
const LIBRDKAFKA_MAX_MESSAGE_BYTES: usize = 1_000_000;
/// Room left under a topic's `max.message.bytes` for the record batch's framing.
const BATCH_FRAMING: usize = 512;

/// The base librdkafka settings: brokers, the passthrough properties, and no automatic
/// topic creation.
pub fn client_config(config: &Config) -> ClientConfig {
    let mut cc = ClientConfig::new();
    apply_client_config(&mut cc, config);
    cc
}

/// Sets [`client_config`]'s settings on `cc`, over what it already holds.
fn apply_client_config(cc: &mut ClientConfig, config: &Config) {
    cc.set("bootstrap.servers", &config.kafka);
    for (k, v) in &config.kafka_properties {
        cc.set(k, v);
    }
    // Never let the broker create one of our topics. A producer-type client asks for
    // it by default in every metadata request and produce, and a broker with
    // auto.create.topics.enable=true (Apache Kafka's default) would create a missing
    // topic with its own defaults (one partition, cleanup.policy=delete) before
    // `ensure_topics` creates it as configured, or re-create a deleted one that way.
    cc.set("allow.auto.create.topics", "false");
}

/// Default `transaction.timeout.ms` of the transactional producer (librdkafka's): the
/// longest a Kafka transaction may stay open, and the message timeout with it.
const TRANSACTION_TIMEOUT_MS: &str = "60000";

/// The `transaction.timeout.ms` the transactional producer runs with: a passthrough
/// property's (librdkafka has refused one that does not parse before this is asked),
/// else the default.
pub fn transaction_timeout(config: &Config) -> Duration {
    let ms = |v: &str| v.trim().parse::<u64>().ok();
    let default = ms(TRANSACTION_TIMEOUT_MS).unwrap_or(60_000);
    Duration::from_millis(
        config
            .kafka_properties
            .get("transaction.timeout.ms")
            .and_then(|v| ms(v))
            .unwrap_or(default),
    )
}

/// How long a transactional call (init, commit, abort) may take.
const TRANSACTION_CALL_TIMEOUT: Duration = Duration::from_secs(90);

/// The producer's settings: tuning defaults, then [`client_config`]'s, then the ones
/// the bridge's guarantees rest on.
fn producer_config(config: &Config, max_message_bytes: usize) -> ClientConfig {
    let mut cc = ClientConfig::new();
    // Defaults that a passthrough property may change. `queue.buffering.max.kbytes`
    // bounds the bytes of records waiting for the broker, the bridge's memory while
    // Kafka is slow (librdkafka's default is 1 GiB).
    cc.set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "100000")
        .set("queue.buffering.max.kbytes", "65536");
    if config.exactly_once {
        cc.set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS);
    }
    // Not by copying `client_config(..).config_map()`: it shows `sasl.password` and the
    // other secrets as a placeholder, which would then be sent as the password.
    apply_client_config(&mut cc, config);
    // Records over the topics' limit are refused here, before sending, where
    // `--oversized-records` applies; batches stay under it too, or the broker would
    // refuse a batch of small records (a fatal error under the gapless guarantee).
    if !config.kafka_properties.contains_key("message.max.bytes") {
        cc.set("message.max.bytes", max_message_bytes.to_string());
    }
    if !config.kafka_properties.contains_key("batch.size") {
        cc.set(
            "batch.size",
            max_message_bytes
                .min(LIBRDKAFKA_MAX_MESSAGE_BYTES)
                .to_string(),
        );
    }
    cc.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random");
    if config.exactly_once {
        // Transactions: see the module doc. The message timeout follows
        // `transaction.timeout.ms`.
        cc.set("transactional.id", &config.transactional_id);
    } else {
        // No gaps: see the module doc.
        cc.set("message.timeout.ms", "0")
            .set("enable.gapless.guarantee", "true");
    }
    cc
}

/// The producer side of a replication session.
pub struct Sink {
    producer: ThreadedProducer<DeliveryContext>,
    acks: Arc<dyn Acks>,
    acked: Arc<Notify>,
    /// The largest record the producer takes (`message.max.bytes`).
    max_message_bytes: usize,
    oversized: Oversized,
    /// Whether the producer is transactional (`--exactly-once`).
    transactional: bool,
    /// With `--exactly-once`, what fences a producer, for a fatal error that says so.
    fenced_by: Option<String>,
}

impl Sink {
    /// Creates the producer; its delivery reports go to `acks`.
    pub fn new(
        config: &Config,
        acks: Arc<dyn Acks>,
        limits: HashMap<String, usize>,
    ) -> Result<Self, BridgeError> {
        let acked = Arc::new(Notify::new());
        let context = DeliveryContext {
            acks: acks.clone(),
            acked: acked.clone(),
        };
        // librdkafka checks a record's uncompressed key, value and headers against
        // `message.max.bytes`; the broker checks the compressed batch against the
        // topic's `max.message.bytes`. The smallest topic limit, less the batch
        // framing, keeps every record and batch librdkafka takes under it.
        let max_message_bytes = config
            .kafka_properties
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                limits
                    .values()
                    .map(|l| l.saturating_sub(BATCH_FRAMING).max(1_000))
                    .min()
                    .unwrap_or(LIBRDKAFKA_MAX_MESSAGE_BYTES)
                    .min(LIBRDKAFKA_MAX_MESSAGE_BYTES)
            });
        let producer = producer_config(config, max_message_bytes)
            .create_with_context(context)
            .map_err(BridgeError::kafka("creating the producer"))?;
        Ok(Sink {
            producer,
            acks,
            acked,
            max_message_bytes,
            oversized: config.oversized_records,
            transactional: config.exactly_once,
            fenced_by: config.exactly_once.then(|| {
                format!(
                    "a producer is fenced when another one starts with its transactional id ({}), \
                     another bridge with the same slot and topic prefix or --transactional-id, \
                     or when the broker aborts its Kafka transaction for staying open longer than \
                     transaction.timeout.ms ({} ms); a new session starts a new producer",
                    config.transactional_id,
                    transaction_timeout(config).as_millis()
                )
            }),
        })
    }

    /// Whether the producer is transactional.
    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// Registers the `transactional.id` with the broker: a transaction an earlier
    /// producer with the same id left open is aborted (or, when its commit had begun,
    /// completed), and that producer is fenced: whatever it still sends fails. Call
    /// once, before any other transactional call.
    pub fn init_transactions(&self) -> Result<(), BridgeError> {
        tokio::task::block_in_place(|| self.producer.init_transactions(TRANSACTION_CALL_TIMEOUT))
            .map_err(BridgeError::kafka(
                "initialising the transactional producer",
            ))
    }

    /// Opens a Kafka transaction.
    pub fn begin_transaction(&self) -> Result<(), BridgeError> {
        self.producer
            .begin_transaction()
            .map_err(self.kafka_error("beginning a Kafka transaction"))
    }

    /// Delivers every record of the open transaction and commits it. On an error the
    /// transaction's fate is unknown until the next producer initialises: the session
    /// must end.
    pub fn commit_transaction(&self) -> Result<(), BridgeError> {
        tokio::task::block_in_place(|| self.producer.commit_transaction(TRANSACTION_CALL_TIMEOUT))
            .map_err(self.kafka_error("committing a Kafka transaction"))
    }

    /// Aborts the open transaction: its records never reach `read_committed` readers.
    pub fn abort_transaction(&self) -> Result<(), BridgeError> {
        tokio::task::block_in_place(|| self.producer.abort_transaction(TRANSACTION_CALL_TIMEOUT))
            .map_err(self.kafka_error("aborting a Kafka transaction"))
    }

    /// A record larger than its topic takes: stop, or skip and count it.
    fn oversized(&self, record: &Record, limit: usize) -> Result<(), BridgeError> {
        let key: String = String::from_utf8_lossy(&record.key)
            .chars()
            .take(200)
            .collect();
        let limit =
            format!("{limit} bytes (message.max.bytes, from the topics' max.message.bytes)");
        match self.oversized {
            Oversized::Stop => Err(BridgeError::RecordTooLarge {
                table: record.table.to_string(),
                topic: record.topic.to_string(),
                key,
                lsn: record.lsn,
                size: record.size(),
                limit,
            }),
            Oversized::Skip => {
                metrics::counter!(crate::telemetry::SKIPPED_RECORDS, "table" => record.table.to_string(), "reason" => "too_large")
                    .increment(1);
                tracing::error!(
                    table = %record.table,
                    topic = %record.topic,
                    key,
                    lsn = %pgwire_replication::Lsn(record.lsn),
                    size = record.size(),
                    limit,
                    "record skipped: larger than the topic accepts (--oversized-records skip)"
                );
                Ok(())
            }
        }
    }

    /// Produces one record of transaction `txn`, waiting while the queue is full.
    pub async fn send(&self, txn: u64, record: &Record) -> Result<(), BridgeError> {
        self.acks.produced(txn);
        loop {
            let mut r = BaseRecord::with_opaque_to(&record.topic, txn as usize)
                .key(&record.key)
                .timestamp(record.timestamp_ms);
            if let Some(p) = record.partition {
                r = r.partition(p);
            }
            if let Some(v) = &record.value {
                r = r.payload(v);
            }
            if !record.headers.is_empty() {
                let headers = record.headers.iter().fold(
                    OwnedHeaders::new_with_capacity(record.headers.len()),
                    |h, (name, value)| {
                        h.insert(Header {
                            key: name,
                            value: Some(value),
                        })
                    },
                );
                r = r.headers(headers);
            }
            match self.producer.send(r) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if let Some(e) = self.failure() {
                        return Err(e);
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(100), self.acked.notified())
                        .await;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                    // librdkafka refused it before sending: nothing is in flight.
                    self.acks.delivered(txn, Ok(()));
                    return self.oversized(record, self.max_message_bytes);
                }
                Err((e, _)) => {
                    self.acks.delivered(txn, Err(e.clone()));
                    return Err(self.kafka_error(format!("producing to {}", record.topic))(
                        e,
                    ));
                }
            }
        }
    }

    /// Waits until every produced record is acknowledged, a delivery fails, or `timeout`.
    pub async fn drain(&self, timeout: Duration) -> Result<(), BridgeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.acks.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            if let Some(e) = self.failure() {
                return Err(e);
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), self.acked.notified()).await;
        }
        self.failure().map_or(Ok(()), Err)
    }

    /// The first failed delivery, as an error. When the producer has a fatal error
    /// (with `--exactly-once`, it was fenced), librdkafka fails every queued record
    /// with "purged", which names no cause: the error is then the fatal one. A
    /// record the broker refused for good stays the error, so that the bridge stops
    /// (the gapless guarantee turns that refusal into a fatal error too).
    pub fn failure(&self) -> Option<BridgeError> {
        let failed = self.acks.failure()?;
        Some(self.kafka_error_or_fatal(failed, BridgeError::Delivery))
    }

    /// `error` made by `make`, or, when it is not a definite refusal and the
    /// producer has a fatal error, that fatal error: a call on a producer in that
    /// state fails with a reason that hides the cause.
    fn kafka_error_or_fatal(
        &self,
        error: KafkaError,
        make: impl FnOnce(KafkaError) -> BridgeError,
    ) -> BridgeError {
        if !crate::error::is_definite_kafka_error(&error) {
            if let Some(fatal) = self.fatal_error() {
                return fatal;
            }
        }
        make(error)
    }

    /// A Kafka error of `context`, or the producer's fatal error (see
    /// [`Sink::kafka_error_or_fatal`]).
    fn kafka_error(
        &self,
        context: impl Into<String>,
    ) -> impl FnOnce(KafkaError) -> BridgeError + '_ {
        let context = context.into();
        move |source| {
            self.kafka_error_or_fatal(source, |source| BridgeError::Kafka { context, source })
        }
    }

    /// The producer's fatal error, if it has one; when it was fenced, with what
    /// fences a producer.
    fn fatal_error(&self) -> Option<BridgeError> {
        let (code, reason) = self.producer.client().fatal_error()?;
        let context = match &self.fenced_by {
            Some(cause) if code == RDKafkaErrorCode::Fenced => {
                format!("the producer stopped with a fatal error ({reason}); {cause}")
            }
            _ => format!("the producer stopped with a fatal error ({reason})"),
        };
        Some(BridgeError::Kafka {
            context,
            source: KafkaError::MessageProduction(code),
        })
    }

    /// The underlying librdkafka client, for metadata.
    pub fn client(&self) -> &rdkafka::client::Client<DeliveryContext> {
        self.producer.client()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if self.transactional {
            // An open transaction would hold back `read_committed` readers of its
            // partitions until the coordinator times it out; without one this fails
            // at once and changes nothing.
            let _ = self.producer.abort_transaction(Duration::from_secs(5));
        } else {
            let _ = self.producer.flush(Duration::from_millis(100));
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::config::Cli;

    /// Secrets reach the producer as given: an earlier version copied the settings
    /// through `ClientConfig::config_map`, which masks them, and the producer sent
    /// the mask as its SASL password.
    #[test]
    fn the_producer_gets_the_passthrough_secrets_unmasked() {
        let cli = Cli::parse_from([
            "tidemark-bridge",
            "--postgres",
            "postgres://h/db",
            "--tables",
            "public.t",
            "--kafka-property",
            "sasl.password=s3cret",
            "--kafka-property",
            "ssl.key.password=k3y",
            "--kafka-property",
            "linger.ms=20",
        ]);
        let config = Config::from_cli(cli).expect("valid settings");
        let cc = producer_config(&config, LIBRDKAFKA_MAX_MESSAGE_BYTES);
        assert_eq!(cc.get("sasl.password"), Some("s3cret"));
        assert_eq!(cc.get("ssl.key.password"), Some("k3y"));
        assert_eq!(
            cc.get("linger.ms"),
            Some("20"),
            "a default may be overridden"
        );
        assert_eq!(cc.get("enable.gapless.guarantee"), Some("true"));
        assert_eq!(cc.get("allow.auto.create.topics"), Some("false"));
    }

    /// With `--exactly-once` the producer is transactional, with a finite message
    /// timeout (librdkafka refuses `message.timeout.ms=0` with transactions) and
    /// without the gapless guarantee; without it nothing changes.
    #[test]
    fn exactly_once_makes_the_producer_transactional() {
        let args = [
            "tidemark-bridge",
            "--postgres",
            "postgres://h/db",
            "--tables",
            "public.t",
            "--slot",
            "s",
        ];
        let plain = Config::from_cli(Cli::parse_from(args)).expect("valid settings");
        let cc = producer_config(&plain, LIBRDKAFKA_MAX_MESSAGE_BYTES);
        assert_eq!(cc.get("transactional.id"), None);
        assert_eq!(cc.get("message.timeout.ms"), Some("0"));
        let eos = Config::from_cli(Cli::parse_from(
            args.iter().copied().chain(["--exactly-once"]),
        ))
        .expect("valid settings");
        let cc = producer_config(&eos, LIBRDKAFKA_MAX_MESSAGE_BYTES);
        assert_eq!(cc.get("transactional.id"), Some("tidemark.tidemark.s"));
        assert_eq!(
            cc.get("transaction.timeout.ms"),
            Some(TRANSACTION_TIMEOUT_MS)
        );
        assert_eq!(cc.get("message.timeout.ms"), None);
        assert_eq!(cc.get("enable.gapless.guarantee"), None);
        assert_eq!(transaction_timeout(&eos), Duration::from_secs(60));
        let shorter = Config::from_cli(Cli::parse_from(args.iter().copied().chain([
            "--exactly-once",
            "--kafka-property",
            "transaction.timeout.ms=4000",
        ])))
        .expect("valid settings");
        assert_eq!(transaction_timeout(&shorter), Duration::from_secs(4));
        cc.create::<rdkafka::producer::BaseProducer>()
            .expect("librdkafka accepts the transactional settings");
    }

    /// librdkafka is built with OpenSSL, so `security.protocol=SSL` and `SASL_SSL`
    /// with SCRAM work; without the rdkafka feature `ssl` they fail at start.
    #[test]
    fn librdkafka_has_tls_and_sasl_scram() {
        let config = rdkafka::ClientConfig::new()
            .create_native_config()
            .expect("a default librdkafka configuration");
        let features = config
            .get("builtin.features")
            .expect("librdkafka reports builtin.features");
        let features: Vec<&str> = features.split(',').collect();
        for wanted in ["ssl", "sasl_scram"] {
            assert!(
                features.contains(&wanted),
                "librdkafka lacks {wanted}; builtin.features = {features:?}"
            );
        }
    }
}
