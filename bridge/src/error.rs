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
        }
    }

    /// Whether retrying (with a new session) can fix it.
    pub fn is_transient(&self) -> bool {
        match self {
            BridgeError::Config { .. } | BridgeError::Setup { .. } | BridgeError::Decode(_) => {
                false
            }
            // A slot still held by a dying walsender, a restarting server: all pass.
            BridgeError::Replication(_) => true,
            BridgeError::Postgres { source, .. } => tidemark_core::pg::is_transient(source),
            BridgeError::Kafka { .. }
            | BridgeError::Delivery(_)
            | BridgeError::PartitionsChanged { .. } => true,
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
