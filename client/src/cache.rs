//! The application's handle: concurrent reads of the map, change notifications,
//! progress figures, and the lifetime of the background task.
//!
//! The map is a [`DashMap`] (lock-striped), so any number of threads read while the
//! background task applies changes. Values are handed out as `Arc<V>`, so a reader
//! never holds a shard lock after `get` returns. The background task is owned by the
//! handle: [`Cache::shutdown`] stops it and waits, and dropping the last clone of the
//! handle stops it too.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::state::{Change, PartitionPosition, Shared, Status, TaskGuard};

/// How long Kafka may not answer before [`Stats::kafka_silent_for`] says so: two
/// rounds of the follower's watermark requests and their 2 s timeouts.
const KAFKA_SILENT_AFTER: Duration = Duration::from_secs(9);

/// Counters and figures of a cache, for dashboards and health checks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Rows in the map now.
    pub rows: usize,
    /// Rows read by bulk loads (all warm starts together).
    pub loaded_rows: u64,
    /// Changes applied from the stream (and the watermark re-query).
    pub applied: u64,
    /// Records skipped because the loaded snapshot already contained them.
    pub skipped_in_snapshot: u64,
    /// Records skipped because they replayed a position already applied.
    pub duplicates: u64,
    /// Changes skipped by the watermark strategy's last-writer-wins rule.
    pub stale: u64,
    /// Records that could not be used (not JSON, wrong shape, another table).
    pub bad_records: u64,
    /// Keys removed because a change's new row did not fit the value type (after a
    /// schema change, say): the key is absent rather than stale.
    pub unfit_rows: u64,
    /// Whether the cache has removed any key for not fitting the value type: it no
    /// longer mirrors the whole table. Each such removal is also a [`Change`] with
    /// [`Origin::Unfit`](crate::Origin::Unfit).
    pub degraded: bool,
    /// Rows re-read from PostgreSQL because a change left a value out as unchanged
    /// TOAST and the cache held no copy of it.
    pub toast_rereads: u64,
    /// Warm starts so far (1 after a normal start).
    pub warm_starts: u64,
    /// Records on the topic not yet consumed, summed over partitions, as of the last
    /// watermark refresh (every few seconds).
    pub lag_records: i64,
    /// Time since the commit of the last change applied from the stream; `None`
    /// before the first one.
    pub since_last_commit: Option<Duration>,
    /// Whether the cache has caught up since its last warm start.
    pub ready: bool,
    /// How long Kafka has not answered the cache's watermark requests (made every
    /// 2 s), when that is longer than two rounds: the broker is unreachable or
    /// silent, and `lag_records` is stale. `None` while it answers.
    pub kafka_silent_for: Option<Duration>,
    /// Where the rows of the latest warm start came from; `None` before the first
    /// one has loaded.
    pub started_from: Option<crate::StartedFrom>,
    /// Checkpoints written ([`Builder::checkpoint_dir`](crate::Builder::checkpoint_dir)).
    pub checkpoints_written: u64,
    /// Checkpoints that could not be used at start (each reason is in
    /// [`Stats::started_from`] and the log).
    pub checkpoint_refusals: u64,
    /// How many connections read the latest load from PostgreSQL in parallel
    /// ([`Builder::parallel_load`](crate::Builder::parallel_load)); 0 before one.
    pub load_readers: usize,
}

/// An in-process copy of one PostgreSQL table, kept current from its Kafka topic.
///
/// Build one with `Cache::builder()` (see [`Builder`](crate::Builder)). Clones share the same map and task. `K` is
/// deserialised from the key object (`{"id": 42}`; a single-column key also
/// deserialises from the bare value, so `Cache<i64, _>` works), `V` from the whole
/// row as a JSON object, with values encoded as [`tidemark_core::wire::codec`] describes.
pub struct Cache<K, V> {
    pub(crate) shared: Arc<Shared<K, V>>,
    pub(crate) guard: Arc<TaskGuard>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Cache {
            shared: self.shared.clone(),
            guard: self.guard.clone(),
        }
    }
}

impl<K: Hash + Eq, V> std::fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("table", &self.shared.table)
            .field("topic", &self.shared.topic)
            .field("instance_id", &self.shared.instance_id)
            .field("rows", &self.shared.map.len())
            .finish()
    }
}

impl<K, V> Cache<K, V>
where
    K: DeserializeOwned + Hash + Eq + Clone + Send + Sync + 'static,
    V: DeserializeOwned + Send + Sync + 'static,
{
    /// The value of `key`, if the table has that row.
    pub fn get<Q>(&self, key: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shared.map.get(key).map(|e| e.value.clone())
    }

    /// Whether the table has a row with `key`.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shared.map.contains_key(key)
    }

    /// The number of rows.
    pub fn len(&self) -> usize {
        self.shared.map.len()
    }

    /// Whether the cache holds no rows.
    pub fn is_empty(&self) -> bool {
        self.shared.map.is_empty()
    }

    /// Iterates over the rows. Each shard is locked for reading while the iterator
    /// is in it, so changes applied meanwhile may or may not be seen.
    pub fn iter(&self) -> impl Iterator<Item = (K, Arc<V>)> + '_ {
        self.shared
            .map
            .iter()
            .map(|e| (e.key().clone(), e.value().value.clone()))
    }

    /// Iterates over the rows' values only, without copying their keys (a value is
    /// shared, not copied). Each shard is locked for reading while the iterator is in
    /// it, as with [`Cache::iter`].
    pub fn values(&self) -> impl Iterator<Item = Arc<V>> + '_ {
        self.shared.map.iter().map(|e| e.value().value.clone())
    }

    /// Reads every row by reference: `read` gets an iterator over all rows, and
    /// every shard of the map stays locked for reading until `read` returns. Nothing
    /// is copied and no reference is counted, so a scan of a million rows does not
    /// wait for a million reference counts' memory one by one (as [`Cache::values`]
    /// does), and the rows may be kept by reference (sorted, say) until `read` ends.
    ///
    /// The shards are locked one after another, so, as with [`Cache::iter`], a
    /// transaction applied meanwhile may show in some shards and not in others. Changes
    /// wait until `read` returns (the follower's task blocks on its next insert), so
    /// keep `read` short in a cache that follows a busy topic, do not call `read_all`
    /// back to back in a loop, and never wait inside `read` for something that needs
    /// the cache to change (a [`Cache::subscribe`] receiver, [`Cache::ready`]): it
    /// would wait forever. Reading the cache inside `read` ([`Cache::get`],
    /// [`Cache::len`]) is fine.
    pub fn read_all<R>(&self, read: impl FnOnce(&mut dyn Iterator<Item = (&K, &V)>) -> R) -> R {
        let shards: Vec<_> = self.shared.map.shards().iter().map(|s| s.read()).collect();
        let mut rows = shards.iter().flat_map(|shard| {
            // SAFETY: the shard's read lock is held until `read` returns, so its table
            // neither changes nor moves while the buckets are iterated and borrowed.
            unsafe { shard.iter() }.map(|bucket| {
                // SAFETY: as above; each bucket the iterator yields is full.
                let (key, entry) = unsafe { bucket.as_ref() };
                (key, &*entry.get().value)
            })
        });
        read(&mut rows)
    }

    /// A copy of all rows.
    pub fn entries(&self) -> Vec<(K, Arc<V>)> {
        self.iter().collect()
    }

    /// Change notifications, delivered after each change is applied. A receiver that
    /// falls more than the builder's `channel_capacity` behind gets
    /// [`broadcast::error::RecvError::Lagged`] and should re-read the map.
    pub fn subscribe(&self) -> broadcast::Receiver<Change<K, V>> {
        self.shared.subscribe()
    }

    /// This instance's id, a UUIDv7 (time-ordered). Stamp it into the owner column of
    /// the rows this instance writes, and their changes arrive as
    /// [`Origin::OwnWrite`].
    pub fn instance_id(&self) -> Uuid {
        self.shared.instance_id
    }

    /// The table, `schema.table`.
    pub fn table(&self) -> &str {
        &self.shared.table
    }

    /// The topic the cache follows.
    pub fn topic(&self) -> &str {
        &self.shared.topic
    }

    /// Whether the cache has caught up since its last warm start.
    pub fn is_ready(&self) -> bool {
        *self.shared.status.borrow() == Status::Ready
    }

    /// Waits until the cache is warm and caught up: every partition consumed up to
    /// the high watermark sampled after the load. Returns the start's error if the
    /// first warm start failed.
    pub async fn ready(&self) -> Result<()> {
        let mut rx = self.shared.status.subscribe();
        let status = rx
            .wait_for(|s| matches!(s, Status::Ready | Status::Failed(_)))
            .await
            .map(|s| s.clone())
            .map_err(|_| Error::Stopped("the cache task ended".into()))?;
        match status {
            Status::Failed(message) => {
                let error = self
                    .shared
                    .failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                Err(error.unwrap_or(Error::Stopped(message)))
            }
            _ => Ok(()),
        }
    }

    /// Counters and lag figures.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let positions = self.positions();
        let last = c.last_commit_ms.load(Ordering::Relaxed);
        let now_ms = chrono::Utc::now().timestamp_millis();
        Stats {
            rows: self.shared.map.len(),
            loaded_rows: c.counts.loaded_rows.get(),
            applied: c.counts.applied.get(),
            skipped_in_snapshot: c.counts.skipped_in_snapshot.get(),
            duplicates: c.counts.duplicates.get(),
            stale: c.counts.stale.get(),
            bad_records: c.counts.bad_records.get(),
            unfit_rows: c.counts.unfit_rows.get(),
            degraded: c.counts.unfit_rows.get() > 0,
            toast_rereads: c.counts.toast_rereads.get(),
            warm_starts: c.counts.warm_starts.get(),
            lag_records: positions
                .iter()
                .map(|p| (p.high_watermark - p.next_offset).max(0))
                .sum(),
            since_last_commit: (last > 0)
                .then(|| Duration::from_millis((now_ms - last).max(0) as u64)),
            ready: self.is_ready(),
            started_from: self
                .shared
                .started_from
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            checkpoints_written: c.counts.checkpoints_written.get(),
            checkpoint_refusals: c.counts.checkpoint_refusals.get(),
            load_readers: c.load_readers.load(Ordering::Relaxed) as usize,
            kafka_silent_for: {
                let answered = c.kafka_answered_ms.load(Ordering::Relaxed);
                let silent = Duration::from_millis((now_ms - answered).max(0) as u64);
                (answered > 0 && silent > KAFKA_SILENT_AFTER).then_some(silent)
            },
        }
    }

    /// The consumer's position on each partition.
    pub fn positions(&self) -> Vec<PartitionPosition> {
        self.shared
            .positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Serves this cache's newest checkpoint over HTTP on `addr` (port 0 picks one),
    /// at [`CheckpointServer::url`](crate::checkpoint::CheckpointServer::url), so new
    /// instances start from it with
    /// [`Builder::checkpoint_from`](crate::Builder::checkpoint_from) instead of
    /// reading the table. Needs [`Builder::checkpoint_dir`](crate::Builder::checkpoint_dir).
    /// To mount the handler in the application's own server instead, use
    /// [`checkpoint::router`](crate::checkpoint::router).
    pub async fn serve_checkpoints(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<crate::checkpoint::CheckpointServer> {
        let dir = self.shared.checkpoint_dir.clone().ok_or(Error::Config {
            field: "checkpoint_dir",
            problem: "is not set, so this cache has no checkpoints to serve".into(),
        })?;
        crate::checkpoint::serve(dir, self.shared.topic.clone(), addr)
            .await
            .map_err(|e| Error::Config {
                field: "checkpoint_dir",
                problem: format!("cannot serve checkpoints on {addr}: {e}"),
            })
    }

    /// Stops the background task and waits for it to end. The map stays readable
    /// (through other clones) but no longer changes.
    pub async fn shutdown(self) {
        self.guard.stop.send_replace(true);
        let task = self
            .guard
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
