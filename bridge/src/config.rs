//! The bridge's settings, from flags, `TIDEMARK_*` environment variables and a TOML
//! file, in that order of precedence, then the defaults below.
//!
//! Unknown TOML keys are rejected so that a typo cannot silently fall back to a
//! default. The PostgreSQL URL is held in [`PgUrl`], whose `Debug` and `Display`
//! hide the password, and [`Config`]'s `Debug` hides secret Kafka properties, so
//! neither can reach a log line or an error message; `--help` never shows the
//! values of the environment variables that may hold them.
//!
//! Secrets can also come from files: `--postgres-password-file`, and for every
//! `TIDEMARK_*` variable the Docker and Kubernetes convention `TIDEMARK_*_FILE`, a file
//! holding the value ([`load_env_files`]). Without a password in the URL or a file,
//! `PGPASSWORD` and the password file (`PGPASSFILE`, `~/.pgpass`) apply, as in libpq.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;
use tidemark_core::wire::debezium::{BinaryMode, DecimalMode, Modes, TimePrecisionMode};
use tidemark_core::wire::{TableName, ValueFormat};

use tidemark_core::pg::{ConnectOptions, SettingsError};
use tidemark_core::secrets::{redact_url, shown_properties};

use crate::error::BridgeError;
pub use crate::sink::producer::Oversized;

/// Producer properties the bridge sets itself, because its guarantees depend on them.
pub const TYPED_PRODUCER_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "acks",
    "enable.idempotence",
    "partitioner",
    "allow.auto.create.topics",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "enable.gapless.guarantee",
    "transactional.id",
];

/// Default Kafka bootstrap servers.
pub const DEFAULT_KAFKA: &str = "127.0.0.1:9092";
/// Default replication slot name.
pub const DEFAULT_SLOT: &str = "tidemark";
/// Default publication name.
pub const DEFAULT_PUBLICATION: &str = "tidemark";
/// Default topic prefix: topics are `<prefix>.<schema>.<table>`.
pub const DEFAULT_TOPIC_PREFIX: &str = "tidemark";
/// Default partition count of topics the bridge creates.
pub const DEFAULT_PARTITIONS: i32 = 1;
/// Default `min.compaction.lag.ms` of topics the bridge creates: an hour. A cache
/// that warm-starts replays from shortly before its snapshot; records younger than
/// the lag are never compacted, so that replay sees every change after its snapshot.
pub const DEFAULT_MIN_COMPACTION_LAG_MS: u64 = 3_600_000;
/// Replication factor of topics the bridge creates when none is set: -1, the broker's
/// `default.replication.factor` (Kafka 2.4 and later).
pub const DEFAULT_REPLICATION_FACTOR: i32 = -1;
/// Topic settings the bridge sets itself on the topics it creates.
pub const TYPED_TOPIC_CONFIGS: &[&str] = &["cleanup.policy", "min.compaction.lag.ms"];

/// What the bridge writes for a TRUNCATE (`--truncate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TruncateMode {
    /// One `op: "t"` record on every partition of the table's topic, so every cache
    /// following the topic meets it in order and empties the table.
    #[default]
    PerPartition,
    /// Nothing: the TRUNCATE is logged and counted, and caches keep the truncated rows.
    Skip,
}

/// Command-line flags; each also reads a `TIDEMARK_*` environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "tidemark-bridge",
    version,
    about = "Tails a PostgreSQL logical replication slot into Kafka: \
every committed row change, one topic per table, keyed by primary key, in commit order."
)]
pub struct Cli {
    /// TOML file with the same settings (keys as the long flags, with `_` for `-`).
    #[arg(long, env = "TIDEMARK_CONFIG")]
    pub config: Option<PathBuf>,
    /// PostgreSQL URL, e.g. postgres://user:pass@host:5432/db?sslmode=verify-full&sslrootcert=/ca.pem;
    /// the TLS parameters (sslmode, sslrootcert, sslcert, sslkey) apply to every connection,
    /// as in libpq. The user needs the REPLICATION attribute, and CREATE on the database when the publication does not exist yet.
    #[arg(long, env = "TIDEMARK_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,
    /// File holding the PostgreSQL password (a trailing newline is ignored); it wins over one in the URL.
    #[arg(long, env = "TIDEMARK_POSTGRES_PASSWORD_FILE")]
    pub postgres_password_file: Option<PathBuf>,
    /// Kafka bootstrap servers, comma-separated [default: 127.0.0.1:9092].
    #[arg(long, env = "TIDEMARK_KAFKA")]
    pub kafka: Option<String>,
    /// Tables to publish, comma-separated schema.table (schema defaults to public). Each needs a primary key.
    #[arg(long, env = "TIDEMARK_TABLES", value_delimiter = ',')]
    pub tables: Option<Vec<String>>,
    /// Logical replication slot; created (pgoutput) when missing [default: tidemark].
    #[arg(long, env = "TIDEMARK_SLOT")]
    pub slot: Option<String>,
    /// Publication (1-63 lower-case letters, digits and underscores); created for the tables when missing, extended when a table is missing from it [default: tidemark].
    #[arg(long, env = "TIDEMARK_PUBLICATION")]
    pub publication: Option<String>,
    /// Topic prefix: each table goes to <prefix>.<schema>.<table> [default: tidemark].
    #[arg(long, env = "TIDEMARK_TOPIC_PREFIX")]
    pub topic_prefix: Option<String>,
    /// Partitions of the topics the bridge creates (cleanup.policy=compact); existing topics are kept as they are [default: 1].
    #[arg(long, env = "TIDEMARK_PARTITIONS")]
    pub partitions: Option<i32>,
    /// Replication factor of the topics the bridge creates; -1 is the broker's default.replication.factor [default: -1].
    #[arg(long, env = "TIDEMARK_REPLICATION_FACTOR")]
    pub replication_factor: Option<i32>,
    /// min.compaction.lag.ms of the topics the bridge creates: records younger than this are never compacted; keep it longer than the slowest cache warm start plus its safety window [default: 3600000].
    #[arg(long, env = "TIDEMARK_MIN_COMPACTION_LAG_MS")]
    pub min_compaction_lag_ms: Option<u64>,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address, e.g. 0.0.0.0:9187 [default: off].
    #[arg(long, env = "TIDEMARK_HTTP")]
    pub http: Option<std::net::SocketAddr>,
    /// A librdkafka producer property, key=value; repeatable (TLS, SASL, tuning). Must not repeat a typed setting.
    #[arg(
        long = "kafka-property",
        env = "TIDEMARK_KAFKA_PROPERTIES",
        value_delimiter = ';',
        hide_env_values = true
    )]
    pub kafka_properties: Vec<String>,
    /// What to do with a record larger than its topic's max.message.bytes: stop (with the table, key, LSN and size) or skip (leave it out, log it and count it in tidemark_skipped_records_total) [default: stop].
    #[arg(long, env = "TIDEMARK_OVERSIZED_RECORDS", value_enum)]
    pub oversized_records: Option<Oversized>,
    /// A setting of the topics the bridge creates, key=value; repeatable (e.g. min.insync.replicas=2, retention.ms). cleanup.policy and min.compaction.lag.ms are the bridge's own.
    #[arg(
        long = "topic-config",
        env = "TIDEMARK_TOPIC_CONFIG",
        value_delimiter = ';'
    )]
    pub topic_config: Vec<String>,
    /// Exactly-once delivery to `isolation.level=read_committed` consumers: a transactional producer groups the records of PostgreSQL transactions into Kafka transactions, each storing the bridge's position in <prefix>.tidemark-state, so a restart after a crash writes no record twice. Consumers that read uncommitted still see aborted records [default: off, at-least-once].
    #[arg(long, env = "TIDEMARK_EXACTLY_ONCE")]
    pub exactly_once: bool,
    /// With --exactly-once: how long a Kafka transaction collects PostgreSQL transactions before it commits; a longer interval costs latency, a shorter one throughput [default: 100].
    #[arg(long, env = "TIDEMARK_TRANSACTION_INTERVAL_MS")]
    pub transaction_interval_ms: Option<u64>,
    /// With --exactly-once: the producer's transactional.id; a new producer with the same id fences the old one [default: tidemark.<topic prefix>.<slot>].
    #[arg(long, env = "TIDEMARK_TRANSACTIONAL_ID")]
    pub transactional_id: Option<String>,
    /// When a table's topic got no record for this long, write a heartbeat on each of its partitions: a tombstone of a key that never holds a row, with header tidemark.heartbeat (the slot's confirmed LSN and the server's time). A duration such as 30s, 500ms, 5m, or milliseconds [default: off].
    #[arg(long, env = "TIDEMARK_HEARTBEAT_INTERVAL", value_parser = parse_duration)]
    pub heartbeat_interval: Option<std::time::Duration>,
    /// What a TRUNCATE becomes: per-partition (an op "t" record on every partition, which caches need to stay exact) or skip (logged, counted in tidemark_skipped_truncates_total; caches keep the truncated rows) [default: per-partition].
    #[arg(long, env = "TIDEMARK_TRUNCATE", value_enum)]
    pub truncate: Option<TruncateMode>,
    /// Encoding of the values in before, after and the key: tidemark (tidemark's codec) or debezium (as Debezium's PostgreSQL connector writes them; see docs/value-formats.md); clients must be built with the same format [default: tidemark].
    #[arg(long, env = "TIDEMARK_VALUE_FORMAT")]
    pub value_format: Option<String>,
    /// With --value-format debezium: numeric and money as precise (Connect Decimal, base64 of the unscaled value), double or string [default: precise].
    #[arg(long, env = "TIDEMARK_DECIMAL_HANDLING_MODE")]
    pub decimal_handling_mode: Option<String>,
    /// With --value-format debezium: time and timestamp as adaptive (millis up to precision 3, else micros), adaptive_time_microseconds (time always in micros) or connect (always millis) [default: adaptive].
    #[arg(long, env = "TIDEMARK_TIME_PRECISION_MODE")]
    pub time_precision_mode: Option<String>,
    /// With --value-format debezium: bytea as bytes (base64 in JSON), base64, base64-url-safe or hex [default: bytes].
    #[arg(long, env = "TIDEMARK_BINARY_HANDLING_MODE")]
    pub binary_handling_mode: Option<String>,
    /// Write every record key and value as Kafka Connect's JsonConverter does with schemas.enable=true: {"schema": ..., "payload": ...}, with the schemas Debezium declares (see docs/value-formats.md); needs --value-format debezium, and clients built with Builder::value_schema(true) [default: off].
    #[arg(long, env = "TIDEMARK_VALUE_SCHEMA")]
    pub value_schema: bool,
    /// Write transaction metadata as Debezium's provide.transaction.metadata does: a BEGIN and an END event (with the count of change records per table) for each transaction on the topic <prefix>.transaction, and a transaction block (id, total_order, data_collection_order) in every change record [default: off].
    #[arg(long, env = "TIDEMARK_PROVIDE_TRANSACTION_METADATA")]
    pub provide_transaction_metadata: bool,
    /// When the bridge creates its slot, first write every row of the tables whose topics are still empty as an op "r" record (initial), or write only changes (never) [default: initial].
    #[arg(long, env = "TIDEMARK_SNAPSHOT", value_enum)]
    pub snapshot: Option<SnapshotMode>,
    /// Most rows per second the initial snapshot reads, so that it does not starve the database; 0 is no limit [default: 0].
    #[arg(long, env = "TIDEMARK_SNAPSHOT_ROWS_PER_SECOND")]
    pub snapshot_rows_per_second: Option<u64>,
}

/// Whether a new slot starts with a snapshot of the tables (`--snapshot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// When the bridge creates its slot, every row of each table whose topic holds no
    /// record yet is written as an op `r` record before the first change (Debezium's
    /// `snapshot.mode=initial`). Topics that already hold records are left as they
    /// are.
    #[default]
    Initial,
    /// Only changes: a topic holds what changed since the slot was created.
    Never,
}

/// Parses a duration: a number of milliseconds, or a number followed by `ms`, `s`,
/// `m` or `h`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write e.g. 30s, 500ms, 5m or 1h"))?;
    let ms = match unit.trim() {
        "" | "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}; use ms, s, m or h"
            ))
        }
    };
    ms.map(std::time::Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// A duration in the TOML file: milliseconds, or text as for the flag.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileDuration {
    Millis(u64),
    Text(String),
}

/// Default `--transaction-interval-ms`.
pub const DEFAULT_TRANSACTION_INTERVAL_MS: u64 = 100;

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    postgres: Option<String>,
    postgres_password_file: Option<PathBuf>,
    kafka: Option<String>,
    tables: Option<Vec<String>>,
    slot: Option<String>,
    publication: Option<String>,
    topic_prefix: Option<String>,
    partitions: Option<i32>,
    replication_factor: Option<i32>,
    min_compaction_lag_ms: Option<u64>,
    http: Option<std::net::SocketAddr>,
    #[serde(default)]
    kafka_properties: BTreeMap<String, String>,
    #[serde(default)]
    topic_config: BTreeMap<String, String>,
    oversized_records: Option<Oversized>,
    #[serde(default)]
    exactly_once: bool,
    transaction_interval_ms: Option<u64>,
    transactional_id: Option<String>,
    heartbeat_interval: Option<FileDuration>,
    snapshot: Option<SnapshotMode>,
    snapshot_rows_per_second: Option<u64>,
    truncate: Option<TruncateMode>,
    value_format: Option<String>,
    decimal_handling_mode: Option<String>,
    time_precision_mode: Option<String>,
    binary_handling_mode: Option<String>,
    value_schema: Option<bool>,
    #[serde(default)]
    provide_transaction_metadata: bool,
}

/// A PostgreSQL URL, and a password given apart from it, whose `Debug` and `Display`
/// hide the password (in the user info and in a `password=` parameter).
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    url: String,
    password: Option<String>,
}

impl PgUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        PgUrl {
            url: url.into(),
            password: None,
        }
    }
    /// The URL with a password given apart from it (read from a file).
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }
    /// The URL with its password, for connecting only.
    pub fn expose(&self) -> &str {
        &self.url
    }
    /// The connection settings: the URL's, with the separate password if there is one
    /// (else the URL's, else `PGPASSWORD` or the password file, as libpq).
    pub fn options(&self) -> Result<ConnectOptions, SettingsError> {
        let options = ConnectOptions::parse(&self.url)?;
        Ok(match &self.password {
            Some(p) => options.with_password(p),
            None => options,
        })
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.url))
    }
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgUrl({self})")
    }
}

/// The bridge's validated settings. `Debug` hides secrets.
#[derive(Clone)]
pub struct Config {
    /// PostgreSQL URL.
    pub postgres: PgUrl,
    /// Kafka bootstrap servers.
    pub kafka: String,
    /// Tables to publish.
    pub tables: Vec<TableName>,
    /// Replication slot name.
    pub slot: String,
    /// Publication name.
    pub publication: String,
    /// Topic prefix.
    pub topic_prefix: String,
    /// Partitions for new topics.
    pub partitions: i32,
    /// Replication factor for new topics.
    pub replication_factor: i32,
    /// `min.compaction.lag.ms` for new topics.
    pub min_compaction_lag_ms: u64,
    /// Address of the metrics and health endpoint, if any.
    pub http: Option<std::net::SocketAddr>,
    /// Extra librdkafka properties.
    pub kafka_properties: BTreeMap<String, String>,
    /// Extra settings of the topics the bridge creates.
    pub topic_config: BTreeMap<String, String>,
    /// What to do with a record larger than its topic accepts.
    pub oversized_records: Oversized,
    /// Exactly-once delivery through Kafka transactions (`--exactly-once`).
    pub exactly_once: bool,
    /// How long one Kafka transaction collects changes, with `exactly_once`.
    pub transaction_interval: std::time::Duration,
    /// The producer's `transactional.id`, with `exactly_once`.
    pub transactional_id: String,
    /// Heartbeats on topics idle this long; `None`: none.
    pub heartbeat_interval: Option<std::time::Duration>,
    /// Whether a new slot starts with a snapshot.
    pub snapshot: SnapshotMode,
    /// Most rows per second the snapshot reads (0: no limit).
    pub snapshot_rows_per_second: u64,
    /// How change records are written.
    pub records: RecordSettings,
}

/// How the bridge writes change records: what a TRUNCATE becomes and, later, the value
/// format. One field of [`Config`], so that adding a setting here changes no other
/// code that builds a `Config`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecordSettings {
    /// What a TRUNCATE becomes.
    pub truncate: TruncateMode,
    /// The encoding of the values; with `--value-schema`, [`Modes::schemas`].
    pub format: ValueFormat,
    /// Transaction metadata: the `transaction` block in every change record and the
    /// BEGIN/END events on `<prefix>.transaction` (`--provide-transaction-metadata`).
    pub transaction_metadata: bool,
}

/// Parses one setting of `field` with `FromStr`.
fn parse_setting<T: std::str::FromStr>(
    field: &'static str,
    value: Option<String>,
) -> Result<Option<T>, BridgeError>
where
    T::Err: std::fmt::Display,
{
    value
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|e: T::Err| invalid(field, e.to_string()))
        })
        .transpose()
}

/// The value format from `--value-format` and Debezium's three knobs, which are
/// refused without `--value-format debezium`.
fn value_format(
    format: Option<String>,
    decimal: Option<String>,
    time: Option<String>,
    binary: Option<String>,
    schemas: bool,
) -> Result<ValueFormat, BridgeError> {
    let decimal: Option<DecimalMode> = parse_setting("decimal-handling-mode", decimal)?;
    let time: Option<TimePrecisionMode> = parse_setting("time-precision-mode", time)?;
    let binary: Option<BinaryMode> = parse_setting("binary-handling-mode", binary)?;
    match format.as_deref().map(str::trim) {
        None | Some("tidemark") => {
            if schemas {
                return Err(invalid(
                    "value-schema",
                    "--value-schema writes the Kafka Connect schemas Debezium declares, which describe only Debezium's value format (tidemark's embeds json values, which no Connect schema describes); add --value-format debezium, or leave out --value-schema",
                ));
            }
            if decimal.is_some() || time.is_some() || binary.is_some() {
                return Err(invalid(
                    "value-format",
                    "--decimal-handling-mode, --time-precision-mode and --binary-handling-mode apply only with --value-format debezium",
                ));
            }
            Ok(ValueFormat::Tidemark)
        }
        Some("debezium") => Ok(ValueFormat::Debezium(Modes {
            decimal: decimal.unwrap_or_default(),
            time: time.unwrap_or_default(),
            binary: binary.unwrap_or_default(),
            schemas,
        })),
        Some(other) => Err(invalid(
            "value-format",
            format!("{other:?} is not one of tidemark, debezium"),
        )),
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("postgres", &self.postgres)
            .field("kafka", &self.kafka)
            .field("tables", &self.tables)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("min_compaction_lag_ms", &self.min_compaction_lag_ms)
            .field("http", &self.http)
            .field(
                "kafka_properties",
                &shown_properties(
                    self.kafka_properties
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str())),
                ),
            )
            .field("topic_config", &self.topic_config)
            .field("oversized_records", &self.oversized_records)
            .field("exactly_once", &self.exactly_once)
            .field("transaction_interval", &self.transaction_interval)
            .field("transactional_id", &self.transactional_id)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("snapshot", &self.snapshot)
            .field("snapshot_rows_per_second", &self.snapshot_rows_per_second)
            .field("records", &self.records)
            .finish()
    }
}

/// For every `TIDEMARK_*` variable of a flag, reads the value from the file named by
/// the same variable with `_FILE` appended, when only that one is set (the Docker and
/// Kubernetes secrets convention); a trailing newline is dropped. Call it before any
/// other thread runs: it sets environment variables.
pub fn load_env_files() -> Result<(), BridgeError> {
    use clap::CommandFactory;
    for arg in Cli::command().get_arguments() {
        let Some(var) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        let file_var = format!("{var}_FILE");
        let Some(path) = std::env::var_os(&file_var) else {
            continue;
        };
        if std::env::var_os(var).is_some() {
            return Err(invalid(
                "environment",
                format!("both {var} and {file_var} are set; set one"),
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| {
            invalid(
                "environment",
                format!(
                    "{file_var}: cannot read {}: {e}",
                    PathBuf::from(&path).display()
                ),
            )
        })?;
        std::env::set_var(var, secret_file_value(&text));
    }
    Ok(())
}

/// A secret file's value: its text without the one trailing newline (`\n` or `\r\n`)
/// that editors and `echo` add.
fn secret_file_value(text: &str) -> &str {
    text.strip_suffix('\n')
        .unwrap_or(text)
        .trim_end_matches('\r')
}

/// Splits `key=value` settings of `field` into `into`.
fn key_values(
    field: &'static str,
    items: &[String],
    into: &mut BTreeMap<String, String>,
) -> Result<(), BridgeError> {
    for (i, kv) in items.iter().filter(|s| !s.trim().is_empty()).enumerate() {
        // Not shown: an item without `=` may be a secret that lost its key.
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| invalid(field, format!("item {} has no '='; write key=value", i + 1)))?;
        into.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(())
}

fn invalid(field: &'static str, problem: impl Into<String>) -> BridgeError {
    BridgeError::Config {
        field,
        problem: problem.into(),
    }
}

impl Config {
    /// Merges flags (and their environment variables) over the TOML file, then validates.
    pub fn from_cli(cli: Cli) -> Result<Self, BridgeError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid("config", format!("cannot read {}: {e}", path.display()))
                })?;
                // The error's own Display quotes the offending line, which may hold a
                // secret: only its message and position are shown.
                toml::from_str::<FileConfig>(&text).map_err(|e| {
                    let line = e.span().map_or(0, |s| {
                        text[..s.start.min(text.len())].lines().count().max(1)
                    });
                    invalid(
                        "config",
                        format!("{}, line {line}: {}", path.display(), e.message()),
                    )
                })?
            }
            None => FileConfig::default(),
        };
        let mut kafka_properties = file.kafka_properties;
        key_values(
            "kafka-property",
            &cli.kafka_properties,
            &mut kafka_properties,
        )?;
        let mut topic_config = file.topic_config;
        key_values("topic-config", &cli.topic_config, &mut topic_config)?;
        let tables = cli.tables.or(file.tables).unwrap_or_default();
        let heartbeat_interval = match (cli.heartbeat_interval, file.heartbeat_interval) {
            (Some(d), _) => Some(d),
            (None, Some(FileDuration::Millis(ms))) => Some(std::time::Duration::from_millis(ms)),
            (None, Some(FileDuration::Text(t))) => {
                Some(parse_duration(&t).map_err(|e| invalid("heartbeat-interval", e))?)
            }
            (None, None) => None,
        };
        let mut postgres = PgUrl::new(
            cli.postgres
                .or(file.postgres)
                .ok_or_else(|| invalid("postgres", "is required"))?,
        );
        if let Some(path) = cli.postgres_password_file.or(file.postgres_password_file) {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                invalid(
                    "postgres-password-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let password = secret_file_value(&text);
            if password.is_empty() {
                return Err(invalid(
                    "postgres-password-file",
                    format!("{} is empty", path.display()),
                ));
            }
            postgres = postgres.with_password(password);
        }
        let config = Config {
            postgres,
            kafka: cli
                .kafka
                .or(file.kafka)
                .unwrap_or_else(|| DEFAULT_KAFKA.into()),
            tables: tables
                .iter()
                .filter(|t| !t.trim().is_empty())
                .map(|t| {
                    TableName::parse(t)
                        .ok_or_else(|| invalid("tables", format!("{t:?} is not schema.table")))
                })
                .collect::<Result<_, _>>()?,
            slot: cli
                .slot
                .or(file.slot)
                .unwrap_or_else(|| DEFAULT_SLOT.into()),
            publication: cli
                .publication
                .or(file.publication)
                .unwrap_or_else(|| DEFAULT_PUBLICATION.into()),
            topic_prefix: cli
                .topic_prefix
                .or(file.topic_prefix)
                .unwrap_or_else(|| DEFAULT_TOPIC_PREFIX.into()),
            partitions: cli
                .partitions
                .or(file.partitions)
                .unwrap_or(DEFAULT_PARTITIONS),
            replication_factor: cli
                .replication_factor
                .or(file.replication_factor)
                .unwrap_or(DEFAULT_REPLICATION_FACTOR),
            min_compaction_lag_ms: cli
                .min_compaction_lag_ms
                .or(file.min_compaction_lag_ms)
                .unwrap_or(DEFAULT_MIN_COMPACTION_LAG_MS),
            http: cli.http.or(file.http),
            kafka_properties,
            topic_config,
            oversized_records: cli
                .oversized_records
                .or(file.oversized_records)
                .unwrap_or_default(),
            exactly_once: cli.exactly_once || file.exactly_once,
            transaction_interval: std::time::Duration::from_millis(
                cli.transaction_interval_ms
                    .or(file.transaction_interval_ms)
                    .unwrap_or(DEFAULT_TRANSACTION_INTERVAL_MS),
            ),
            transactional_id: String::new(),
            heartbeat_interval,
            snapshot: cli.snapshot.or(file.snapshot).unwrap_or_default(),
            snapshot_rows_per_second: cli
                .snapshot_rows_per_second
                .or(file.snapshot_rows_per_second)
                .unwrap_or(0),
            records: RecordSettings {
                truncate: cli.truncate.or(file.truncate).unwrap_or_default(),
                format: value_format(
                    cli.value_format.or(file.value_format),
                    cli.decimal_handling_mode.or(file.decimal_handling_mode),
                    cli.time_precision_mode.or(file.time_precision_mode),
                    cli.binary_handling_mode.or(file.binary_handling_mode),
                    cli.value_schema || file.value_schema.unwrap_or(false),
                )?,
                transaction_metadata: cli.provide_transaction_metadata
                    || file.provide_transaction_metadata,
            },
        };
        let mut config = config;
        config.transactional_id = cli
            .transactional_id
            .or(file.transactional_id)
            .unwrap_or_else(|| format!("tidemark.{}.{}", config.topic_prefix, config.slot));
        config.validate()?;
        Ok(config)
    }

    /// Checks each setting; the error names the field.
    pub fn validate(&self) -> Result<(), BridgeError> {
        let url = url::Url::parse(self.postgres.expose()).map_err(|e| {
            invalid(
                "postgres",
                format!("not a URL ({e}); use postgres://user:pass@host:port/db"),
            )
        })?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(invalid(
                "postgres",
                "the scheme must be postgres:// or postgresql://",
            ));
        }
        if self.tables.is_empty() {
            return Err(invalid(
                "tables",
                "name at least one table, e.g. --tables public.accounts",
            ));
        }
        let slot_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !slot_ok(&self.slot) {
            return Err(invalid(
                "slot",
                "use 1-63 lower-case letters, digits and underscores",
            ));
        }
        // The bridge names the publication in SQL and in START_REPLICATION as it is;
        // PostgreSQL folds an unquoted name to lower case, so only names that survive
        // that unchanged are safe in both.
        if !slot_ok(&self.publication) {
            return Err(invalid(
                "publication",
                "use 1-63 lower-case letters, digits and underscores",
            ));
        }
        if self.partitions < 1 {
            return Err(invalid("partitions", "must be at least 1"));
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            return Err(invalid(
                "replication-factor",
                "must be at least 1, or -1 for the broker's default",
            ));
        }
        let mut topics: BTreeMap<String, &TableName> = BTreeMap::new();
        for table in &self.tables {
            let topic = table.topic(&self.topic_prefix);
            if topic.len() > 249 {
                return Err(invalid(
                    "tables",
                    format!("the topic of {table}, {topic}, is longer than Kafka's 249 characters; shorten --topic-prefix"),
                ));
            }
            if let Some(other) = topics.insert(topic.clone(), table) {
                return Err(invalid(
                    "tables",
                    format!("{other} and {table} both map to topic {topic} (characters Kafka does not allow become _); follow one of them"),
                ));
            }
        }
        for typed in TYPED_TOPIC_CONFIGS {
            if self.topic_config.contains_key(*typed) {
                return Err(invalid(
                    "topic-config",
                    format!("{typed} is set by the bridge itself and cannot be overridden"),
                ));
            }
        }
        if self.heartbeat_interval.is_some_and(|d| d.is_zero()) {
            return Err(invalid(
                "heartbeat-interval",
                "must be longer than 0; leave it out for no heartbeats",
            ));
        }
        if self.exactly_once && self.transactional_id.trim().is_empty() {
            return Err(invalid("transactional-id", "must not be empty"));
        }
        if self.kafka.trim().is_empty() {
            return Err(invalid("kafka", "must not be empty"));
        }
        for typed in TYPED_PRODUCER_PROPERTIES {
            if self.kafka_properties.contains_key(*typed) {
                return Err(invalid(
                    "kafka-property",
                    format!("{typed} is set by the bridge itself and cannot be overridden"),
                ));
            }
        }
        Ok(())
    }
}

/// The settings reference in Markdown, generated from the flags' definitions: one
/// row per setting with its flag, environment variable, TOML key and default.
/// `docs/configuration.md` embeds it, and a test keeps the two in step.
pub fn reference_table() -> String {
    use clap::CommandFactory;
    let mut out = String::from(
        "| flag | environment | TOML key | default | meaning |\n|---|---|---|---|---|\n",
    );
    for arg in Cli::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let (meaning, default) = match help.rsplit_once(" [default: ") {
            Some((m, d)) => (m.to_owned(), d.trim_end_matches(']').to_owned()),
            None if long == "postgres" || long == "tables" => (help.clone(), "required".to_owned()),
            None => (help.clone(), "none".to_owned()),
        };
        let toml_key = match long {
            "config" => "-".to_owned(),
            "kafka-property" => "`[kafka_properties]` table".to_owned(),
            "topic-config" => "`[topic_config]` table".to_owned(),
            other => format!("`{}`", other.replace('-', "_")),
        };
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        out += &format!(
            "| `--{long}` | {env} | {toml_key} | {default} | {} |\n",
            meaning
                .replace('|', "\\|")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/configuration.md embeds [`reference_table`]; run with
    /// `TIDEMARK_WRITE_DOCS=1` to rewrite it after changing a flag.
    #[test]
    fn configuration_reference_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");
        let doc = std::fs::read_to_string(path).expect("docs/configuration.md");
        let (begin, end) = ("<!-- settings:begin -->\n", "<!-- settings:end -->");
        let (head, rest) = doc.split_once(begin).expect("begin marker");
        let (_, tail) = rest.split_once(end).expect("end marker");
        let fresh = format!("{head}{begin}{}{end}{tail}", reference_table());
        if std::env::var_os("TIDEMARK_WRITE_DOCS").is_some() {
            std::fs::write(path, &fresh).expect("write docs/configuration.md");
        }
        let table = reference_table();
        for (flag, default) in [
            ("kafka", DEFAULT_KAFKA.to_string()),
            ("slot", DEFAULT_SLOT.to_string()),
            ("publication", DEFAULT_PUBLICATION.to_string()),
            ("topic-prefix", DEFAULT_TOPIC_PREFIX.to_string()),
            ("partitions", DEFAULT_PARTITIONS.to_string()),
            ("replication-factor", DEFAULT_REPLICATION_FACTOR.to_string()),
        ] {
            let row = table
                .lines()
                .find(|l| l.starts_with(&format!("| `--{flag}` ")))
                .expect("row");
            assert!(
                row.contains(&format!("| {default} |")),
                "--{flag}'s help names a default other than {default}"
            );
        }
        assert!(
            doc == fresh,
            "docs/configuration.md is out of date; regenerate with TIDEMARK_WRITE_DOCS=1 cargo test -p tidemark-bridge configuration_reference"
        );
    }

    #[test]
    fn durations_take_units_or_milliseconds() {
        use std::time::Duration;
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn exactly_once_derives_its_transactional_id_and_refuses_one_as_a_property() {
        let c = Config::from_cli(cli(&[
            "--postgres",
            "postgres://h/db",
            "--tables",
            "a.b",
            "--slot",
            "s1",
            "--exactly-once",
        ]))
        .expect("valid");
        assert!(c.exactly_once);
        assert_eq!(c.transactional_id, "tidemark.tidemark.s1");
        assert_eq!(
            c.transaction_interval,
            std::time::Duration::from_millis(100)
        );
        let e = Config::from_cli(cli(&[
            "--postgres",
            "postgres://h/db",
            "--tables",
            "a.b",
            "--kafka-property",
            "transactional.id=x",
        ]))
        .expect_err("typed");
        assert!(e.to_string().contains("transactional.id"), "{e}");
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("tidemark-bridge").chain(args.iter().copied()))
    }

    #[test]
    fn flags_override_file_and_defaults_apply() {
        let dir = std::env::temp_dir().join(format!("tidemark-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bridge.toml");
        std::fs::write(&path, "postgres = \"postgres://u:pw@h/db\"\ntables = [\"a.b\"]\nslot = \"from_file\"\n[kafka_properties]\n\"linger.ms\" = \"7\"\n").unwrap();
        let c = Config::from_cli(cli(&[
            "--config",
            path.to_str().unwrap(),
            "--slot",
            "from_flag",
        ]))
        .unwrap();
        assert_eq!(c.slot, "from_flag");
        assert_eq!(c.tables, vec![TableName::parse("a.b").unwrap()]);
        assert_eq!(c.topic_prefix, DEFAULT_TOPIC_PREFIX);
        assert_eq!(c.kafka_properties["linger.ms"], "7");
        std::fs::write(&path, "postgress = \"postgres://u:s3cret@h/db\"\n").unwrap();
        let err = Config::from_cli(cli(&["--config", path.to_str().unwrap()])).unwrap_err();
        assert!(err.to_string().contains("postgress"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let err = Config::from_cli(cli(&["--postgres", "postgres://h/db"])).unwrap_err();
        assert!(err.to_string().contains("tables"), "{err}");
        let err = Config::from_cli(cli(&[
            "--postgres",
            "postgres://h/db",
            "--tables",
            "t",
            "--slot",
            "Bad-Slot",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("slot"), "{err}");
        let err = Config::from_cli(cli(&[
            "--postgres",
            "postgres://h/db",
            "--tables",
            "t",
            "--kafka-property",
            "acks=1",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("acks"), "{err}");
    }

    #[test]
    fn value_format_and_debeziums_modes() {
        let base = ["--postgres", "postgres://h/db", "--tables", "t"];
        let with = |extra: &[&str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            Config::from_cli(cli(&args))
        };
        let c = with(&[]).unwrap();
        assert_eq!(c.records.format, ValueFormat::Tidemark);
        assert_eq!(c.records.truncate, TruncateMode::PerPartition);
        let c = with(&[
            "--value-format",
            "debezium",
            "--time-precision-mode",
            "connect",
            "--truncate",
            "skip",
        ])
        .unwrap();
        assert_eq!(
            c.records.format,
            ValueFormat::Debezium(Modes {
                time: TimePrecisionMode::Connect,
                schemas: false,
                ..Modes::default()
            })
        );
        assert_eq!(c.records.truncate, TruncateMode::Skip);
        let err = with(&["--decimal-handling-mode", "string"]).unwrap_err();
        assert!(err.to_string().contains("--value-format debezium"), "{err}");
        let err = with(&["--value-format", "avro"]).unwrap_err();
        assert!(err.to_string().contains("tidemark, debezium"), "{err}");
        let err = with(&[
            "--value-format",
            "debezium",
            "--binary-handling-mode",
            "raw",
        ])
        .unwrap_err();
        assert!(err.to_string().contains("base64-url-safe"), "{err}");
        assert!(!with(&["--value-format", "debezium"])
            .unwrap()
            .records
            .format
            .schemas());
        let c = with(&["--value-format", "debezium", "--value-schema"]).unwrap();
        assert!(c.records.format.schemas());
        let err = with(&["--value-schema"]).unwrap_err();
        assert!(err.to_string().contains("--value-format debezium"), "{err}");
    }

    #[test]
    fn password_never_shows() {
        let url = PgUrl::new("postgres://app:s3cret@db:5432/app");
        assert!(!format!("{url} {url:?}").contains("s3cret"));
        assert!(format!("{url}").contains("app:***@db"));
        let c = Config::from_cli(cli(&[
            "--postgres",
            "postgres://app@db/app?password=s3cret&sslmode=disable",
            "--tables",
            "t",
            "--kafka-property",
            "sasl.password=k4fka",
            "--kafka-property",
            "sasl.username=me",
        ]))
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("k4fka"),
            "{shown}"
        );
        assert!(
            shown.contains("sasl.username") && shown.contains("me"),
            "{shown}"
        );
        // A key-less item is refused without being repeated.
        let err = Config::from_cli(cli(&[
            "--postgres",
            "postgres://h/db",
            "--tables",
            "t",
            "--kafka-property",
            "hunter2",
        ]))
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn the_password_file_supplies_the_password() {
        let dir = std::env::temp_dir().join(format!("tidemark-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pw");
        std::fs::write(&path, "from-file\n").unwrap();
        let c = Config::from_cli(cli(&[
            "--postgres",
            "postgres://app@db/app",
            "--tables",
            "t",
            "--postgres-password-file",
            path.to_str().unwrap(),
        ]))
        .unwrap();
        let options = c.postgres.options().unwrap();
        assert_eq!(options.config().get_password(), Some(&b"from-file"[..]));
        assert!(!format!("{c:?}").contains("from-file"));
        let err = Config::from_cli(cli(&[
            "--postgres",
            "postgres://app@db/app",
            "--tables",
            "t",
            "--postgres-password-file",
            "/nonexistent/pw",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("postgres-password-file"), "{err}");
    }

    #[test]
    fn names_kafka_and_postgres_would_read_otherwise_are_refused() {
        let base = ["--postgres", "postgres://h/db", "--tables"];
        let with = |extra: &[&str]| {
            let mut args: Vec<&str> = base.to_vec();
            args.extend_from_slice(extra);
            Config::from_cli(cli(&args))
        };
        let err = with(&["t", "--publication", "MyPub"]).unwrap_err();
        assert!(err.to_string().contains("publication"), "{err}");
        let err = with(&["public.a b,public.a_b"]).unwrap_err();
        assert!(err.to_string().contains("both map to topic"), "{err}");
        let err = with(&["t", "--topic-config", "cleanup.policy=delete"]).unwrap_err();
        assert!(err.to_string().contains("cleanup.policy"), "{err}");
        let c = with(&["t", "--topic-config", "min.insync.replicas=2"]).unwrap();
        assert_eq!(c.topic_config["min.insync.replicas"], "2");
        assert_eq!(c.replication_factor, -1);
        assert_eq!(
            TableName::parse("public.Order Lines").unwrap().topic("app"),
            "app.public.Order_Lines"
        );
    }
}
