//! Checkpoints, each beside its reference measured in the same run.
//!
//! * Restart: a cache of the warm-start table (`--warm-rows`, 1,000,000 by default)
//!   starts from PostgreSQL with a checkpoint directory and is shut down, which
//!   leaves a checkpoint there; a new cache with the same directory then starts from
//!   it. Both starts are timed until ready, and the rows each read from the table
//!   are taken from `pg_stat_user_tables`.
//! * Fan-out: `n` caches of a 100,000-row table start at the same moment while a
//!   writer runs, first each from PostgreSQL, then all from one shared checkpoint
//!   directory (`checkpoint_from`) that a single seed cache filled from PostgreSQL;
//!   time until all are ready, rows read from the table and peak connections.
//!
//! Every cache here connects under an application name of its own phase, so that the
//! sessions counted and awaited are this benchmark's, not those of another client of
//! the same database.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use tidemark_client::{Builder, StartedFrom};
use tokio_postgres::Client;

use crate::cache_bench::{
    builder, create_table, release_freed_memory, rows_read, rss_kib, start_all, Account, Key,
    Section, Sessions, WarmTable, Writer,
};
use crate::env::{drop_slot, median, BoxError, BridgeProcess, Env};

/// How long a checkpoint may take to appear after its cache is ready.
const WRITE_LIMIT: Duration = Duration::from_secs(600);

/// How long the fan-out waits for all caches of one phase.
const FAN_OUT_LIMIT: Duration = Duration::from_secs(600);

/// How long the benchmark waits for a phase's sessions to end after shutdown.
const SESSIONS_LIMIT: Duration = Duration::from_secs(60);

/// Bytes of the benchmark process's memory one cached row takes, with slack: the
/// warm-start section measures about 505 B per row.
const BYTES_PER_CACHED_ROW: u64 = 700;

/// A builder like [`builder`], whose PostgreSQL sessions carry `application_name`.
fn builder_as(
    env: &Env,
    table: &str,
    prefix: &str,
    application_name: &str,
) -> Builder<Key, Account> {
    let sep = if env.postgres.contains('?') { '&' } else { '?' };
    builder(env, table, prefix).postgres(format!(
        "{}{sep}application_name={application_name}",
        env.postgres
    ))
}

/// Waits until no session named `application_name` is left (a backend reports its
/// table counts when it disconnects), then reads [`rows_read`] until two readings a
/// second apart agree.
async fn settled_rows_read(
    pg: &Client,
    table: &str,
    application_name: &str,
) -> Result<i64, BoxError> {
    let t = Instant::now();
    loop {
        let left: i64 = pg
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&application_name],
            )
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        if t.elapsed() > SESSIONS_LIMIT {
            return Err(format!(
                "{left} sessions named {application_name} are still open {} s after their caches were shut down",
                SESSIONS_LIMIT.as_secs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut last = rows_read(pg, table).await?;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rows_read(pg, table).await?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(last)
}

/// A checkpoint file that appeared in a directory.
struct Written {
    path: PathBuf,
    /// From the moment its writer started (the time in its name) until the file
    /// was there, renamed into place.
    took: Duration,
    bytes: u64,
}

/// Watches `dir` (every 5 ms) until a checkpoint file appears in it, and returns it
/// with how long its writing took: from the time the cache stamped into its name
/// when it began (`<topic>@<milliseconds>@<instance>.ckpt`) to its appearance.
fn watch_for_checkpoint(dir: PathBuf) -> tokio::task::JoinHandle<Result<Written, BoxError>> {
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        loop {
            if let Some(path) = newest_checkpoint(&dir) {
                let seen_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let taken_ms: i64 = name
                    .split('@')
                    .nth(1)
                    .and_then(|ms| ms.parse().ok())
                    .ok_or_else(|| format!("no time in the checkpoint's name {name}"))?;
                let bytes = std::fs::metadata(&path)?.len();
                return Ok(Written {
                    path,
                    took: Duration::from_millis(seen_ms.saturating_sub(taken_ms).max(0) as u64),
                    bytes,
                });
            }
            if t.elapsed() > WRITE_LIMIT {
                return Err(format!(
                    "no checkpoint appeared in {} within {} s",
                    dir.display(),
                    WRITE_LIMIT.as_secs()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

/// The newest finished checkpoint file in `dir` (temporary files start with a dot).
fn newest_checkpoint(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| !n.starts_with('.') && n.ends_with(".ckpt"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// A fresh directory under the system's temporary directory.
fn temp_dir(what: &str) -> Result<PathBuf, BoxError> {
    let dir = std::env::temp_dir().join(format!("tidemark-bench-{what}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Restart of a cache of the warm-start table from a local checkpoint, beside a start
/// from PostgreSQL in the same run. Uses `warm` (the warm-start section's table) when
/// given, else fills a table of `rows` rows; drops it at the end.
pub async fn restart(
    env: &Env,
    warm: Option<WarmTable>,
    rows: usize,
    repeat: usize,
) -> Result<Section, BoxError> {
    let warm = match warm {
        Some(w) => w,
        None => {
            eprint!("checkpoint restart: ");
            WarmTable::create(env, rows).await?
        }
    };
    let result = restart_runs(env, &warm, repeat).await;
    warm.drop(env).await?;
    result
}

async fn restart_runs(env: &Env, warm: &WarmTable, repeat: usize) -> Result<Section, BoxError> {
    let (name, table, rows) = (&warm.name, &warm.table, warm.rows);
    let app = format!("tidemark-bench-{name}");
    let pg = env.pg().await?;
    let (mut pg_s, mut ck_s, mut write_s, mut shutdown_s, mut free_s, mut bytes) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let (mut pg_read, mut ck_read, mut ck_loaded) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..repeat {
        let dir = temp_dir("checkpoint")?;
        // (a) From PostgreSQL; the directory is empty, so the cache loads the table.
        let before = settled_rows_read(&pg, table, &app).await?;
        let watch = watch_for_checkpoint(dir.clone());
        let t = Instant::now();
        let cache = builder_as(env, table, name, &app)
            .checkpoint_dir(&dir)
            .build()
            .await?;
        let from_pg = t.elapsed();
        if cache.len() != rows {
            return Err(format!("the cache holds {} rows, expected {rows}", cache.len()).into());
        }
        // The checkpoint is written at shutdown (the first periodic one is an interval away).
        // A clone keeps the map alive through shutdown, so that freeing it is timed
        // apart.
        let map = cache.clone();
        let t = Instant::now();
        cache.shutdown().await;
        let shutdown = t.elapsed();
        let t = Instant::now();
        drop(map);
        let free = t.elapsed();
        release_freed_memory();
        let written = watch.await??;
        let after_pg = settled_rows_read(&pg, table, &app).await?;

        // (b) A new cache with the same directory.
        let t = Instant::now();
        let cache = builder_as(env, table, name, &app)
            .checkpoint_dir(&dir)
            .build()
            .await?;
        let from_ck = t.elapsed();
        let stats = cache.stats();
        let len = cache.len();
        cache.shutdown().await;
        release_freed_memory();
        match &stats.started_from {
            Some(StartedFrom::Checkpoint { location, .. })
                if Path::new(location) == written.path.as_path() => {}
            other => {
                return Err(format!(
                    "the restart did not start from the checkpoint {}: {other:?}",
                    written.path.display()
                )
                .into())
            }
        }
        if len != rows {
            return Err(format!("the restarted cache holds {len} rows, expected {rows}").into());
        }
        let after_ck = settled_rows_read(&pg, table, &app).await?;
        let _ = std::fs::remove_dir_all(&dir);

        eprintln!(
            "  run {run}: from PostgreSQL {:.2} s ({} rows read), checkpoint written in {:.2} s ({:.0} MB; shutdown {:.2} s, \
             then freeing the map {:.2} s), from the checkpoint {:.2} s ({} rows read, {} loaded)",
            from_pg.as_secs_f64(),
            after_pg - before,
            written.took.as_secs_f64(),
            written.bytes as f64 / 1e6,
            shutdown.as_secs_f64(),
            free.as_secs_f64(),
            from_ck.as_secs_f64(),
            after_ck - after_pg,
            stats.loaded_rows
        );
        pg_s.push(from_pg.as_secs_f64());
        ck_s.push(from_ck.as_secs_f64());
        write_s.push(written.took.as_secs_f64());
        shutdown_s.push(shutdown.as_secs_f64());
        free_s.push(free.as_secs_f64());
        bytes.push(written.bytes as f64);
        pg_read.push(after_pg - before);
        ck_read.push(after_ck - after_pg);
        ck_loaded.push(stats.loaded_rows);
    }
    let (p, c) = (median(pg_s), median(ck_s));
    // The largest count of any run, so that one run that read the table shows.
    let ck_rows = ck_read.iter().copied().max().unwrap_or(0);
    let pg_rows = median(pg_read.iter().map(|&r| r as f64).collect());
    let loaded = ck_loaded.iter().copied().max().unwrap_or(0);
    let met = p >= 3.0 * c && ck_rows == 0;
    let mb = median(bytes) / 1e6;
    let w = median(write_s);
    Ok(Section {
        rows: vec![
            (
                format!("restart of a {rows}-row cache from a local checkpoint"),
                format!("{c:.2} s, {ck_rows} rows read"),
                format!("from PostgreSQL {p:.2} s, {pg_rows:.0} rows read"),
                format!("{:.1} × faster", p / c),
                format!(
                    "≥ 3 × faster and 0 rows read: {}",
                    if met { "met" } else { "NOT met" }
                ),
            ),
            (
                format!("checkpoint of a {rows}-row cache, written by the cache"),
                format!("{w:.2} s, {mb:.0} MB ({:.0} B per row)", mb * 1e6 / rows as f64),
                format!("its start from PostgreSQL {p:.2} s"),
                format!("{:.2} × the start", w / p),
                "report only".into(),
            ),
        ],
        notes: vec![format!(
            "Restart: per run, a cache with a fresh `checkpoint_dir` starts from PostgreSQL (the directory is empty) \
             and is shut down as soon as it is ready, which leaves one checkpoint there (written at \
             shutdown; `shutdown().await` took {:.2} s and freeing the map afterwards {:.2} s, medians); a new cache with the same directory then starts, and \
             must report `started_from: Checkpoint` of that file and hold all {rows} rows. Both are timed from \
             `build()` to ready. Rows read are `seq_tup_read + idx_tup_fetch` of the table in \
             pg_stat_user_tables, read after the cache's sessions (an application name of their own) have ended, \
             since a backend reports its counts when it disconnects; the checkpoint figure is the largest of the \
             runs, and the caches' own `loaded_rows` agreed ({loaded} at most). The write time runs from the \
             time the cache stamps into the checkpoint's name when it starts writing until the file, renamed into \
             place, is seen (polled every 5 ms); the cache's follower pauses meanwhile, readers do not. All \
             starts run in this one process: after each cache is freed the benchmark calls glibc's \
             `malloc_trim(0)`, because otherwise glibc consolidates the freed cache's millions of small chunks \
             inside the next timed start (a profile showed over a second of `malloc_consolidate` there), a cost \
             a restarted service, being a new process, does not have.",
            median(shutdown_s),
            median(free_s)
        )],
    })
}

/// How many caches `fan_out` starts, and why fewer, if it must start fewer.
fn fan_out_count(wanted: usize, rows: usize) -> (usize, Option<String>) {
    let available_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<u64>().ok())
    });
    let Some(available_kib) = available_kib else {
        return (wanted, None);
    };
    let per_cache = rows as u64 * BYTES_PER_CACHED_ROW;
    // Leave a quarter of what is available to everything else on the machine.
    let fits = (available_kib * 1024 * 3 / 4 / per_cache.max(1)) as usize;
    if fits >= wanted {
        (wanted, None)
    } else {
        (
            fits.max(1),
            Some(format!(
                "{wanted} caches of {rows} rows need about {} GiB in this one process and {} GiB are available, so {} start",
                (wanted as u64 * per_cache) >> 30,
                available_kib >> 20,
                fits.max(1)
            )),
        )
    }
}

/// What one phase of the fan-out measured.
struct Phase {
    ready: usize,
    all_ready: Duration,
    rows_read: i64,
    writer_updates: u64,
    peak_sessions: i64,
    from_checkpoint: usize,
    /// The process's resident set when all were ready.
    rss_gib: f64,
}

/// Starts the builders at once under a steady writer and measures until they are all
/// ready; then shuts them down and reads what they cost the table.
async fn phase(
    env: &Env,
    pg: &Client,
    table: &str,
    rows: usize,
    app: &str,
    seed: impl AsyncFnOnce() -> Result<(), BoxError>,
    builders: Vec<Builder<Key, Account>>,
) -> Result<Phase, BoxError> {
    let before = settled_rows_read(pg, table, app).await?;
    let writer = Writer::start(env, table, rows);
    tokio::time::sleep(Duration::from_secs(2)).await;
    seed().await?;
    let sessions = Sessions::start(env, app);
    let (caches, ready, all_ready) = start_all(builders, FAN_OUT_LIMIT).await?;
    let rss_gib = rss_kib() as f64 / (1u64 << 20) as f64;
    let peak_sessions = sessions.stop();
    let from_checkpoint = caches
        .iter()
        .filter(|c| matches!(c.stats().started_from, Some(StartedFrom::Checkpoint { .. })))
        .count();
    join_all(caches.into_iter().map(|c| c.shutdown())).await;
    release_freed_memory();
    let writer_updates = writer.stop().await?;
    let after = settled_rows_read(pg, table, app).await?;
    Ok(Phase {
        ready,
        all_ready,
        // Each of the writer's updates fetches its one row through the primary key.
        rows_read: after - before - writer_updates as i64,
        writer_updates,
        peak_sessions,
        from_checkpoint,
        rss_gib,
    })
}

/// `wanted` caches of a 100,000-row table start at once under a steady writer, each
/// from PostgreSQL and then all from one shared checkpoint.
pub async fn fan_out(env: &Env, wanted: usize) -> Result<Section, BoxError> {
    let name = format!("benchcf{}", rand::random::<u16>());
    let rows = 100_000usize;
    let table = format!("{name}_t");
    create_table(env, &table, rows).await?;
    let bridge = BridgeProcess::start(env, &name, &format!("public.{table}"), 3).await?;
    let pg = env.pg().await?;
    let shared = temp_dir("shared-checkpoint")?;
    let result = fan_out_phases(env, &pg, &name, &table, rows, wanted, &shared).await;
    let _ = std::fs::remove_dir_all(&shared);
    bridge.stop()?;
    drop_slot(&pg, &format!("{name}_slot")).await;
    pg.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS {name}_pub; DROP TABLE {table}"
    ))
    .await?;
    result
}

async fn fan_out_phases(
    env: &Env,
    pg: &Client,
    name: &str,
    table: &str,
    rows: usize,
    wanted: usize,
    shared: &Path,
) -> Result<Section, BoxError> {
    let max_connections: String = pg.query_one("SHOW max_connections", &[]).await?.get(0);
    let (n, fewer) = fan_out_count(wanted, rows);
    if let Some(why) = &fewer {
        eprintln!("  {why}");
    }

    eprintln!("  {n} caches from PostgreSQL");
    let app = format!("tidemark-bench-{name}-pg");
    let builders = (0..n).map(|_| builder_as(env, table, name, &app)).collect();
    let a = phase(env, pg, table, rows, &app, async || Ok(()), builders).await?;
    eprintln!(
        "    {} ready in {:.2} s, {} rows read, {} sessions at most, {:.1} GiB",
        a.ready,
        a.all_ready.as_secs_f64(),
        a.rows_read,
        a.peak_sessions,
        a.rss_gib
    );

    eprintln!("  one seed cache, then {n} caches from its checkpoint");
    let app = format!("tidemark-bench-{name}-ck");
    let mut seed_took = Duration::ZERO;
    let seed = async || {
        let t = Instant::now();
        let seed = builder_as(env, table, name, &app)
            .checkpoint_dir(shared)
            .build()
            .await?;
        seed_took = t.elapsed();
        seed.shutdown().await;
        release_freed_memory();
        if newest_checkpoint(shared).is_none() {
            return Err(
                format!("the seed cache left no checkpoint in {}", shared.display()).into(),
            );
        }
        Ok(())
    };
    let location = shared.display().to_string();
    let builders = (0..n)
        .map(|_| builder_as(env, table, name, &app).checkpoint_from(location.clone()))
        .collect();
    let b = phase(env, pg, table, rows, &app, seed, builders).await?;
    eprintln!(
        "    seed {:.2} s; {} ready in {:.2} s ({} from the checkpoint), {} rows read, {} sessions at most, {:.1} GiB",
        seed_took.as_secs_f64(),
        b.ready,
        b.all_ready.as_secs_f64(),
        b.from_checkpoint,
        b.rows_read,
        b.peak_sessions,
        b.rss_gib
    );

    let ready = |p: &Phase| {
        if p.ready == n {
            format!("all ready in {:.2} s", p.all_ready.as_secs_f64())
        } else {
            format!(
                "only {} of {n} ready after {} s",
                p.ready,
                FAN_OUT_LIMIT.as_secs()
            )
        }
    };
    let met = b.ready == n && b.from_checkpoint == n && b.rows_read <= rows as i64;
    let mut notes = vec![format!(
        "Fan-out from a checkpoint: one run per phase on one table of {rows} rows, with the bridge running and a \
         writer making 200 single-row updates a second from 2 s before each phase until its caches are shut down. \
         Phase 1: {n} caches start at once, each from PostgreSQL. Phase 2: one seed cache with a `checkpoint_dir` \
         starts from PostgreSQL ({:.2} s, not in the fan-out time) and is shut down, which leaves a checkpoint; \
         then {n} caches with `checkpoint_from` that directory (read only) start at once and continue from its \
         offsets, catching up on the changes written since ({} of {n} reported `started_from: Checkpoint`). Rows \
         read are pg_stat_user_tables' sequential plus index tuples of the table from before each phase until \
         all its sessions have ended, the seed's load included, minus one per writer update (each fetches its \
         row by primary key: {} and {} updates). Sessions are the peak count of the phase's own application \
         name, sampled every 50 ms; PostgreSQL's max_connections is {max_connections}. A cache started from a \
         checkpoint still opens its PostgreSQL connection to read the table's columns and key from the catalog, \
         and keeps it (for TOAST re-reads). All {n} caches of a phase run in this one process on the machine \
         below, each with its own Kafka consumer and PostgreSQL connection; the process's resident set was \
         {:.1} GiB when phase 1's caches were all ready and {:.1} GiB at phase 2's (which reuses memory that \
         phase 1 freed, so the two do not compare the caches' sizes). As in the restart, glibc's \
         `malloc_trim(0)` runs after each phase's caches (and the seed) are shut down, so that consolidating \
         their freed memory does not land in the next timed start.",
        seed_took.as_secs_f64(),
        b.from_checkpoint,
        a.writer_updates,
        b.writer_updates,
        a.rss_gib,
        b.rss_gib
    )];
    if let Some(why) = fewer {
        notes.push(format!("Fan-out from a checkpoint: {why}."));
    }
    Ok(Section {
        rows: vec![(
            format!(
                "fan-out: {n} caches of {rows} rows start at once from one shared checkpoint, writer at 200 txn/s"
            ),
            format!(
                "{}; PostgreSQL: {} rows read in total, seed load included ({:.2} × table), at most {} connections",
                ready(&b),
                b.rows_read,
                b.rows_read as f64 / rows as f64,
                b.peak_sessions
            ),
            format!(
                "each from PostgreSQL: {}; {} rows read ({:.2} × table per cache), at most {} connections",
                ready(&a),
                a.rows_read,
                a.rows_read as f64 / (rows * n) as f64,
                a.peak_sessions
            ),
            format!(
                "{:.1} × faster, {:.0} × fewer rows read",
                a.all_ready.as_secs_f64() / b.all_ready.as_secs_f64(),
                a.rows_read as f64 / b.rows_read.max(1) as f64
            ),
            format!(
                "no more than one table scan in total: {}",
                if met { "met" } else { "NOT met" }
            ),
        )],
        notes,
    })
}
