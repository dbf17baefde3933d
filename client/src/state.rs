//! The state the cache handle and its background task share: the map and its
//! entries, the change channel, the counters, the positions and the status.

use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::error::Error;
use crate::telemetry::Counts;
use crate::ts::Ts;

/// Where an applied change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The row was read by a warm start's bulk load from PostgreSQL.
    BulkLoad,
    /// The change was read from the Kafka topic (or, for the watermark strategy, from
    /// the re-query after the load).
    Stream,
    /// Like [`Origin::Stream`], but the row's owner column holds this instance's
    /// [`Cache::instance_id`](crate::Cache::instance_id): the application's own write coming back.
    OwnWrite,
    /// The row was read from a checkpoint (or, on a delete, a checkpoint refused
    /// while it was being read took it out again).
    Checkpoint,
    /// The key was removed because its new row does not fit the cache's value type
    /// (a column changed type, say); the cache is degraded
    /// ([`Stats::degraded`](crate::Stats::degraded)).
    Unfit,
}

/// One change, delivered to subscribers after it was applied to the map.
#[derive(Debug)]
pub struct Change<K, V> {
    /// The key that changed.
    pub key: K,
    /// The new value; `None` when the key was removed (delete or truncate).
    pub value: Option<Arc<V>>,
    /// Where the change came from.
    pub origin: Origin,
    /// The Kafka partition that owns the key.
    pub partition: i32,
}

impl<K: Clone, V> Clone for Change<K, V> {
    fn clone(&self) -> Self {
        Change {
            key: self.key.clone(),
            value: self.value.clone(),
            origin: self.origin,
            partition: self.partition,
        }
    }
}

/// Where the rows of the latest warm start came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartedFrom {
    /// A checkpoint, read from `location` (a file or a URL, password hidden), taken
    /// at `taken_ms` (milliseconds since the epoch).
    Checkpoint {
        /// The file or URL.
        location: String,
        /// When the checkpoint was taken.
        taken_ms: i64,
    },
    /// A bulk load from PostgreSQL. When checkpoints are configured, `refused` says
    /// why none was used.
    Postgres {
        /// Why no checkpoint was used (each one tried, `; `-separated).
        refused: Option<String>,
    },
}

/// One cached row: 24 bytes beside its key, paid once per bucket of the map (about
/// two buckets per row after the map grows), so what most rows lack sits behind one
/// optional box.
pub(crate) struct Entry<V> {
    pub value: Arc<V>,
    /// The Kafka partition that owns the key.
    pub partition: i32,
    /// The warm start that last wrote the entry; entries of older ones are removed
    /// after a new load.
    pub generation: u32,
    /// The TOAST copy and the `ts` value, for the rows that have either.
    pub extra: Option<Box<Extra>>,
}

/// The parts of an [`Entry`] that most rows lack.
pub(crate) struct Extra {
    /// The row's values that may be stored out of line (see `ToastCopy` in `table`),
    /// as a JSON object, for `unchanged_toast` merges. Kept as text: it is read only
    /// on such a merge, and one string is far smaller than a map.
    pub toast: Option<Box<str>>,
    /// The watermark strategy's `ts` value.
    pub ts: Option<Ts>,
}

impl<V> Entry<V> {
    /// A new entry; the extras are boxed only when there are any.
    pub fn new(
        value: Arc<V>,
        partition: i32,
        generation: u32,
        toast: Option<Box<str>>,
        ts: Option<Ts>,
    ) -> Self {
        let extra = (toast.is_some() || ts.is_some()).then(|| Box::new(Extra { toast, ts }));
        Entry {
            value,
            partition,
            generation,
            extra,
        }
    }

    /// The row's TOAST copy, if it has one.
    pub fn toast(&self) -> Option<&str> {
        self.extra.as_ref()?.toast.as_deref()
    }

    /// The row's `ts` value, if it has one.
    pub fn ts(&self) -> Option<&Ts> {
        self.extra.as_ref()?.ts.as_ref()
    }
}

/// The consumer's position on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPosition {
    /// The partition.
    pub partition: i32,
    /// The offset of the next record to consume.
    pub next_offset: i64,
    /// The partition's high watermark at the last refresh.
    pub high_watermark: i64,
    /// The high watermark sampled after the last load, which readiness waits for.
    pub ready_at: i64,
}

/// Counters updated by the background task.
#[derive(Debug)]
pub(crate) struct Counters {
    /// The counts, also exported through the `metrics` facade.
    pub counts: Counts,
    /// Commit time (ms since the epoch) of the last change applied from the stream.
    pub last_commit_ms: AtomicI64,
    /// When (ms since the epoch) Kafka last answered the follower's watermark
    /// requests; 0 before the follower ran.
    pub kafka_answered_ms: AtomicI64,
    /// The COPY readers of the latest load from PostgreSQL; 0 before one.
    pub load_readers: AtomicU64,
}

/// Whether the cache is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Status {
    Starting,
    Ready,
    /// Catching up again after a new warm start.
    Rewarming,
    Failed(String),
}

/// The state the handle and the background task share.
pub(crate) struct Shared<K, V> {
    pub map: DashMap<K, Entry<V>>,
    pub changes: broadcast::Sender<Change<K, V>>,
    /// Whether anyone ever subscribed: until then `notify` need not ask the channel
    /// (which takes its lock) whether anyone listens, once per row of a load.
    pub subscribed: AtomicBool,
    pub counters: Counters,
    pub positions: Mutex<Vec<PartitionPosition>>,
    pub instance_id: Uuid,
    pub status: watch::Sender<Status>,
    /// The error that ended the start, for the first caller of `ready()`.
    pub failure: Mutex<Option<Error>>,
    /// What the current warm start is doing, for a start that does not finish in time.
    pub step: Mutex<&'static str>,
    pub table: String,
    pub topic: String,
    /// Where the rows of the latest warm start came from.
    pub started_from: Mutex<Option<StartedFrom>>,
    /// Where this cache writes checkpoints, if it does.
    pub checkpoint_dir: Option<std::path::PathBuf>,
}

impl<K: Hash + Eq + Clone, V> Shared<K, V> {
    /// Records what the warm start is doing now.
    pub fn set_step(&self, step: &'static str) {
        *self.step.lock().unwrap_or_else(|p| p.into_inner()) = step;
    }

    /// What the warm start is doing now.
    pub fn step(&self) -> &'static str {
        *self.step.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn new(instance_id: Uuid, table: String, topic: String, capacity: usize) -> Self {
        Shared {
            map: DashMap::new(),
            changes: broadcast::channel(capacity.max(1)).0,
            subscribed: AtomicBool::new(false),
            counters: Counters {
                counts: Counts::new(&table),
                last_commit_ms: AtomicI64::new(0),
                kafka_answered_ms: AtomicI64::new(0),
                load_readers: AtomicU64::new(0),
            },
            positions: Mutex::new(Vec::new()),
            instance_id,
            status: watch::channel(Status::Starting).0,
            failure: Mutex::new(None),
            step: Mutex::new("starting"),
            table,
            topic,
            started_from: Mutex::new(None),
            checkpoint_dir: None,
        }
    }

    /// Makes room for about `rows` entries in all, so that a load of that many rows
    /// does not grow the map as it goes: each growth rehashes a whole shard and leaves
    /// the old table's memory to the allocator. Each shard gets its share plus a
    /// sixteenth, since keys do not spread evenly and the estimate may be a little low.
    /// An estimate on the high side costs little: a bucket never written costs its
    /// control byte, its entry's pages are never touched. Best effort: a reservation
    /// the allocator refuses is left to the inserts.
    pub fn reserve(&self, rows: usize) {
        let shards = self.map.shards();
        let share = rows.div_ceil(shards.len().max(1));
        let per_shard = share.saturating_add(share / 16);
        for shard in shards {
            let mut table = shard.write();
            let additional = per_shard.saturating_sub(table.len());
            if additional > 0 {
                let _ = table.try_reserve(additional, |(key, _)| self.map.hash_usize(key) as u64);
            }
        }
    }

    /// Asks the processor to fetch the memory an insert of `key` reads and writes
    /// first (the control bytes of its probe's first group and the bucket there), so
    /// that a bulk load can ask for a batch of rows' slots before it inserts them. In a
    /// map of a million rows each insert otherwise waits for two cache misses (half
    /// the time the load spent inserting). Only a hint: the map is not changed (the
    /// shard's read lock is taken and released to find the slot), and a shard being
    /// written elsewhere is skipped.
    pub fn prefetch(&self, key: &K) {
        let hash = self.map.hash_usize(key);
        let Some(table) = self.map.shards()[self.map.determine_shard(hash)].try_read() else {
            return;
        };
        // hashbrown's layout: the control bytes start at `data_end`, bucket `i` lies
        // `i + 1` buckets below it, and a probe starts at `hash & (buckets - 1)`.
        let slot = hash & (table.buckets() - 1);
        let end = table.data_end().as_ptr();
        // Unlocked before the fetches are asked for: the lock is not needed for them.
        drop(table);
        prefetch_line(end.cast::<u8>().wrapping_add(slot));
        prefetch_line(end.wrapping_sub(slot + 1).cast::<u8>());
    }

    /// Tells subscribers, if there are any (so an unwatched cache clones nothing).
    pub fn notify(&self, change: impl FnOnce() -> Change<K, V>) {
        if self.watched() {
            let _ = self.changes.send(change());
        }
    }

    /// A new receiver of changes.
    pub fn subscribe(&self) -> broadcast::Receiver<Change<K, V>> {
        self.subscribed.store(true, Ordering::Release);
        self.changes.subscribe()
    }

    /// Whether anyone listens for changes now.
    pub fn watched(&self) -> bool {
        self.subscribed.load(Ordering::Acquire) && self.changes.receiver_count() > 0
    }

    pub fn fail(&self, error: Error) {
        let message = error.to_string();
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        self.status.send_replace(Status::Failed(message));
    }
}

/// A hint to load the cache line at `at`; never faults, whatever `at` is.
#[inline]
fn prefetch_line(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing into the program and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Stops the background task when the last handle goes away.
pub(crate) struct TaskGuard {
    pub stop: watch::Sender<bool>,
    pub task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_sizes_every_shard_for_its_share_of_the_rows() {
        let shared = Shared::<i64, ()>::new(Uuid::nil(), "t".into(), "t".into(), 1);
        shared.reserve(10_000);
        let shards = shared.map.shards();
        let share = 10_000usize.div_ceil(shards.len()) * 17 / 16;
        for shard in shards {
            assert!(shard.read().capacity() >= share);
        }
        // A second reserve for rows already there adds nothing.
        let before: Vec<usize> = shards.iter().map(|s| s.read().capacity()).collect();
        shared.reserve(100);
        let after: Vec<usize> = shards.iter().map(|s| s.read().capacity()).collect();
        assert_eq!(before, after);
    }

    #[test]
    fn an_entry_without_toast_or_ts_has_no_extra_box() {
        let plain = Entry::new(Arc::new(1), 0, 1, None, None);
        assert!(plain.extra.is_none() && plain.toast().is_none() && plain.ts().is_none());
        let toasted = Entry::new(Arc::new(1), 0, 1, Some("{}".into()), None);
        assert_eq!(toasted.toast(), Some("{}"));
        assert_eq!(std::mem::size_of::<Entry<u8>>(), 24);
    }
}
