//! Checkpoints: a ready cache's rows and follower state, so that a restart, or a new
//! instance, continues from them instead of copying the table again.
//!
//! A checkpoint is taken by the follower between two records (it pauses while the
//! file is written; readers do not), so the rows, the next offset of every partition,
//! the de-duplication positions and the snapshot filters all describe the same
//! instant. With them the follower continues exactly as the one that took it would
//! have: the checkpoint is the state after a prefix of every partition, and the
//! follower's rules need nothing else (`follow`).
//!
//! At the first warm start, the cache tries the checkpoints it can see, newest first:
//! those in [`Builder::checkpoint_dir`](crate::Builder::checkpoint_dir), then the one
//! at [`Builder::checkpoint_from`](crate::Builder::checkpoint_from) (a directory many
//! instances share, or an HTTP(S) URL: a peer's [`serve`] or an object store). One is
//! used only when
//! - its checksum matches and its format version is this version's ([`format`]);
//! - it is of this table and topic, the topic still has its partition count, and the
//!   table has the same columns (names and types) and primary key, read from the
//!   catalog without reading the table;
//! - every partition's offset is still on the broker (between the low and the high
//!   watermark): otherwise retention removed changes the checkpoint lacks;
//! - on a compacted topic, the records after each partition's offset are younger
//!   than the topic's `min.compaction.lag.ms` (less a margin), so compaction cannot
//!   have removed any of them;
//! - every row deserialises into the cache's key and value types, and rows that lack
//!   columns are read only by a value type with no other field.
//!
//! Anything else is a refusal: logged with its reason, counted
//! (`tidemark_client_checkpoint_refusals_total{reason}`), reported in
//! [`Stats::started_from`](crate::Stats::started_from), and the cache warm-starts
//! from PostgreSQL as it does without checkpoints. Rows of a checkpoint refused while
//! being read are removed by that warm start's sweep (checkpoint rows carry
//! generation 0, warm starts count from 1). A slot marker beyond the checkpoint's
//! `start_lsn` still makes the follower warm-start again, as for a load.
//!
//! Later warm starts (offsets lost, partitions added, the bridge's slot recreated)
//! always read PostgreSQL: the checkpoint would be refused for the same reason.

pub(crate) mod format;
mod http;
pub(crate) mod store;

pub use http::{router, serve, CheckpointServer};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer as _;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::apply::{typed_key, Applier};
use crate::config::{CheckpointSettings as Settings, CheckpointSource as Source};
use crate::error::Result;
use crate::seek::{blocking, Consumer};
use crate::state::{Origin, Shared};
use crate::table::TableInfo;
use tidemark_core::wire::Row;

/// How many checkpoints of a topic a cache keeps in its directory.
pub const KEEP: usize = 2;

/// The default time between two checkpoints of a cache with a checkpoint directory.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// How far within the topic's compaction lag a checkpoint must be: records written
/// around the time it was taken may carry a slightly earlier timestamp.
const COMPACTION_MARGIN_MS: i64 = 5 * 60 * 1000;

/// How long fetching a checkpoint over HTTP may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// How a cache turns its keys and values back into the wire format's JSON.
pub(crate) struct Encoders<K, V> {
    pub key: fn(&K) -> serde_json::Result<serde_json::Value>,
    pub value: fn(&V) -> serde_json::Result<String>,
}

impl<K, V> Clone for Encoders<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Encoders<K, V> {}

impl<K: serde::Serialize, V: serde::Serialize> Encoders<K, V> {
    pub fn new() -> Self {
        Encoders {
            key: |k| serde_json::to_value(k),
            value: |v| serde_json::to_string(v),
        }
    }
}

/// Why a checkpoint was not used; the kind is the metric's `reason` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No checkpoint at the location.
    Missing(String),
    /// Unreadable or damaged (checksum, truncation, unparsable frames).
    Damaged(String),
    /// Another format version, table, topic, shape or partition count, or rows that
    /// do not fit the cache's types.
    Incompatible(String),
    /// An offset no longer on the broker.
    TooOld(String),
    /// The location could not be reached.
    Unreachable(String),
}

impl Refusal {
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Missing(_) => "missing",
            Refusal::Damaged(_) => "damaged",
            Refusal::Incompatible(_) => "incompatible",
            Refusal::TooOld(_) => "too_old",
            Refusal::Unreachable(_) => "unreachable",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing(m)
            | Refusal::Damaged(m)
            | Refusal::Incompatible(m)
            | Refusal::TooOld(m)
            | Refusal::Unreachable(m) => f.write_str(m),
        }
    }
}

/// The shape a checkpoint records for `table`.
pub(crate) fn shape_of(table: &TableInfo) -> format::Shape {
    format::Shape {
        columns: table
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.sql_type.clone()))
            .collect(),
        key: table
            .key
            .iter()
            .map(|&i| table.columns[i].name.clone())
            .collect(),
    }
}

/// What a checkpoint is checked against, and the map it is loaded into.
pub(crate) struct Target<'a, K, V> {
    pub table: &'a TableInfo,
    pub topic: &'a str,
    /// [`ValueFormat::describe`](tidemark_core::wire::ValueFormat::describe) of the
    /// cache's value format.
    pub value_format: &'a str,
    pub consumer: &'a Arc<Consumer>,
    pub partitions: i32,
    /// Puts rows in the map; its generation must be 0.
    pub applier: &'a Applier<K, V>,
    /// Present when the value type serialises (it always does when checkpoints are
    /// configured through the builder).
    pub encoders: Option<Encoders<K, V>>,
    /// The topic's `min.compaction.lag.ms` when it is compacted.
    pub compaction_lag_ms: Option<i64>,
}

impl<K, V> Clone for Target<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Target<'_, K, V> {}

/// A checkpoint that was loaded into the map.
pub(crate) struct Restored {
    pub header: format::Header,
    pub rows: u64,
    /// The file or URL it came from.
    pub location: String,
    /// Each partition's high watermark when its offsets were checked.
    pub highs: Vec<i64>,
    /// Whether it came from the cache's own directory (then it need not be written
    /// again until something changes).
    pub local: bool,
}

/// Tries the checkpoints the settings name, newest first, and loads the first usable
/// one into the map through `applier` (whose generation must be 0). `Ok(Err)` lists
/// why none was used; `Err` is a Kafka failure the warm start reports as usual.
pub(crate) async fn restore<K, V>(
    settings: &Settings,
    target: &Target<'_, K, V>,
) -> Result<std::result::Result<Restored, Vec<Refusal>>>
where
    K: DeserializeOwned + std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: DeserializeOwned + Send + Sync + 'static,
{
    let topic = target.topic;
    let mut refusals = Vec::new();
    let mut candidates: Vec<(String, PathBuf, bool)> = Vec::new();
    let mut list = |dir: &Path, local: bool, refusals: &mut Vec<Refusal>| match store::newest_first(
        dir, topic,
    ) {
        Ok(found) if found.is_empty() => refusals.push(Refusal::Missing(format!(
            "{} holds no checkpoint of {topic}",
            dir.display()
        ))),
        Ok(found) => candidates.extend(
            found
                .into_iter()
                .take(KEEP)
                .map(|p| (p.display().to_string(), p, local)),
        ),
        Err(e) => refusals.push(Refusal::Unreachable(format!(
            "cannot list {}: {e}",
            dir.display()
        ))),
    };
    if let Some(dir) = &settings.dir {
        list(dir, true, &mut refusals);
    }
    match &settings.from {
        Some(Source::Dir(dir)) => list(dir, false, &mut refusals),
        Some(Source::Url(_)) | None => {}
    }
    for (location, path, local) in candidates {
        match try_one(&path, &location, target).await? {
            Ok((header, rows, highs)) => {
                return Ok(Ok(Restored {
                    header,
                    rows,
                    highs,
                    location,
                    local,
                }))
            }
            Err(r) => refusals.push(r),
        }
    }
    if let Some(Source::Url(url)) = &settings.from {
        let shown = tidemark_core::secrets::redact_url(url);
        let into = settings.dir.clone().unwrap_or_else(std::env::temp_dir);
        match http::download(url, &into, DOWNLOAD_TIMEOUT).await {
            Err(e) if e.contains("no checkpoint") => refusals.push(Refusal::Missing(e)),
            Err(e) => refusals.push(Refusal::Unreachable(e)),
            Ok(path) => {
                let tried = try_one(&path, &shown, target).await;
                let _ = std::fs::remove_file(&path);
                match tried? {
                    Ok((header, rows, highs)) => {
                        return Ok(Ok(Restored {
                            header,
                            rows,
                            highs,
                            location: shown,
                            local: false,
                        }))
                    }
                    Err(r) => refusals.push(r),
                }
            }
        }
    }
    Ok(Err(refusals))
}

/// Checks one checkpoint file and, if it is usable, loads its rows.
async fn try_one<K, V>(
    path: &Path,
    location: &str,
    target: &Target<'_, K, V>,
) -> Result<std::result::Result<(format::Header, u64, Vec<i64>), Refusal>>
where
    K: DeserializeOwned + std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    V: DeserializeOwned + Send + Sync + 'static,
{
    let Target {
        table,
        topic,
        value_format,
        consumer,
        partitions,
        applier,
        encoders,
        compaction_lag_ms,
    } = *target;
    let checking = std::time::Instant::now();
    let file = path.to_owned();
    let verified = tokio::task::spawn_blocking(move || format::verify(&file))
        .await
        .unwrap_or_else(|e| Err(format::ReadError::Row(format!("the check panicked: {e}"))));
    let (header, rows_at, file) = match verified {
        Ok(v) => v,
        Err(e @ format::ReadError::Version { .. }) => {
            return Ok(Err(Refusal::Incompatible(format!("{location}: {e}"))))
        }
        Err(e) => return Ok(Err(Refusal::Damaged(format!("{location}: {e}")))),
    };
    if let Some(problem) = mismatch(&header, table, topic, value_format, partitions) {
        return Ok(Err(Refusal::Incompatible(format!("{location}: {problem}"))));
    }
    if let Some(problem) = header.partitions.iter().find_map(|p| {
        let f = p.filter.as_ref()?;
        tidemark_core::pg::snapshot::Snapshot::parse(&f.snapshot).err()
    }) {
        return Ok(Err(Refusal::Damaged(format!("{location}: {problem}"))));
    }
    // Every offset must still be on the broker, and not beyond its end.
    let t = topic.to_owned();
    let watermarks = blocking(consumer, move |c| {
        (0..partitions)
            .map(|p| {
                c.fetch_watermarks(&t, p, Duration::from_secs(10))
                    .map_err(crate::error::Error::kafka("reading the watermarks"))
            })
            .collect::<Result<Vec<_>>>()
    })
    .await?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    for (state, (low, high)) in header.partitions.iter().zip(&watermarks) {
        if state.next_offset < *low {
            return Ok(Err(Refusal::TooOld(format!(
                "{location}: partition {} continues at offset {}, but the broker keeps offsets from {low} on (retention removed changes the checkpoint lacks)",
                state.partition, state.next_offset
            ))));
        }
        // Compaction leaves records alone for min.compaction.lag.ms after their
        // timestamp. Records after the checkpoint's offset that are older than that may
        // be gone (an update whose unchanged TOAST value the checkpoint lacks, a delete
        // whose tombstone went too): the cache would not see them.
        let too_old = compaction_lag_ms.is_some_and(|lag| {
            state.next_offset < *high && state.seen_until_ms < now_ms - lag + COMPACTION_MARGIN_MS
        });
        if too_old {
            return Ok(Err(Refusal::TooOld(format!(
                "{location}: partition {} continues at offset {}, and the records after it are older than the topic's min.compaction.lag.ms ({} ms), so compaction may have removed some the checkpoint lacks; take checkpoints more often than that, or raise it",
                state.partition,
                state.next_offset,
                compaction_lag_ms.unwrap_or_default()
            ))));
        }
        if state.next_offset > *high {
            return Ok(Err(Refusal::Incompatible(format!(
                "{location}: partition {} continues at offset {}, beyond the topic's end {high} (was the topic recreated?)",
                state.partition, state.next_offset
            ))));
        }
    }
    tracing::debug!(
        checkpoint = location,
        seconds = checking.elapsed().as_secs_f64(),
        "checkpoint checked"
    );
    let reading = std::time::Instant::now();
    let loader = applier.clone();
    let read = tokio::task::spawn_blocking(move || load_rows(file, rows_at, &loader))
        .await
        .unwrap_or_else(|e| Err(format::ReadError::Row(format!("the load panicked: {e}"))));
    tracing::debug!(
        checkpoint = location,
        seconds = reading.elapsed().as_secs_f64(),
        "checkpoint rows read"
    );
    let unfit = match &read {
        Ok(_) => unread_fields(&header, table, applier, encoders),
        Err(_) => None,
    };
    if read.is_err() || unfit.is_some() {
        // Take out what this checkpoint put in before the next one is tried.
        applier.remove_generation(0);
    }
    if let Some(problem) = unfit {
        return Ok(Err(Refusal::Incompatible(format!("{location}: {problem}"))));
    }
    match read {
        Ok(rows) => Ok(Ok((header, rows, watermarks.iter().map(|w| w.1).collect()))),
        Err(e @ format::ReadError::Row(_)) => {
            Ok(Err(Refusal::Incompatible(format!("{location}: {e}"))))
        }
        Err(e) => Ok(Err(Refusal::Damaged(format!("{location}: {e}")))),
    }
}

/// Reads the rows of a verified checkpoint into the map through `applier`, on one
/// thread per core.
fn load_rows<K, V>(
    file: std::fs::File,
    rows_at: u64,
    applier: &Applier<K, V>,
) -> Result<u64, format::ReadError>
where
    K: DeserializeOwned + std::hash::Hash + Eq + Clone,
    V: DeserializeOwned,
    Applier<K, V>: Sync,
{
    // One per core, up to 8: beyond that the map's shard locks and the page faults of
    // the new rows, not the decoding, bound the load.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    // 0: not known yet, 1: keys parse as K directly, 2: through the key object.
    let key_mode = AtomicU8::new(0);
    format::read_rows(file, rows_at, threads, |row| {
        let key = parse_key::<K>(row.key, &key_mode)?;
        let value: V = serde_json::from_str(row.value)
            .map_err(|e| format!("a row does not fit the value type: {e}"))?;
        applier.put(
            key,
            value,
            row.partition,
            row.toast.map(Box::from),
            None,
            Origin::Checkpoint,
        );
        Ok(())
    })
}

/// The sorted top-level field names of a JSON object's text (none for other JSON).
fn fields_of(json: &str) -> Vec<String> {
    let mut fields: Vec<String> = serde_json::from_str::<Row>(json)
        .map(|row| row.keys().cloned().collect())
        .unwrap_or_default();
    fields.sort();
    fields
}

/// Why rows that lack columns cannot serve this value type: the fields it has (as it
/// serialises one of the loaded rows) that the checkpoint's values do not.
fn unread_fields<K, V>(
    header: &format::Header,
    table: &TableInfo,
    applier: &Applier<K, V>,
    encoders: Option<Encoders<K, V>>,
) -> Option<String>
where
    K: std::hash::Hash + Eq,
{
    let complete = table
        .columns
        .iter()
        .all(|c| header.value_fields.binary_search(&c.name).is_ok());
    if complete {
        return None;
    }
    let Some(encoders) = encoders else {
        return Some("its rows lack columns, and this cache cannot serialise its value type to tell whether it reads them".into());
    };
    let entry = applier.shared.map.iter().find(|e| e.generation == 0)?;
    let ours = match (encoders.value)(&entry.value) {
        Ok(text) => fields_of(&text),
        Err(e) => return Some(format!("cannot serialise a loaded value: {e}")),
    };
    let missing: Vec<&str> = ours
        .iter()
        .filter(|f| header.value_fields.binary_search(f).is_err())
        .map(String::as_str)
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "its rows hold only the fields {} (its writer's value type), and this value type also reads {}",
            header.value_fields.join(", "),
            missing.join(", ")
        )
    })
}

/// Parses a key, remembering which of the two ways worked (every key of a table has
/// the same shape).
fn parse_key<K: DeserializeOwned>(text: &str, mode: &AtomicU8) -> std::result::Result<K, String> {
    let error = |e: serde_json::Error| format!("a key does not fit the key type: {e}");
    if mode.load(Ordering::Relaxed) != 2 {
        match serde_json::from_str::<K>(text) {
            Ok(k) => {
                mode.store(1, Ordering::Relaxed);
                return Ok(k);
            }
            Err(e) if mode.load(Ordering::Relaxed) == 1 => return Err(error(e)),
            Err(_) => {}
        }
    }
    let object: Row = serde_json::from_str(text).map_err(error)?;
    let key = typed_key::<K>(&object).map_err(error)?;
    mode.store(2, Ordering::Relaxed);
    Ok(key)
}

/// What makes a checkpoint's header unusable for this cache, if anything.
fn mismatch(
    header: &format::Header,
    table: &TableInfo,
    topic: &str,
    value_format: &str,
    partitions: i32,
) -> Option<String> {
    if header.table != table.name.to_string() || header.topic != topic {
        return Some(format!(
            "it is of table {} on topic {}, not {} on {topic}",
            header.table, header.topic, table.name
        ));
    }
    if header.value_format != value_format {
        return Some(format!(
            "its rows hold values in the value format {}; the cache reads {value_format}",
            header.value_format
        ));
    }
    let ordered = header
        .partitions
        .iter()
        .enumerate()
        .all(|(i, p)| p.partition == i as i32);
    if header.partitions.len() != partitions as usize || !ordered {
        return Some(format!(
            "it was taken when the topic had {} partitions; it has {partitions} now",
            header.partitions.len()
        ));
    }
    let shape = shape_of(table);
    if header.shape != shape {
        let show = |s: &format::Shape| {
            let cols: Vec<String> = s.columns.iter().map(|(n, t)| format!("{n} {t}")).collect();
            format!("({}) key ({})", cols.join(", "), s.key.join(", "))
        };
        return Some(format!(
            "it was taken of another table shape: {} then, {} now",
            show(&header.shape),
            show(&shape)
        ));
    }
    None
}

/// Writes a checkpoint of the map into `dir` and prunes older ones; runs on a
/// blocking thread while the follower waits, so the map does not change meanwhile.
/// Returns the file and its row count.
pub(crate) fn take<K: std::hash::Hash + Eq, V>(
    shared: &Shared<K, V>,
    encoders: Encoders<K, V>,
    dir: &Path,
    header: &format::Header,
) -> std::io::Result<(PathBuf, u64)> {
    let name = store::file_name(&header.topic, header.taken_ms, &header.instance);
    let single_key = match header.shape.key.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    let bad = |what: &str, e: serde_json::Error| {
        std::io::Error::other(format!("cannot encode a {what} as JSON: {e}"))
    };
    // The fields the values hold, from one of them (all come from the same type).
    let mut header = header.clone();
    if let Some(entry) = shared.map.iter().next() {
        let value = (encoders.value)(&entry.value).map_err(|e| bad("value", e))?;
        header.value_fields = fields_of(&value);
    }
    let header = &header;
    let written = store::write_atomically(dir, &name, |out| {
        let mut w = format::Writer::new(out, header)?;
        for entry in shared.map.iter() {
            let key = match (encoders.key)(entry.key()).map_err(|e| bad("key", e))? {
                serde_json::Value::Object(o) => serde_json::Value::Object(o),
                bare => match &single_key {
                    Some(col) => serde_json::json!({ col: bare }),
                    None => {
                        return Err(std::io::Error::other(
                            "the key type does not serialise as an object of the key columns",
                        ))
                    }
                },
            };
            let key = key.to_string();
            let value = (encoders.value)(&entry.value).map_err(|e| bad("value", e))?;
            w.row(format::RowRef {
                partition: entry.partition,
                key: &key,
                value: &value,
                toast: entry.toast(),
            })?;
        }
        w.finish()
    })?;
    match store::prune(dir, &header.topic, KEEP) {
        Ok(n) if n > 0 => info!(dir = %dir.display(), removed = n, "older checkpoints removed"),
        Ok(_) => {}
        Err(e) => warn!(dir = %dir.display(), error = %e, "cannot remove older checkpoints"),
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::sample;

    fn header_of(table: &TableInfo, partitions: i32) -> format::Header {
        format::Header {
            table: table.name.to_string(),
            topic: "tidemark.public.t".into(),
            shape: shape_of(table),
            partitions: (0..partitions)
                .map(|p| format::PartitionState {
                    partition: p,
                    next_offset: 0,
                    last: None,
                    filter: None,
                    seen_until_ms: 0,
                })
                .collect(),
            start_lsn: 0,
            slot_marker: None,
            taken_ms: 0,
            instance: "i".into(),
            value_fields: Vec::new(),
            value_format: "tidemark".into(),
        }
    }

    #[test]
    fn a_checkpoint_of_another_table_shape_or_partition_count_is_refused() {
        let table = sample();
        let h = header_of(&table, 3);
        let topic = "tidemark.public.t";
        assert_eq!(mismatch(&h, &table, topic, "tidemark", 3), None);
        let why = mismatch(&h, &table, topic, "tidemark", 4).unwrap();
        assert!(why.contains("3 partitions; it has 4"), "{why}");
        assert!(mismatch(&h, &table, "other", "tidemark", 3)
            .unwrap()
            .contains("not public.t on other"));
        let mut changed = table.clone();
        changed.columns[1].sql_type = "character varying(10)".into();
        let why = mismatch(&h, &changed, topic, "tidemark", 3).unwrap();
        assert!(
            why.contains("name text") && why.contains("name character varying(10)"),
            "{why}"
        );
        let mut rekeyed = table.clone();
        rekeyed.key = vec![0, 1];
        assert!(mismatch(&h, &rekeyed, topic, "tidemark", 3).is_some());
        let debezium = tidemark_core::wire::ValueFormat::Debezium(Default::default()).describe();
        let why = mismatch(&h, &table, topic, &debezium, 3).unwrap();
        assert!(
            why.contains("value format tidemark; the cache reads debezium"),
            "{why}"
        );
        // A checkpoint from before the format was recorded is of the default format.
        let mut json = serde_json::to_value(&h).unwrap();
        json.as_object_mut().unwrap().remove("value_format");
        let old: format::Header = serde_json::from_value(json).unwrap();
        assert_eq!(mismatch(&old, &table, topic, "tidemark", 3), None);
        assert!(mismatch(&old, &table, topic, &debezium, 3).is_some());
    }

    #[test]
    fn keys_parse_whole_or_through_the_single_column() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        struct Id {
            id: i64,
        }
        let mode = AtomicU8::new(0);
        assert_eq!(parse_key::<i64>(r#"{"id":7}"#, &mode), Ok(7));
        assert_eq!(parse_key::<i64>(r#"{"id":8}"#, &mode), Ok(8));
        assert!(parse_key::<i64>(r#"{"id":"x"}"#, &mode).is_err());
        let mode = AtomicU8::new(0);
        assert_eq!(parse_key::<Id>(r#"{"id":7}"#, &mode), Ok(Id { id: 7 }));
        assert!(parse_key::<Id>(r#"{"other":7}"#, &mode).is_err());
    }

    #[test]
    fn locations_and_refusal_kinds() {
        assert_eq!(
            Source::parse("https://peer:9300/checkpoints/t"),
            Source::Url("https://peer:9300/checkpoints/t".into())
        );
        assert_eq!(
            Source::parse("/shared/ckpt"),
            Source::Dir("/shared/ckpt".into())
        );
        assert_eq!(Refusal::TooOld("x".into()).kind(), "too_old");
        assert_eq!(Refusal::Damaged("why".into()).to_string(), "why");
    }
}
