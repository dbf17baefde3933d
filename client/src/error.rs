//! The errors a cache can report, each saying what went wrong and what to do.
//!
//! Two kinds matter to a caller. Errors at start (bad settings, PostgreSQL or the
//! topic unreachable, a table without a primary key, a type that does not fit the
//! rows) come back from [`crate::Builder::build`] or [`crate::Cache::ready`]. Once
//! running, the cache handles trouble itself: bad records are counted and skipped, a
//! broker outage is waited out, and lost offsets trigger a new warm start; those
//! appear in the logs and [`crate::Stats`], not as errors.

/// What went wrong with a cache.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A builder setting is missing or wrong.
    #[error("setting `{field}`: {problem}")]
    Config {
        /// The builder method that takes the setting.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },

    /// PostgreSQL could not be reached.
    #[error(
        "PostgreSQL is not reachable at {target}: {}; check the URL (TLS: sslmode, sslrootcert) and that the server runs",
        tidemark_core::pg::error_detail(source)
    )]
    PostgresUnreachable {
        /// Host, port and database (no password).
        target: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// A PostgreSQL statement failed.
    #[error("PostgreSQL failed while {during}: {}", tidemark_core::pg::error_detail(.source))]
    Postgres {
        /// What the cache was doing.
        during: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// The table cannot be cached as it is.
    #[error("table {table}: {problem}; {fix}")]
    Table {
        /// `schema.table`.
        table: String,
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },

    /// The Kafka topic does not exist.
    #[error("topic {topic} does not exist on {brokers}; start the bridge for this table (it creates the topic) or set `topic` to the right name")]
    TopicMissing {
        /// The topic.
        topic: String,
        /// The bootstrap servers asked.
        brokers: String,
    },

    /// Records the warm start must replay are gone: the topic's log starts after
    /// the replay's start time.
    #[error("topic {topic} partition {partition}: the replay must start at or before offset {low}, the first the broker still has, so changes after the cache's snapshot may have been deleted by retention; the cache cannot start exactly. Use cleanup.policy=compact without retention on the topic (as the bridge creates it), or a retention.ms far longer than a warm start")]
    RetentionGap {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Its low watermark.
        low: i64,
    },

    /// A Kafka request failed.
    #[error(
        "Kafka failed while {during}: {source}; check the brokers and the librdkafka properties"
    )]
    Kafka {
        /// What the cache was doing.
        during: &'static str,
        /// librdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// The brokers could not be reached, and librdkafka said why: a refused SASL
    /// authentication, a TLS certificate that does not verify, a refused connection.
    #[error(
        "Kafka failed while {during}: {source}; the last broker error: {reason}; check the brokers and the librdkafka properties (security.protocol, sasl.*, ssl.*)"
    )]
    KafkaUnreachable {
        /// What the cache was doing.
        during: &'static str,
        /// librdkafka's last broker error, e.g. `sasl_ssl://host:9094/bootstrap: SASL
        /// authentication error: Authentication failed ... invalid credentials ...`.
        reason: String,
        /// librdkafka's error for the request.
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// A loaded row or key does not fit the cache's key or value type.
    #[error("a {what} of {table} does not fit the {what} type: {source}; make the Rust type match the table's columns (see the crate docs for how values are encoded)")]
    Deserialize {
        /// `key` or `row`.
        what: &'static str,
        /// `schema.table`.
        table: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },

    /// A value from PostgreSQL could not be decoded.
    #[error("cannot decode a row of {table}: {problem}")]
    Decode {
        /// `schema.table`.
        table: String,
        /// What was wrong.
        problem: String,
    },

    /// The cache was not ready within the startup timeout
    /// ([`crate::Builder::startup_timeout`]); names the step it was still in.
    #[error("table {table}: the cache was not ready after {after:?}; it was still {step}. Raise Builder::startup_timeout for a large table, or see the log for why this step waits")]
    StartupTimeout {
        /// `schema.table`.
        table: String,
        /// The timeout.
        after: std::time::Duration,
        /// What the warm start was doing.
        step: &'static str,
    },

    /// The cache stopped (shut down, or its task ended) before it became ready.
    #[error("the cache stopped before it was ready: {0}")]
    Stopped(String),
}

impl Error {
    pub(crate) fn postgres(during: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| Error::Postgres { during, source }
    }

    pub(crate) fn kafka(during: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        move |source| Error::Kafka { during, source }
    }

    /// Whether trying again later may succeed (lost connections, broker trouble), as
    /// opposed to a problem with the settings, the table or the types.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::PostgresUnreachable { .. }
            | Error::Kafka { .. }
            | Error::KafkaUnreachable { .. }
            | Error::StartupTimeout { .. }
            | Error::Stopped(_) => true,
            Error::Postgres { source, .. } => tidemark_core::pg::is_transient(source),
            Error::Config { .. }
            | Error::Table { .. }
            | Error::TopicMissing { .. }
            | Error::RetentionGap { .. }
            | Error::Deserialize { .. }
            | Error::Decode { .. } => false,
        }
    }
}

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
