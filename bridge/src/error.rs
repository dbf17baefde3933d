//! The bridge's errors, in two kinds.
//!
//! *Transient* errors (a dropped connection, an unreachable broker, a failed
//! delivery) end the current replication session; the supervisor in [`crate::run`]
//! starts a new one with backoff, and the slot replays everything not yet confirmed.
//! *Definite* errors (bad configuration, a table without a primary key, `wal_level`
//! not logical) cannot be fixed by retrying: the bridge stops and the message says
//! what to change.

/// Everything that can stop the bridge or a replication session.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A setting is invalid.
    #[error("invalid setting {field}: {problem}")]
    Config {
        /// The setting's name.
        field: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// The database is not set up in a way the bridge can work with.
    #[error("{problem}; fix: {fix}")]
    Setup {
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// PostgreSQL failed or went away.
    /// Shows the server's message and SQLSTATE, or the driver's text and its causes
    /// (a TLS handshake's reason): the driver's own `Display` says only "db error".
    #[error("postgres: {context}: {}", tidemark_core::pg::error_detail(source))]
    Postgres {
        /// What the bridge was doing.
        context: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The replication connection failed or went away.
    #[error("replication stream: {0}")]
    Replication(#[from] pgwire_replication::PgWireError),
    /// The replication stream carried something the bridge cannot decode.
    #[error("replication stream: {0}")]
    Decode(String),
    /// Kafka did not acknowledge a record (after librdkafka's own retries).
    #[error("kafka delivery failed: {0}")]
    Delivery(rdkafka::error::KafkaError),
    /// A topic's partition count changed while a session wrote to it; the next
    /// session writes with the new count.
    #[error("topic {topic} now has {to} partitions, not {from}; a new session writes with the new count")]
    PartitionsChanged {
        /// The topic.
        topic: String,
        /// The count the session wrote with.
        from: i32,
        /// The count now.
        to: i32,
    },
    /// A record is larger than its topic accepts, and `--oversized-records` is `stop`.
    #[error("table {table}: the change at LSN {} to key {key} is {size} bytes, over the {limit} that topic {topic} accepts; fix: raise the topic's max.message.bytes (and the producer's message.max.bytes with --kafka-property), or start the bridge with --oversized-records skip to leave such records out and count them", pgwire_replication::Lsn(*.lsn))]
    RecordTooLarge {
        /// `schema.table`.
        table: String,
        /// The topic.
        topic: String,
        /// The record's key (JSON, cut at 200 characters).
        key: String,
        /// The change's WAL position, as a number.
        lsn: u64,
        /// The record's size in bytes.
        size: usize,
        /// The limit it is over.
        limit: String,
    },
    /// PostgreSQL did not answer in time: a connection that hangs (a network that
    /// drops packets, a server that accepts and never answers). Transient.
    #[error("postgres: no answer within {after:?} while {during}")]
    Timeout {
        /// What the bridge was doing.
        during: &'static str,
        /// The deadline.
        after: std::time::Duration,
    },
    /// Kafka failed: unreachable, refused a topic, or failed a delivery.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What the bridge was doing.
        context: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Whether Kafka refused for a reason that retrying cannot change: a record too
/// large, missing authorisation, failed authentication, an invalid topic or setting
/// (a `transaction.timeout.ms` above the broker's `transaction.max.timeout.ms` among
/// them), or a policy the broker enforces. Anything else (timeouts, leader changes, a broker
/// going away) is retried.
pub fn is_definite_kafka_error(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::MessageBatchTooLarge
                | C::InvalidRecord
                | C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::TransactionalIdAuthorizationFailed
                | C::SaslAuthenticationFailed
                | C::Authentication
                | C::InvalidTopic
                | C::InvalidReplicationFactor
                | C::InvalidPartitions
                | C::InvalidConfig
                | C::InvalidTransactionTimeout
                | C::PolicyViolation
                | C::InvalidRequiredAcks
                | C::UnsupportedVersion
                | C::UnsupportedForMessageFormat
        )
    )
}

/// How long a connection to PostgreSQL, or a catalog query in the stream, may take.
pub const POSTGRES_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// `future` under [`POSTGRES_DEADLINE`], a [`BridgeError::Timeout`] naming `during` when
/// it does not finish.
pub async fn within_deadline<T>(
    during: &'static str,
    future: impl std::future::Future<Output = Result<T, BridgeError>>,
) -> Result<T, BridgeError> {
    tokio::time::timeout(POSTGRES_DEADLINE, future)
        .await
        .unwrap_or(Err(BridgeError::Timeout {
            during,
            after: POSTGRES_DEADLINE,
        }))
}

impl BridgeError {
    /// A short name of the kind of error, for the `kind` label of the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            BridgeError::Config { .. } => "config",
            BridgeError::Setup { .. } => "setup",
            BridgeError::Postgres { .. } => "postgres",
            BridgeError::Replication(_) => "replication",
            BridgeError::Decode(_) => "decode",
            BridgeError::Delivery(_) => "delivery",
            BridgeError::Kafka { .. } => "kafka",
            BridgeError::PartitionsChanged { .. } => "partitions",
            BridgeError::RecordTooLarge { .. } => "record_too_large",
            BridgeError::Timeout { .. } => "timeout",
        }
    }

    /// Whether retrying (with a new session) can fix it.
    pub fn is_transient(&self) -> bool {
        match self {
            BridgeError::Config { .. }
            | BridgeError::Setup { .. }
            | BridgeError::Decode(_)
            | BridgeError::RecordTooLarge { .. } => false,
            // A slot still held by a dying walsender, a restarting server: all pass.
            BridgeError::Replication(_) => true,
            BridgeError::Postgres { source, .. } => tidemark_core::pg::is_transient(source),
            BridgeError::Kafka { source, .. } | BridgeError::Delivery(source) => {
                !is_definite_kafka_error(source)
            }
            BridgeError::PartitionsChanged { .. } | BridgeError::Timeout { .. } => true,
        }
    }

    pub(crate) fn postgres(
        context: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| BridgeError::Postgres { context, source }
    }

    pub(crate) fn kafka(
        context: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let context = context.into();
        move |source| BridgeError::Kafka { context, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode as C;

    #[test]
    fn kafka_errors_are_sorted_by_code() {
        for definite in [
            C::MessageSizeTooLarge,
            C::TopicAuthorizationFailed,
            C::InvalidTopic,
            C::InvalidTransactionTimeout,
        ] {
            let e = BridgeError::Delivery(KafkaError::MessageProduction(definite));
            assert!(!e.is_transient(), "{definite:?} is definite");
        }
        for transient in [
            C::RequestTimedOut,
            C::NotLeaderForPartition,
            C::BrokerTransportFailure,
        ] {
            let e = BridgeError::Delivery(KafkaError::MessageProduction(transient));
            assert!(e.is_transient(), "{transient:?} is retried");
        }
    }
}
