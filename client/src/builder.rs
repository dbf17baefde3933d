//! The settings of a cache and how it starts.
//!
//! [`Builder`] collects the settings, [`Builder::validate`] checks them all before
//! anything connects (each error names the builder method to fix), and
//! [`Builder::build`] or [`Builder::start`] starts the background task that warm-starts
//! and follows the topic.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use std::hash::Hash;
use tokio::sync::watch;

use tidemark_core::pg::ConnectOptions;
use tidemark_core::wire::{TableName, ValueFormat};

use crate::cache::Cache;
use crate::checkpoint::{Encoders, DEFAULT_CHECKPOINT_INTERVAL};
use crate::config::{
    CheckpointSource, Config, Strategy, DEFAULT_CHANNEL_CAPACITY, DEFAULT_SAFETY_WINDOW,
    DEFAULT_STARTUP_TIMEOUT, DEFAULT_TOPIC_PREFIX, MAX_SAFETY_WINDOW, TYPED_CONSUMER_PROPERTIES,
};
use crate::error::{Error, Result};
use crate::state::{Shared, TaskGuard};

/// Collects the settings of a [`Cache`].
///
/// ```no_run
/// # async fn run() -> Result<(), tidemark_client::Error> {
/// #[derive(serde::Deserialize)]
/// struct Account { id: i64, owner: String, balance: String }
///
/// let accounts: tidemark_client::Cache<i64, Account> = tidemark_client::Cache::builder()
///     .postgres("postgres://app@db/app")
///     .kafka("broker:9092")
///     .table("public.accounts")
///     .build()
///     .await?;
/// let balance = accounts.get(&42).map(|a| a.balance.clone());
/// # Ok(()) }
/// ```
pub struct Builder<K, V> {
    postgres: Option<String>,
    postgres_password: Option<String>,
    kafka: Option<String>,
    kafka_properties: Vec<(String, String)>,
    table: Option<String>,
    topic: Option<String>,
    topic_prefix: String,
    strategy: Strategy,
    safety_window: Duration,
    startup_timeout: Duration,
    owner_column: Option<String>,
    channel_capacity: usize,
    xid_filter: bool,
    value_format: ValueFormat,
    value_schema: bool,
    checkpoints: crate::config::CheckpointSettings,
    parallel_load: Option<usize>,
    encoders: Option<Encoders<K, V>>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Cache<K, V>
where
    K: DeserializeOwned + Hash + Eq + Clone + Send + Sync + 'static,
    V: DeserializeOwned + Send + Sync + 'static,
{
    /// A builder for a cache; see [`Builder`] for the settings.
    pub fn builder() -> Builder<K, V> {
        Builder::new()
    }
}

impl<K, V> Default for Builder<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> Builder<K, V> {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Builder {
            postgres: None,
            postgres_password: None,
            kafka: None,
            kafka_properties: Vec::new(),
            table: None,
            topic: None,
            topic_prefix: DEFAULT_TOPIC_PREFIX.into(),
            strategy: Strategy::default(),
            safety_window: DEFAULT_SAFETY_WINDOW,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            owner_column: None,
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            xid_filter: true,
            value_format: ValueFormat::Tidemark,
            value_schema: false,
            checkpoints: crate::config::CheckpointSettings {
                every: DEFAULT_CHECKPOINT_INTERVAL,
                ..Default::default()
            },
            parallel_load: None,
            encoders: None,
            _types: PhantomData,
        }
    }

    /// The PostgreSQL URL (`postgres://user:password@host:port/db?...`); libpq-style
    /// settings (`connect_timeout`, `application_name`, `options`, ...) go in its
    /// query string, TLS included: `sslmode=disable|allow|prefer|require|verify-ca|verify-full`,
    /// `sslrootcert`, `sslcert`, `sslkey` (see [`tidemark_core::pg`]). Required.
    /// Without a password in the URL, `PGPASSWORD` and the password file (`PGPASSFILE`,
    /// `~/.pgpass`) apply as in libpq, or [`Builder::postgres_password`].
    pub fn postgres(mut self, url: impl Into<String>) -> Self {
        self.postgres = Some(url.into());
        self
    }

    /// The PostgreSQL password, kept apart from the URL (read from a secrets file or
    /// store); it wins over one in the URL. Never shown in errors or `Debug` output.
    pub fn postgres_password(mut self, password: impl Into<String>) -> Self {
        self.postgres_password = Some(password.into());
        self
    }

    /// The Kafka bootstrap servers (`host:port,host:port`). Required.
    pub fn kafka(mut self, brokers: impl Into<String>) -> Self {
        self.kafka = Some(brokers.into());
        self
    }

    /// A librdkafka consumer property passed through unchanged, e.g.
    /// `security.protocol`, `ssl.ca.location`, `sasl.mechanism`. The properties in
    /// [`TYPED_CONSUMER_PROPERTIES`] are the cache's own and may not be set.
    pub fn kafka_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.kafka_properties.push((key.into(), value.into()));
        self
    }

    /// The table, `schema.table` (or `table` in `public`), as the catalog spells it.
    /// Required.
    pub fn table(mut self, name: impl Into<String>) -> Self {
        self.table = Some(name.into());
        self
    }

    /// The topic, when it does not follow the naming rule `<prefix>.<schema>.<table>`.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// The encoding of the topic's values, as the bridge writes them
    /// (`--value-format`, and in the Debezium format its three modes) [default:
    /// [`ValueFormat::Tidemark`]]. Rows loaded from PostgreSQL are encoded the same way,
    /// so a row holds the same values whichever path it took. A record whose
    /// `tidemark.format` header names another format stops the cache with an error.
    pub fn value_format(mut self, format: ValueFormat) -> Self {
        self.value_format = format;
        self
    }

    /// Whether the bridge writes keys and values with their Kafka Connect schema, as
    /// `{"schema": …, "payload": …}` (`--value-schema`) [default: false]. Needs a
    /// Debezium [`Builder::value_format`]; the same as setting its
    /// `Modes::schemas`. The cache unwraps the payloads, and computes the key
    /// (whose bytes decide a row's partition) with its schema, as the bridge does.
    pub fn value_schema(mut self, on: bool) -> Self {
        self.value_schema = on;
        self
    }

    /// The topic prefix the bridge was configured with ([`DEFAULT_TOPIC_PREFIX`]).
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// How the load and the stream meet ([`Strategy::Snapshot`] by default).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// How far before the snapshot time the replay starts ([`DEFAULT_SAFETY_WINDOW`]).
    /// Longer is always safe, only slower.
    pub fn safety_window(mut self, window: Duration) -> Self {
        self.safety_window = window;
        self
    }

    /// A text or uuid column in which the application stores the
    /// [`Cache::instance_id`] of the instance that wrote the row; changes whose row
    /// carries this instance's id arrive as [`crate::Origin::OwnWrite`].
    pub fn owner_column(mut self, column: impl Into<String>) -> Self {
        self.owner_column = Some(column.into());
        self
    }

    /// How many changes a subscriber may fall behind ([`DEFAULT_CHANNEL_CAPACITY`]).
    pub fn channel_capacity(mut self, capacity: usize) -> Self {
        self.channel_capacity = capacity;
        self
    }

    /// How many connections read the table in a load from PostgreSQL, each a range of
    /// its pages in the same snapshot (exported by the load's transaction and imported
    /// by the others, so the load is exactly one snapshot). `1` reads with one
    /// connection. By default one reader per 64 MiB of table, at most one per two
    /// cores (the other half decode the readers' rows) and at most 8. Needs PostgreSQL 14 or later (TID range scans) and a plain
    /// table; otherwise, and when a reader cannot connect or join the snapshot (a
    /// DDL statement waiting for the table's locks, say), fewer read (a warning says why
    /// when the count was set here). [`Stats::load_readers`](crate::Stats::load_readers)
    /// tells how many read the latest load.
    pub fn parallel_load(mut self, readers: usize) -> Self {
        self.parallel_load = Some(readers);
        self
    }

    /// Switches the snapshot strategy's xid filter off, so every replayed record is
    /// applied, including those the load already contains. The cache is then wrong;
    /// this exists only so tests can show that the filter is what keeps it right.
    #[doc(hidden)]
    pub fn disable_xid_filter_for_tests(mut self) -> Self {
        self.xid_filter = false;
        self
    }

    /// Checks the settings without connecting to anything.
    pub(crate) fn validate(&self) -> Result<Config> {
        let bad = |field, problem: &str| Error::Config {
            field,
            problem: problem.to_owned(),
        };
        let url = self
            .postgres
            .as_deref()
            .ok_or_else(|| bad("postgres", "is required"))?;
        let mut postgres = ConnectOptions::parse(url)
            .map_err(|e| bad("postgres", &e.to_string()))?
            .with_session("tidemark-client");
        if let Some(p) = &self.postgres_password {
            postgres = postgres.with_password(p);
        }
        let postgres_target = postgres.target();
        let kafka = self
            .kafka
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| bad("kafka", "is required (host:port of the brokers)"))?
            .to_owned();
        for (k, _) in &self.kafka_properties {
            if TYPED_CONSUMER_PROPERTIES.contains(&k.as_str()) {
                return Err(bad(
                    "kafka_property",
                    &format!("{k} is set by the cache itself and cannot be overridden"),
                ));
            }
        }
        let name = self
            .table
            .as_deref()
            .ok_or_else(|| bad("table", "is required"))?;
        let table = TableName::parse(name)
            .ok_or_else(|| bad("table", &format!("{name:?} is not schema.table")))?;
        let topic = match &self.topic {
            Some(t) if t.trim().is_empty() => return Err(bad("topic", "is empty")),
            Some(t) => t.trim().to_owned(),
            None if self.topic_prefix.trim().is_empty() => {
                return Err(bad("topic_prefix", "is empty"))
            }
            None => table.topic(self.topic_prefix.trim()),
        };
        let value_format = match (self.value_format, self.value_schema) {
            (format, false) => format,
            (ValueFormat::Debezium(modes), true) => ValueFormat::Debezium(
                tidemark_core::wire::debezium::Modes {
                    schemas: true,
                    ..modes
                },
            ),
            (ValueFormat::Tidemark, true) => {
                return Err(bad(
                    "value_schema",
                    "the bridge writes schemas only with --value-format debezium; set Builder::value_format to the bridge's Debezium format too",
                ))
            }
        };
        if let Strategy::Watermark { ts_column } = &self.strategy {
            if ts_column.trim().is_empty() {
                return Err(bad("strategy", "the watermark strategy needs a ts column"));
            }
        }
        if self
            .owner_column
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(bad("owner_column", "is empty"));
        }
        if self.checkpoints.reads() && self.strategy != Strategy::Snapshot {
            return Err(bad(
                "checkpoint_dir",
                "checkpoints work with the snapshot strategy only (the watermark strategy keeps no per-partition positions to continue from)",
            ));
        }
        if self.checkpoints.every < Duration::from_secs(1) {
            return Err(bad("checkpoint_interval", "is shorter than a second"));
        }
        if matches!(&self.checkpoints.from, Some(CheckpointSource::Url(u)) if url::Url::parse(u).is_err())
        {
            return Err(bad("checkpoint_from", "is not a valid URL"));
        }
        if self.parallel_load == Some(0) {
            return Err(bad(
                "parallel_load",
                "is 0; at least one connection must read the table",
            ));
        }
        if self.safety_window > MAX_SAFETY_WINDOW {
            return Err(bad(
                "safety_window",
                "is longer than a day; a few seconds is enough",
            ));
        }
        Ok(Config {
            postgres,
            postgres_target,
            kafka,
            kafka_properties: self.kafka_properties.clone(),
            table,
            topic,
            strategy: self.strategy.clone(),
            safety_window: self.safety_window,
            owner_column: self.owner_column.clone(),
            channel_capacity: self.channel_capacity,
            xid_filter: self.xid_filter,
            value_format,
            topic_prefix: self.topic_prefix.trim().to_owned(),
            checkpoints: self.checkpoints.clone(),
            parallel_load: self.parallel_load,
        })
    }
}

impl<K, V> Builder<K, V>
where
    K: serde::Serialize,
    V: serde::Serialize,
{
    /// Keeps checkpoints in `dir` (see [`crate::checkpoint`]): at start, the newest
    /// usable one there is loaded and the cache follows the topic from its offsets,
    /// reading nothing from the table; while it runs, a checkpoint is written every
    /// [`Builder::checkpoint_interval`] and at [`Cache::shutdown`], atomically, and
    /// older ones are removed (the newest [`KEEP`](crate::checkpoint::KEEP) stay).
    /// Rows are written by serialising `K` and `V` back to JSON, so both must
    /// serialise as they deserialise (a derived `Serialize` without renames does).
    pub fn checkpoint_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.checkpoints.dir = Some(dir.into());
        self.encoders = Some(Encoders::new());
        self
    }

    /// Reads checkpoints from `location` at start when
    /// [`Builder::checkpoint_dir`] has no usable one (or is not set): a directory
    /// that many instances share, or an `http://` / `https://` URL (a peer's
    /// [`checkpoint::serve`](crate::checkpoint::serve), or an object store). Only read,
    /// never written. A checkpoint that cannot be used is reported and the cache
    /// warm-starts from PostgreSQL; see [`crate::checkpoint`].
    /// Needs `K, V: Serialize` as [`Builder::checkpoint_dir`] does: a checkpoint whose
    /// rows lack columns (its writer's value type did not keep them) is used only if
    /// this value type, serialised, reads no other field.
    pub fn checkpoint_from(mut self, location: impl Into<String>) -> Self {
        self.checkpoints.from = Some(CheckpointSource::parse(&location.into()));
        self.encoders = Some(Encoders::new());
        self
    }
}

impl<K, V> Builder<K, V>
where
    K: DeserializeOwned + Hash + Eq + Clone + Send + Sync + 'static,
    V: DeserializeOwned + Send + Sync + 'static,
{
    /// How often a cache with a [`Builder::checkpoint_dir`] writes a checkpoint while
    /// it follows (when something changed); default
    /// [`DEFAULT_CHECKPOINT_INTERVAL`](crate::checkpoint::DEFAULT_CHECKPOINT_INTERVAL).
    /// One is also written when the cache is shut down.
    pub fn checkpoint_interval(mut self, every: Duration) -> Self {
        self.checkpoints.every = every;
        self
    }

    /// Starts the cache in the background and returns at once; the map fills while
    /// the warm start runs. Await [`Cache::ready`] to know when it has caught up.
    /// Must be called inside a Tokio runtime.
    pub fn start(self) -> Result<Cache<K, V>> {
        let config = Arc::new(self.validate()?);
        let shared = Arc::new(Shared {
            checkpoint_dir: config.checkpoints.dir.clone(),
            ..Shared::new(
                uuid::Uuid::now_v7(),
                config.table.to_string(),
                config.topic.clone(),
                config.channel_capacity,
            )
        });
        let (stop, stopped) = watch::channel(false);
        let encoders = self.encoders.filter(|_| config.checkpoints.reads());
        let task = tokio::spawn(crate::run::run(config, shared.clone(), encoders, stopped));
        Ok(Cache {
            shared,
            guard: Arc::new(TaskGuard {
                stop,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// How long [`Builder::build`] waits for the cache to be warm and caught up before
    /// it stops the cache and returns [`Error::StartupTimeout`], which names the step
    /// that did not finish. Default [`DEFAULT_STARTUP_TIMEOUT`]; raise it for tables
    /// that take longer to copy.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts the cache and returns once it is warm and caught up, or with
    /// [`Error::StartupTimeout`] after the startup timeout.
    pub async fn build(self) -> Result<Cache<K, V>> {
        let timeout = self.startup_timeout;
        let cache = self.start()?;
        match tokio::time::timeout(timeout, cache.ready()).await {
            Ok(ready) => ready.map(|()| cache),
            Err(_) => {
                let error = Error::StartupTimeout {
                    table: cache.table().to_owned(),
                    after: timeout,
                    step: cache.shared.step(),
                };
                cache.shutdown().await;
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Builder<i64, serde_json::Value> {
        Builder::new()
            .postgres("postgres://app:secret@db:6432/shop?options=-c%20statement_timeout%3D0")
            .kafka("k:9092")
            .table("public.accounts")
    }

    fn field(b: Builder<i64, serde_json::Value>) -> &'static str {
        match b.validate() {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn validates_and_derives_the_topic() {
        let c = base().validate().unwrap();
        assert_eq!(c.topic, "tidemark.public.accounts");
        assert_eq!(c.postgres_target, "db:6432/shop");
        assert_eq!(
            c.postgres.config().get_options(),
            Some(
                format!(
                    "-c statement_timeout=0 {}",
                    tidemark_core::wire::SESSION_OPTIONS
                )
                .as_str()
            )
        );
        assert_eq!(c.safety_window, DEFAULT_SAFETY_WINDOW);
        assert_eq!(
            base().topic_prefix("app").validate().unwrap().topic,
            "app.public.accounts"
        );
        assert_eq!(base().topic("x").validate().unwrap().topic, "x");
    }

    #[test]
    fn value_schema_needs_debeziums_format_and_sets_its_mode() {
        assert_eq!(field(base().value_schema(true)), "value_schema");
        let c = base()
            .value_format(ValueFormat::Debezium(Default::default()))
            .value_schema(true)
            .validate()
            .unwrap();
        assert!(c.value_format.schemas());
        assert!(c.value_format.describe().ends_with(";schemas.enable=true"));
        assert!(!base().validate().unwrap().value_format.schemas());
    }

    #[test]
    fn errors_name_the_setting() {
        assert_eq!(field(Builder::new().kafka("k").table("t")), "postgres");
        assert_eq!(field(base().postgres("not a url ://")), "postgres");
        assert_eq!(
            field(base().postgres("postgres://h/d?sslmode=nope")),
            "postgres"
        );
        assert_eq!(field(base().kafka(" ")), "kafka");
        assert_eq!(field(base().table("a.b.c")), "table");
        assert_eq!(field(base().topic("")), "topic");
        assert_eq!(
            field(base().kafka_property("group.id", "g")),
            "kafka_property"
        );
        assert_eq!(
            field(base().strategy(Strategy::Watermark {
                ts_column: "".into()
            })),
            "strategy"
        );
        assert_eq!(field(base().owner_column(" ")), "owner_column");
        let msg = base()
            .kafka_property("auto.offset.reset", "earliest")
            .validate();
        assert!(!format!("{msg:?}").contains("secret"));
    }
}
