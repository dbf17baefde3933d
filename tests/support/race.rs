//! The race harness: writers hammer a table while caches warm-start at random
//! moments; afterwards every cache must equal the table, and no subscriber may have
//! seen a key go back to an older version.
//!
//! Versions: every write first bumps `<table>_vers.v` for its key (`UPDATE ...
//! RETURNING v`) and stores that number in the row. The version row stays locked
//! until commit, so the versions of one key increase in commit order, across deletes
//! and re-inserts too. A subscriber that sees a version not strictly above the last
//! one it saw for the key has seen a key go back, or a change applied twice.
//!
//! The writers include transactions that stay open for seconds (across warm starts)
//! and two streams of pairs of transactions that commit in the opposite order to their
//! xids.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tidemark_client::{Cache, Strategy};

use tokio_postgres::Client;

use super::*;

/// A row of the race table, as the cache holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RaceRow {
    pub id: i64,
    pub v: i64,
    pub owner: Option<String>,
    pub pad: String,
    pub ts: String,
}

/// The cache's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
pub struct RaceKey {
    pub id: i64,
}

/// How a race runs.
#[derive(Clone)]
pub struct RaceConfig {
    pub keys: i64,
    pub writers: usize,
    pub caches: usize,
    pub duration: Duration,
    pub strategy: Strategy,
    /// Kill -9 the bridge this many times during the run.
    pub bridge_crashes: usize,
    /// Builds the caches with the xid filter switched off (to prove the test catches it).
    pub disable_xid_filter: bool,
    /// Adds the hostile writers: `COPY` batches, primary-key changes, a `TRUNCATE`
    /// and a rewriting `ALTER TABLE` during the race.
    pub hostile: bool,
    /// Every cache keeps its checkpoints in this one shared directory, writing one
    /// every second, so caches that start later may start from a peer's.
    pub checkpoints: Option<std::path::PathBuf>,
    /// Every cache loads with this many parallel readers (`Builder::parallel_load`).
    pub parallel_load: Option<usize>,
}

impl Default for RaceConfig {
    fn default() -> Self {
        RaceConfig {
            keys: 10_000,
            writers: 4,
            caches: 20,
            duration: Duration::from_secs(25),
            strategy: Strategy::Snapshot,
            bridge_crashes: 0,
            disable_xid_filter: false,
            hostile: false,
            checkpoints: None,
            parallel_load: None,
        }
    }
}

/// What a race found.
#[derive(Debug, Default)]
pub struct RaceOutcome {
    /// Commits by the writers.
    pub commits: u64,
    /// Times a subscriber saw a key's version below the last one it saw.
    pub backwards: u64,
    /// Times a subscriber saw the version it already had again (a change applied twice).
    pub repeated: u64,
    /// An example of each kind of problem, for the failure message.
    pub examples: Vec<String>,
    /// Caches whose contents differ from the table at the end.
    pub diverged: usize,
    /// Rows differing, summed over caches.
    pub differing_rows: usize,
    /// Summed cache statistics.
    pub skipped_in_snapshot: u64,
    pub duplicates: u64,
    pub applied: u64,
    /// Caches whose rows came from a checkpoint, and checkpoints refused.
    pub from_checkpoint: usize,
    pub checkpoint_refusals: u64,
    /// Caches whose latest load read with more than one connection.
    pub parallel_loads: usize,
}

/// Keys above the writers' range: `COPY` batches use the first half, primary-key
/// changes move keys into the second half.
const SPARE_KEYS: i64 = 8_000;

/// Creates the race table and its version table.
pub async fn create_tables(pg: &Client, table: &str, keys: i64) {
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, v int8 NOT NULL, owner text, pad text NOT NULL,
                               ts timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE TABLE {table}_vers (id int8 PRIMARY KEY, v int8 NOT NULL);
         INSERT INTO {table}_vers SELECT g, 1 FROM generate_series(0, {keys} + {SPARE_KEYS} - 1) g;
         INSERT INTO {table} SELECT g, 1, NULL, 'initial', clock_timestamp() FROM generate_series(0, {keys} - 1, 2) g;"
    ))
    .await
    .expect("create race tables");
}

/// One write to key `k` inside an open transaction: bump the version, then upsert or delete.
fn write_sql(table: &str, k: i64, delete: bool, owner: &str) -> String {
    let bump = format!("UPDATE {table}_vers SET v = v + 1 WHERE id = {k}");
    if delete {
        format!("{bump}; DELETE FROM {table} WHERE id = {k};")
    } else {
        format!(
            "{bump}; INSERT INTO {table} (id, v, owner, pad, ts)
               SELECT {k}, v, '{owner}', md5(random()::text), clock_timestamp() FROM {table}_vers WHERE id = {k}
             ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v, owner = EXCLUDED.owner, pad = EXCLUDED.pad, ts = EXCLUDED.ts;"
        )
    }
}

async fn writer(
    table: String,
    keys: i64,
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    seed: u64,
) {
    let pg = pg().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let k = rng.gen_range(0..keys);
        let sql = format!(
            "BEGIN; {} COMMIT;",
            write_sql(&table, k, rng.gen_range(0..5) == 0, "writer")
        );
        if pg.batch_execute(&sql).await.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = pg.batch_execute("ROLLBACK").await;
        }
    }
}

/// Transactions that stay open for 1.5 to 3 s, across warm starts.
async fn long_writer(
    table: String,
    keys: i64,
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    seed: u64,
) {
    let pg = pg().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let mut ks: Vec<i64> = (0..5).map(|_| rng.gen_range(0..keys)).collect();
        ks.sort_unstable();
        ks.dedup();
        let mut sql = String::from("BEGIN;");
        for &k in &ks {
            sql += &write_sql(&table, k, rng.gen_range(0..4) == 0, "long");
        }
        pg.batch_execute(&sql).await.expect("long transaction");
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1500..3000))).await;
        pg.batch_execute("COMMIT")
            .await
            .expect("commit long transaction");
        commits.fetch_add(1, Ordering::Relaxed);
    }
}

/// Pairs of transactions that commit in the opposite order to their xids.
async fn reversed_pairs(
    table: String,
    keys: i64,
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    seed: u64,
) {
    let (a, b) = (pg().await, pg().await);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let k1 = rng.gen_range(0..keys / 2) * 2;
        let k2 = k1 + 1;
        a.batch_execute(&format!(
            "BEGIN; {}",
            write_sql(&table, k1, false, "pair-a")
        ))
        .await
        .expect("pair a");
        let xa: i64 = a
            .query_one("SELECT pg_current_xact_id()::text::int8", &[])
            .await
            .unwrap()
            .get(0);
        b.batch_execute(&format!(
            "BEGIN; {}",
            write_sql(&table, k2, false, "pair-b")
        ))
        .await
        .expect("pair b");
        let xb: i64 = b
            .query_one("SELECT pg_current_xact_id()::text::int8", &[])
            .await
            .unwrap()
            .get(0);
        assert!(xb > xa);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..100))).await;
        b.batch_execute("COMMIT").await.expect("commit b");
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..100))).await;
        a.batch_execute("COMMIT").await.expect("commit a");
        commits.fetch_add(2, Ordering::Relaxed);
    }
}

/// `COPY` batches of 1,000 rows into the first half of the spare keys (one WAL record
/// per heap page, so hundreds of changes share an LSN), each block deleted again the
/// next time round; versions are bumped in the same transaction.
async fn copy_writer(table: String, keys: i64, stop: Arc<AtomicBool>, commits: Arc<AtomicU64>) {
    use futures::SinkExt;
    let pg = pg().await;
    let mut round = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let from = keys + (round % 4) * 1_000;
        let to = from + 999;
        round += 1;
        let present: i64 = pg
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE id BETWEEN {from} AND {to}"),
                &[],
            )
            .await
            .expect("count block")
            .get(0);
        pg.batch_execute(&format!(
            "BEGIN; UPDATE {table}_vers SET v = v + 1 WHERE id BETWEEN {from} AND {to}"
        ))
        .await
        .expect("bump block");
        let done = if present > 0 {
            pg.batch_execute(&format!(
                "DELETE FROM {table} WHERE id BETWEEN {from} AND {to}"
            ))
            .await
            .is_ok()
        } else {
            let versions = pg
                .query(
                    &format!("SELECT id, v FROM {table}_vers WHERE id BETWEEN {from} AND {to}"),
                    &[],
                )
                .await
                .expect("block versions");
            let mut data = String::new();
            for r in versions {
                data += &format!(
                    "{}\t{}\tcopy\tcopied\n",
                    r.get::<_, i64>(0),
                    r.get::<_, i64>(1)
                );
            }
            match pg
                .copy_in::<_, bytes::Bytes>(&format!("COPY {table} (id, v, owner, pad) FROM STDIN"))
                .await
            {
                Ok(sink) => {
                    futures::pin_mut!(sink);
                    sink.send(bytes::Bytes::from(data)).await.is_ok() && sink.finish().await.is_ok()
                }
                Err(_) => false,
            }
        };
        if done && pg.batch_execute("COMMIT").await.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = pg.batch_execute("ROLLBACK").await;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

/// Primary-key changes: a key of the writers' range moves to a spare key (a delete
/// of the old key and a create of the new one in the stream), and back later.
async fn key_changer(
    table: String,
    keys: i64,
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
    seed: u64,
) {
    let pg = pg().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let (a, b) = (
            rng.gen_range(0..keys),
            keys + SPARE_KEYS / 2 + rng.gen_range(0..SPARE_KEYS / 2),
        );
        let (from, to) = if rng.gen_bool(0.5) { (a, b) } else { (b, a) };
        let sql = format!(
            "BEGIN;
             UPDATE {table}_vers SET v = v + 1 WHERE id IN ({from}, {to});
             UPDATE {table} SET id = {to}, v = (SELECT v FROM {table}_vers WHERE id = {to}),
                    owner = 'moved', ts = clock_timestamp() WHERE id = {from};
             COMMIT;"
        );
        if pg.batch_execute(&sql).await.is_ok() {
            commits.fetch_add(1, Ordering::Relaxed);
        } else {
            let _ = pg.batch_execute("ROLLBACK").await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..30))).await;
    }
}

/// One rewriting `ALTER TABLE` (which makes a table look empty to older snapshots)
/// and one `TRUNCATE` (a record on every partition), at set moments. Each waits for
/// its lock at most 2 s a time and tries again: the pair writers hold a lock while
/// the test waits on another of their statements, which would queue behind it.
async fn schema_writer(table: String, duration: Duration, commits: Arc<AtomicU64>) {
    let pg = pg().await;
    pg.batch_execute("SET lock_timeout = '2s'")
        .await
        .expect("lock_timeout");
    for sql in [
        format!("ALTER TABLE {table} ALTER COLUMN pad TYPE text USING pad || ''"),
        format!("TRUNCATE {table}"),
    ] {
        tokio::time::sleep(duration / 3).await;
        let mut attempts = 0;
        while let Err(e) = pg.batch_execute(&sql).await {
            attempts += 1;
            assert!(attempts < 20, "{sql}: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        commits.fetch_add(1, Ordering::Relaxed);
    }
}

/// The table as a map, for comparing with a cache.
pub async fn table_contents(pg: &Client, table: &str) -> BTreeMap<i64, RaceRow> {
    pg.query(&format!("SELECT id, v, owner, pad, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') FROM {table}"), &[])
        .await
        .expect("read table")
        .iter()
        .map(|r| {
            let row = RaceRow { id: r.get(0), v: r.get(1), owner: r.get(2), pad: r.get(3), ts: r.get(4) };
            (row.id, row)
        })
        .collect()
}

/// Normalises the RFC 3339 `ts` a cache holds to `table_contents`' form:
/// `2026-11-26T07:16:50.123Z` to `2026-11-26T07:16:50.123000`.
fn normal_ts(ts: &str) -> String {
    let t = ts.trim_end_matches('Z');
    let (base, frac) = t.split_once('.').unwrap_or((t, ""));
    format!("{base}.{:0<6}", &frac[..frac.len().min(6)])
}

fn cache_contents(cache: &Cache<RaceKey, RaceRow>) -> BTreeMap<i64, RaceRow> {
    cache
        .entries()
        .into_iter()
        .map(|(k, v)| {
            (
                k.id,
                RaceRow {
                    ts: normal_ts(&v.ts),
                    ..(*v).clone()
                },
            )
        })
        .collect()
}

/// Waits until `at` after `started`, kills the bridge with SIGKILL and starts a new one.
async fn crash_at_time(
    name: &str,
    bridge: &mut Bridge,
    args: &BridgeArgs,
    started: Instant,
    at: Duration,
) {
    tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
    bridge.kill9();
    eprintln!(
        "race {name}: killed the bridge with SIGKILL at {:?}",
        started.elapsed()
    );
    // Restarted at once: the new producer registers while the broker may still hold
    // the killed one's in-flight produce requests.
    *bridge = Bridge::start(args);
}

/// Runs a race; `args` names the bridge whose topic the caches read.
pub async fn run(
    name: &str,
    table: &str,
    args: &BridgeArgs,
    bridge: &mut Bridge,
    cfg: RaceConfig,
) -> RaceOutcome {
    let pg = pg().await;
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for i in 0..cfg.writers {
        writers.push(tokio::spawn(writer(
            table.into(),
            cfg.keys,
            stop.clone(),
            commits.clone(),
            i as u64,
        )));
    }
    writers.push(tokio::spawn(long_writer(
        table.into(),
        cfg.keys,
        stop.clone(),
        commits.clone(),
        100,
    )));
    for seed in [200, 201] {
        writers.push(tokio::spawn(reversed_pairs(
            table.into(),
            cfg.keys,
            stop.clone(),
            commits.clone(),
            seed,
        )));
    }
    if cfg.hostile {
        writers.push(tokio::spawn(copy_writer(
            table.into(),
            cfg.keys,
            stop.clone(),
            commits.clone(),
        )));
        writers.push(tokio::spawn(key_changer(
            table.into(),
            cfg.keys,
            stop.clone(),
            commits.clone(),
            300,
        )));
        writers.push(tokio::spawn(schema_writer(
            table.into(),
            cfg.duration,
            commits.clone(),
        )));
    }

    // Caches start at random moments while the writers run; a subscriber on each
    // checks that versions only go up.
    let backwards = Arc::new(AtomicU64::new(0));
    let repeated = Arc::new(AtomicU64::new(0));
    let examples = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut starts: Vec<Duration> = (0..cfg.caches)
        .map(|_| Duration::from_millis(rng.gen_range(500..cfg.duration.as_millis() as u64 - 2_000)))
        .collect();
    starts.sort();
    let crash_times: Vec<Duration> = (1..=cfg.bridge_crashes)
        .map(|i| cfg.duration * i as u32 / (cfg.bridge_crashes as u32 + 1))
        .collect();
    let mut crashes = crash_times.iter().peekable();
    let mut caches = Vec::new();
    for (i, at) in starts.into_iter().enumerate() {
        while let Some(&&crash_at) = crashes.peek() {
            if crash_at > at {
                break;
            }
            crash_at_time(name, bridge, args, started, crash_at).await;
            crashes.next();
        }
        tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
        let mut builder = Cache::<RaceKey, RaceRow>::builder()
            .postgres(pg_url())
            .kafka(args.kafka.clone())
            .table(format!("public.{table}"))
            .topic_prefix(args.prefix.clone())
            .strategy(cfg.strategy.clone())
            .owner_column("owner")
            .channel_capacity(1 << 20);
        if cfg.disable_xid_filter {
            builder = builder.disable_xid_filter_for_tests();
        }
        if let Some(readers) = cfg.parallel_load {
            builder = builder.parallel_load(readers);
        }
        if let Some(dir) = &cfg.checkpoints {
            builder = builder
                .checkpoint_dir(dir)
                .checkpoint_interval(Duration::from_secs(1));
        }
        let cache = builder.start().unwrap_or_else(|e| panic!("cache {i}: {e}"));
        let mut changes = cache.subscribe();
        let (backwards, repeated, examples) =
            (backwards.clone(), repeated.clone(), examples.clone());
        tokio::spawn(async move {
            let mut last: HashMap<i64, i64> = HashMap::new();
            loop {
                match changes.recv().await {
                    Ok(change) => {
                        let Some(row) = &change.value else { continue };
                        let prev = last.insert(change.key.id, row.v);
                        if prev.is_some_and(|p| row.v <= p) {
                            let counter = if prev == Some(row.v) {
                                &repeated
                            } else {
                                &backwards
                            };
                            counter.fetch_add(1, Ordering::Relaxed);
                            let mut ex = examples.lock().unwrap();
                            if ex.len() < 5 {
                                ex.push(format!(
                                    "cache {i}: key {} went from version {} to {} ({:?} change)",
                                    change.key.id,
                                    prev.unwrap_or_default(),
                                    row.v,
                                    change.origin
                                ));
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        panic!("cache {i}: the subscriber lagged by {n} changes; raise channel_capacity")
                    }
                    Err(_) => return,
                }
            }
        });
        caches.push(cache);
    }
    for &crash_at in crashes {
        crash_at_time(name, bridge, args, started, crash_at).await;
    }
    tokio::time::sleep(cfg.duration.saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    for (i, c) in caches.iter().enumerate() {
        tokio::time::timeout(Duration::from_secs(120), c.ready())
            .await
            .unwrap_or_else(|_| panic!("cache {i} not ready after 120 s"))
            .unwrap_or_else(|e| panic!("cache {i} failed: {e}"));
    }

    // The bridge drains, then every cache must reach the table's contents.
    let end = current_lsn(&pg).await;
    wait_for(
        Duration::from_secs(120),
        "the bridge to confirm the writers' last commit",
        || async { confirmed_flush(&pg, &args.slot).await.filter(|&c| c >= end) },
    )
    .await;
    let expected = table_contents(&pg, table).await;
    let mut outcome = RaceOutcome {
        commits: commits.load(Ordering::Relaxed),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<usize> = (0..caches.len()).collect();
    while !pending.is_empty() && Instant::now() < deadline {
        pending.retain(|&i| cache_contents(&caches[i]) != expected);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for &i in &pending {
        let got = cache_contents(&caches[i]);
        let differing = expected
            .keys()
            .chain(got.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| expected.get(k) != got.get(k))
            .collect::<Vec<_>>();
        if let Some(k) = differing.first() {
            outcome.examples.push(format!(
                "cache {i}: {} rows differ, e.g. key {k}: table {:?}, cache {:?}",
                differing.len(),
                expected.get(k),
                got.get(k)
            ));
        }
        outcome.differing_rows += differing.len();
    }
    outcome.diverged = pending.len();
    outcome.backwards = backwards.load(Ordering::Relaxed);
    outcome.repeated = repeated.load(Ordering::Relaxed);
    outcome
        .examples
        .extend(examples.lock().unwrap().iter().cloned());
    for c in &caches {
        let s = c.stats();
        outcome.skipped_in_snapshot += s.skipped_in_snapshot;
        outcome.duplicates += s.duplicates;
        outcome.applied += s.applied;
        outcome.checkpoint_refusals += s.checkpoint_refusals;
        outcome.parallel_loads += usize::from(s.load_readers > 1);
        if matches!(
            s.started_from,
            Some(tidemark_client::StartedFrom::Checkpoint { .. })
        ) {
            outcome.from_checkpoint += 1;
        }
    }
    for c in caches {
        c.shutdown().await;
    }
    outcome
}
