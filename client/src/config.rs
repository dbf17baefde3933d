//! The settings of a cache once checked, their defaults, and the strategy that makes
//! the bulk load and the stream meet.

use std::path::PathBuf;
use std::time::Duration;

use tidemark_core::pg::ConnectOptions;
use tidemark_core::wire::TableName;

/// The default margin subtracted from the seek time (the snapshot time, or the start
/// of the oldest transaction running just before it) before seeking the topic. It
/// covers commit times that are out of order with commit positions by a little.
pub const DEFAULT_SAFETY_WINDOW: Duration = Duration::from_secs(10);

/// How long [`crate::Builder::build`] waits for a cache to be ready by default: ten
/// minutes, several times what copying a table of tens of millions of rows takes.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(600);

/// The longest safety window a builder accepts.
pub const MAX_SAFETY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The default topic prefix; topics are `<prefix>.<schema>.<table>`.
pub const DEFAULT_TOPIC_PREFIX: &str = "tidemark";

/// The default number of changes a subscriber may fall behind before it lags.
pub const DEFAULT_CHANNEL_CAPACITY: usize = 4096;

/// Consumer properties the cache sets itself, because its guarantees depend on them;
/// setting one through [`Builder::kafka_property`](crate::Builder::kafka_property) is an error.
pub const TYPED_CONSUMER_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
];

/// How the cache makes the bulk load and the stream meet without a gap or a double.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Exact, for topics written by tidemark's bridge: filter the stream by the load
    /// snapshot's transaction visibility (`docs/design.md`).
    #[default]
    Snapshot,
    /// For topics another tool wrote (no transaction ids): `m = max(ts_column)` in the
    /// load transaction, replay from `m − safety window`, re-query rows with
    /// `ts_column >= m`, and keep per key the row with the largest `ts_column`. Exact
    /// only when `ts_column` increases with commit order per key; see the crate docs.
    Watermark {
        /// The column that orders versions of a row (a timestamp or a number).
        ts_column: String,
    },
}

/// Settings, checked. `Debug` hides the password and secret Kafka properties.
#[derive(Clone)]
pub(crate) struct Config {
    pub postgres: ConnectOptions,
    /// Host, port and database, for messages (never the password).
    pub postgres_target: String,
    pub kafka: String,
    pub kafka_properties: Vec<(String, String)>,
    pub table: TableName,
    pub topic: String,
    pub strategy: Strategy,
    pub safety_window: Duration,
    pub owner_column: Option<String>,
    pub channel_capacity: usize,
    /// Off only in tests that show why the filter is needed.
    pub xid_filter: bool,
    /// The encoding of the topic's values ([`crate::Builder::value_format`]).
    pub value_format: tidemark_core::wire::ValueFormat,
    /// The bridge's topic prefix: the first part of the key's schema name with
    /// `--value-schema`.
    pub topic_prefix: String,
    /// Where checkpoints are read and written.
    pub checkpoints: CheckpointSettings,
    /// COPY readers of a load; `None`: chosen from the table's size and the cores.
    pub parallel_load: Option<usize>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("postgres", &self.postgres_target)
            .field("kafka", &self.kafka)
            .field(
                "kafka_properties",
                &tidemark_core::secrets::shown_properties(
                    self.kafka_properties
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                ),
            )
            .field("table", &self.table)
            .field("topic", &self.topic)
            .field("strategy", &self.strategy)
            .field("safety_window", &self.safety_window)
            .field("owner_column", &self.owner_column)
            .field("channel_capacity", &self.channel_capacity)
            .field("xid_filter", &self.xid_filter)
            .field("checkpoints", &self.checkpoints)
            .finish()
    }
}

/// Where checkpoints are read and written.
#[derive(Debug, Clone, Default)]
pub(crate) struct CheckpointSettings {
    /// Read at the first warm start, and written.
    pub dir: Option<PathBuf>,
    /// Read at the first warm start when `dir` has no usable checkpoint.
    pub from: Option<CheckpointSource>,
    /// Time between two checkpoints.
    pub every: Duration,
}

impl CheckpointSettings {
    /// Whether any checkpoint is read at start.
    pub fn reads(&self) -> bool {
        self.dir.is_some() || self.from.is_some()
    }
}

/// A shared checkpoint source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CheckpointSource {
    Dir(PathBuf),
    Url(String),
}

impl CheckpointSource {
    /// A location as given: an `http://` or `https://` URL, or a directory.
    pub fn parse(location: &str) -> CheckpointSource {
        if location.starts_with("http://") || location.starts_with("https://") {
            CheckpointSource::Url(location.to_owned())
        } else {
            CheckpointSource::Dir(PathBuf::from(location))
        }
    }
}
