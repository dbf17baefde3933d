//! Warm-start speed, memory per row and fan-out of the cache, each beside its
//! reference.
//!
//! * Warm start: a table of `rows` rows of about 200 bytes, loaded into a `Cache`
//!   until ready, beside `psql -c "\copy (SELECT * FROM t) TO '/dev/null'"` on the
//!   same table (the load bound).
//! * Full replay: a smaller table whose topic holds every row's insert plus 5 updates
//!   per key; a cache warm start beside rebuilding the same map by reading the whole
//!   topic from offset 0 (what a service without tidemark does at every start).
//! * Memory: resident memory added by one cache of the big table, per row, beside
//!   the row's size as JSON.
//! * Fan-out: 50 caches of the replay table start at the same moment while a writer
//!   runs; time until all are ready, and what they cost PostgreSQL.
//!
//! The checkpoint benchmarks (`checkpoint_bench`) reuse the table, the types and the
//! fan-out's writer and connection sampler defined here.

use std::collections::HashMap;
use std::hash::Hash;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tidemark_client::Cache;
use tidemark_client::Row as CachedRow;
use tidemark_core::wire::envelope::SLOT_MARKER_HEADER;
use tidemark_core::wire::{Envelope, Op, Row};

use crate::env::{
    drop_slot, median, time_and_peak, time_command, wait_until_idle, BoxError, BridgeProcess, Env,
};

/// Result rows (benchmark, figure, reference, ratio, target) and notes.
pub struct Section {
    pub rows: Vec<(String, String, String, String, String)>,
    pub notes: Vec<String>,
}

/// The benchmark table's key (`Serialize` too, for checkpoints).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub(crate) struct Key {
    id: i64,
}

/// The benchmark table's row, as a service would type it (`Serialize` too, for
/// checkpoints).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[allow(dead_code)]
pub(crate) struct Account {
    id: i64,
    name: String,
    email: String,
    balance: String,
    updated_at: String,
    note: String,
}

const COLUMNS: &str = "id int8 PRIMARY KEY, name text NOT NULL, email text NOT NULL, balance numeric(14,2) NOT NULL, \
                       updated_at timestamptz NOT NULL, note text NOT NULL";

/// Creates `table` with `rows` rows of about 200 bytes, vacuumed and analysed, and
/// checkpointed: otherwise PostgreSQL writes the new table's pages out in the
/// background while the first timed loads run, on the same two cores.
pub(crate) async fn create_table(env: &Env, table: &str, rows: usize) -> Result<(), BoxError> {
    let pg = env.pg().await?;
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} ({COLUMNS});
         INSERT INTO {table} SELECT g, 'customer ' || g, 'customer' || g || '@example.com', (g % 100000) / 7.0,
             now() - (g || ' seconds')::interval, substr(repeat(md5(g::text), 4), 1, 90)
         FROM generate_series(1, {rows}) g;"
    ))
    .await?;
    pg.batch_execute(&format!("VACUUM ANALYZE {table}")).await?;
    pg.batch_execute("CHECKPOINT").await?;
    Ok(())
}

/// Hands memory the caches freed back to the system (glibc's `malloc_trim`), so that
/// the next start in this process does not pay for consolidating it. Freeing a cache
/// leaves millions of small free chunks; without this, glibc merges them at the next
/// large allocation, which lands inside the next timed start (a profile showed over a
/// second of `malloc_consolidate` there). A restarted service is a new process and
/// has no such heap.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim takes no pointers and only reorganises glibc's own heap.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// CPU time (user plus system) a process has used, in seconds, from the text of its
/// `/proc/<pid>/stat`: fields 14 and 15, in the kernel's fixed user-visible tick of
/// 1/100 s. For the benchmark process (`/proc/self/stat`) it counts every thread,
/// ended ones included; PostgreSQL's backend reads its own with `pg_read_file`.
pub(crate) fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}

/// The benchmark process's CPU time so far, in seconds (0 if unreadable).
fn own_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_seconds(&s))
        .unwrap_or(0.0)
}

/// CPU time of the PostgreSQL backend that serves one `COPY (SELECT * FROM table) TO
/// STDOUT` (what the reference `COPY` makes the server do), read by the backend itself
/// from `/proc/self/stat` before and after. `None` where the role may not read server
/// files or the server is not on Linux.
async fn copy_backend_cpu(env: &Env, table: &str) -> Option<f64> {
    let pg = env.pg().await.ok()?;
    let stat = "SELECT pg_read_file('/proc/self/stat')";
    let before: String = pg.query_one(stat, &[]).await.ok()?.get(0);
    let copy = pg
        .copy_out(&format!("COPY (SELECT * FROM {table}) TO STDOUT"))
        .await
        .ok()?;
    futures::pin_mut!(copy);
    while let Some(chunk) = futures::StreamExt::next(&mut copy).await {
        chunk.ok()?;
    }
    let after: String = pg.query_one(stat, &[]).await.ok()?.get(0);
    Some(cpu_seconds(&after)? - cpu_seconds(&before)?)
}

/// mimalloc's shared library where a Debian or Ubuntu package (`libmimalloc2.0`) put it.
fn other_allocator() -> Option<&'static str> {
    [
        "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
        "/usr/lib/aarch64-linux-gnu/libmimalloc.so.2",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
}

/// The benchmark process's resident set, in KiB.
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A cache builder for `table` on the topics of the bridge named `prefix`.
pub(crate) fn builder(
    env: &Env,
    table: &str,
    prefix: &str,
) -> tidemark_client::Builder<Key, Account> {
    builder_for(env, table, prefix)
}

/// [`builder`] for any key and value type.
fn builder_for<K, V>(env: &Env, table: &str, prefix: &str) -> tidemark_client::Builder<K, V>
where
    K: DeserializeOwned + Hash + Eq + Clone + Send + Sync + 'static,
    V: DeserializeOwned + Send + Sync + 'static,
{
    Cache::<K, V>::builder()
        .postgres(env.postgres.clone())
        .kafka(env.kafka.clone())
        .table(format!("public.{table}"))
        .topic_prefix(prefix.to_owned())
}

/// Waits for an idle machine before a timed run and its `COPY` (at most 60 s).
async fn settle() {
    let waited = wait_until_idle(Duration::from_secs(60)).await;
    if waited > Duration::from_secs(1) {
        eprintln!(
            "    waited {:.0} s for an idle machine",
            waited.as_secs_f64()
        );
    }
}

/// Times `COPY` of the whole table to /dev/null through psql: the load's reference.
fn copy_seconds(env: &Env, table: &str) -> Result<f64, BoxError> {
    Ok(time_command(Command::new("psql").args([
        &env.postgres,
        "-q",
        "-c",
        &format!("\\copy (SELECT * FROM {table}) TO '/dev/null'"),
    ]))?
    .as_secs_f64())
}

/// A result row for a time measured beside `COPY`: `ratio` is the median of the runs'
/// own ratios (each run beside the `COPY` run just before it), steadier on a noisy
/// machine than the ratio of the two medians; `target` is the most it may be.
fn beside_copy(
    what: String,
    seconds: f64,
    rows: Option<usize>,
    copy: f64,
    ratio: f64,
    target: Option<f64>,
) -> (String, String, String, String, String) {
    let rate = rows.map_or(String::new(), |n| {
        format!(" ({:.0} rows/s)", n as f64 / seconds)
    });
    (
        what,
        format!("{seconds:.2} s{rate}"),
        format!("COPY to /dev/null via psql {copy:.2} s (median of the runs beside it)"),
        format!("{ratio:.2} × COPY"),
        target.map_or("-".into(), |t| {
            let met = if ratio <= t { "met" } else { "NOT met" };
            format!("≤ {t} × COPY: {met}")
        }),
    )
}

/// The value type of a timed load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ValueType {
    /// The benchmark's struct, [`Account`].
    Typed,
    /// The schema-agnostic [`CachedRow`].
    Row,
}

/// What one warm start in its own process measured (see [`load_once`]).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OneLoad {
    seconds: f64,
    rows: usize,
    /// Growth of the process's resident set while the cache loaded, in bytes.
    grew: u64,
    readers: usize,
    /// CPU time the process used while the cache loaded (every thread), in seconds.
    cpu: f64,
    /// Growth of the resident set when every loaded value was cloned into an `Arc` of
    /// its own after the load (less the `Vec` holding them): the value type's own
    /// memory, without the cache's.
    values_alone: u64,
}

/// One warm start of `table` in this process, which is new: the cache is built (with
/// `parallel_load(readers)` unless `None`), timed, and measured; the result goes to
/// stdout as JSON for [`timed_loads`] in the parent.
pub(crate) async fn load_once(
    env: &Env,
    value: ValueType,
    table: &str,
    prefix: &str,
    readers: Option<usize>,
) -> Result<(), BoxError> {
    async fn one<K, V>(
        env: &Env,
        table: &str,
        prefix: &str,
        readers: Option<usize>,
    ) -> Result<OneLoad, BoxError>
    where
        K: DeserializeOwned + Hash + Eq + Clone + Send + Sync + 'static,
        V: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        let before = rss_kib();
        let cpu_before = own_cpu_seconds();
        let t = Instant::now();
        let mut builder = builder_for::<K, V>(env, table, prefix);
        if let Some(n) = readers {
            builder = builder.parallel_load(n);
        }
        let cache = builder.build().await?;
        let seconds = t.elapsed().as_secs_f64();
        let cpu = own_cpu_seconds() - cpu_before;
        let grew = rss_kib().saturating_sub(before) * 1024;
        // The values alone: each loaded value cloned (its strings allocated at their
        // length, as the decoder allocates them) into an `Arc`, held in a `Vec`, as
        // the simplest holder of the same rows would.
        // Chunks freed during the load go back first, so that the clones do not
        // reuse them; the `Vec`'s own pointers are not counted.
        release_freed_memory();
        let before_alone = rss_kib();
        let mut alone: Vec<Arc<V>> = Vec::with_capacity(cache.len());
        alone.extend(cache.values().map(|v| Arc::new(V::clone(&v))));
        let pointers = (alone.capacity() * std::mem::size_of::<Arc<V>>()) as u64;
        let values_alone = (rss_kib().saturating_sub(before_alone) * 1024).saturating_sub(pointers);
        drop(alone);
        let load = OneLoad {
            seconds,
            rows: cache.len(),
            grew,
            readers: cache.stats().load_readers,
            cpu,
            values_alone,
        };
        cache.shutdown().await;
        Ok(load)
    }
    let load = match value {
        ValueType::Typed => one::<Key, Account>(env, table, prefix, readers).await?,
        ValueType::Row => one::<CachedRow, CachedRow>(env, table, prefix, readers).await?,
    };
    println!("{}", serde_json::to_string(&load)?);
    Ok(())
}

/// What [`timed_loads`] measured: medians over the runs.
#[derive(Clone, Copy)]
struct Loads {
    /// Seconds until ready.
    seconds: f64,
    /// Seconds of the `COPY` run before each load.
    copy: f64,
    /// The runs' own ratios of load to `COPY`.
    ratio: f64,
    /// Readers the last load used.
    readers: usize,
    /// Growth of the resident set per row while the cache loaded, in a new process.
    bytes_per_row: f64,
    /// CPU seconds the loading process used until ready.
    cpu: f64,
    /// The values' own memory per row, cloned into a `Vec` of `Arc`s after the load.
    values_per_row: f64,
}

impl Loads {
    /// The medians of several measurements' figures (each its own runs' medians).
    fn median_of(all: Vec<Loads>) -> Loads {
        let of = |f: fn(&Loads) -> f64| median(all.iter().map(f).collect());
        Loads {
            seconds: of(|l| l.seconds),
            copy: of(|l| l.copy),
            ratio: of(|l| l.ratio),
            readers: all.last().map_or(0, |l| l.readers),
            bytes_per_row: of(|l| l.bytes_per_row),
            cpu: of(|l| l.cpu),
            values_per_row: of(|l| l.values_per_row),
        }
    }
}

/// `repeat` warm starts of `table` into a cache of `value`s with
/// `parallel_load(readers)` (`None`: the default), each in a new process (this
/// binary with `--load-once`), as a service's warm start is, right after a `COPY` of
/// the table. A later load in one long-lived process reuses the heap and the threads
/// that earlier loads grew, and measured 5 to 10 % faster than a first one.
async fn timed_loads(
    env: &Env,
    value: ValueType,
    table: &str,
    prefix: &str,
    readers: Option<usize>,
    repeat: usize,
) -> Result<Loads, BoxError> {
    timed_loads_with(env, value, table, prefix, readers, repeat, None).await
}

/// [`timed_loads`], each process with `allocator`, a shared library, in `LD_PRELOAD`
/// (which replaces glibc's `malloc` for the whole process) when given.
async fn timed_loads_with(
    env: &Env,
    value: ValueType,
    table: &str,
    prefix: &str,
    readers: Option<usize>,
    repeat: usize,
    allocator: Option<&str>,
) -> Result<Loads, BoxError> {
    let (mut took, mut per_row, mut used) = (Vec::new(), Vec::new(), 0);
    let (mut copies, mut ratios) = (Vec::new(), Vec::new());
    let (mut cpu, mut alone) = (Vec::new(), Vec::new());
    let value_arg = clap::ValueEnum::to_possible_value(&value)
        .ok_or("a value type without a name")?
        .get_name()
        .to_owned();
    for _ in 0..repeat {
        settle().await;
        let copy = copy_seconds(env, table)?;
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.args(["--postgres", &env.postgres, "--kafka", &env.kafka])
            .args(["--load-once", &value_arg])
            .args(["--load-table", table, "--load-prefix", prefix])
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true);
        if let Some(n) = readers {
            cmd.args(["--load-readers", &n.to_string()]);
        }
        if let Some(library) = allocator {
            cmd.env("LD_PRELOAD", library);
        }
        let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
            .await
            .map_err(|_| "a load in its own process took more than 300 s")??;
        if !out.status.success() {
            return Err(format!("a load in its own process failed: {}", out.status).into());
        }
        let load: OneLoad = serde_json::from_slice(&out.stdout)?;
        eprintln!("    run: {:.2} s, COPY {copy:.2} s", load.seconds);
        took.push(load.seconds);
        ratios.push(load.seconds / copy);
        copies.push(copy);
        per_row.push(load.grew as f64 / load.rows.max(1) as f64);
        alone.push(load.values_alone as f64 / load.rows.max(1) as f64);
        cpu.push(load.cpu);
        used = load.readers;
    }
    Ok(Loads {
        seconds: median(took),
        copy: median(copies),
        ratio: median(ratios),
        readers: used,
        bytes_per_row: median(per_row),
        cpu: median(cpu),
        values_per_row: median(alone),
    })
}

/// Average size of a row as JSON (the envelope's `after`), from the table.
async fn row_json_bytes(env: &Env, table: &str) -> Result<f64, BoxError> {
    let pg = env.pg().await?;
    let avg: f64 = pg
        .query_one(&format!("SELECT avg(length(row_to_json(t)::text))::float8 FROM (SELECT * FROM {table} LIMIT 10000) t"), &[])
        .await?
        .get(0);
    Ok(avg)
}

/// The warm-start table and its (empty) topic, kept for the checkpoint benchmark so
/// that a 1,000,000-row table is filled once per run.
pub(crate) struct WarmTable {
    /// The bridge's name: the topic prefix.
    pub name: String,
    /// The table, in `public`.
    pub table: String,
    /// Its rows.
    pub rows: usize,
}

impl WarmTable {
    /// Fills a new table of `rows` rows and has the bridge create its topic.
    pub async fn create(env: &Env, rows: usize) -> Result<Self, BoxError> {
        let name = format!("benchws{}", rand::random::<u16>());
        let table = format!("{name}_t");
        eprintln!("filling {table} with {rows} rows");
        create_table(env, &table, rows).await?;
        // The bridge creates the (empty) topic; the cache needs it to exist.
        BridgeProcess::start(env, &name, &format!("public.{table}"), 3)
            .await?
            .stop()?;
        Ok(WarmTable { name, table, rows })
    }

    /// Drops the bridge's slot and publication and the table (the topic stays,
    /// like every benchmark topic).
    pub async fn drop(self, env: &Env) -> Result<(), BoxError> {
        let (name, table) = (&self.name, &self.table);
        let pg = env.pg().await?;
        drop_slot(&pg, &format!("{name}_slot")).await;
        pg.batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {name}_pub; DROP TABLE IF EXISTS {table}"
        ))
        .await?;
        Ok(())
    }
}

/// Warm start and memory on the big table; full replay on a small one. With
/// `keep`, the big table is returned instead of dropped (see [`WarmTable`]).
pub async fn warm_start(
    env: &Env,
    rows: usize,
    repeat: usize,
    keep: bool,
) -> Result<(Section, Option<WarmTable>), BoxError> {
    let mut out = Section {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    eprint!("warm start: ");
    let warm = WarmTable::create(env, rows).await?;
    let (name, table) = (warm.name.clone(), warm.table.clone());
    // One untimed load first, so that PostgreSQL's buffers and the page cache hold
    // the new table for the timed loads as for its `COPY` runs. (The loads right
    // after the table and its topic were made once took up to twice as long as later
    // ones; that was the follower's first watermark refresh, done before any record
    // was read while the new topic's slot markers were still to replay, see
    // docs/performance.md.)
    builder(env, &table, &name).build().await?.shutdown().await;
    release_freed_memory();

    let load = timed_loads(env, ValueType::Typed, &table, &name, None, repeat).await?;
    eprintln!(
        "  default readers: cache {:.2} s, COPY {:.2} s, {:.2} × COPY, {:.0} B RSS per row",
        load.seconds, load.copy, load.ratio, load.bytes_per_row
    );
    out.rows.push(beside_copy(
        format!(
            "warm start, {rows} rows (~200 B), typed, default readers ({})",
            load.readers
        ),
        load.seconds,
        Some(rows),
        load.copy,
        load.ratio,
        Some(1.2),
    ));
    out.rows
        .extend(readers_and_dump(env, &table, &name, rows, repeat).await?);
    let json = row_json_bytes(env, &table).await?;
    let rss = load.bytes_per_row;
    out.rows.push((
        "memory per cached row (typed struct)".into(),
        format!("{rss:.0} B RSS per row"),
        format!("row as JSON {json:.0} B"),
        format!("{:.2} × JSON", rss / json),
        format!(
            "≤ 1.5 × JSON: {}",
            if rss <= 1.5 * json { "met" } else { "NOT met" }
        ),
    ));
    let alone = load.values_per_row;
    out.rows.push((
        "the typed struct alone, no cache: each loaded value cloned into an Arc of its own".into(),
        format!("{alone:.0} B RSS per row"),
        format!("row as JSON {json:.0} B"),
        format!("{:.2} × JSON", alone / json),
        format!(
            "reference: the value type's own memory; the cache adds {:.0} B per row to it",
            rss - alone
        ),
    ));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut server = Vec::new();
    for _ in 0..repeat {
        server.extend(copy_backend_cpu(env, &table).await);
    }
    match server.is_empty() {
        false => {
            let server = median(server);
            let floor = (load.cpu + server) / cores as f64;
            eprintln!(
                "  CPU per typed load: cache {:.2} s, PostgreSQL's COPY {server:.2} s",
                load.cpu
            );
            out.rows.push((
                "CPU of a typed warm start: the loading process, and PostgreSQL's backend for the same COPY".into(),
                format!("cache {:.2} s + PostgreSQL {server:.2} s", load.cpu),
                format!("{cores} cores, COPY {:.2} s", load.copy),
                format!("{:.2} × COPY", floor / load.copy),
                "a floor for this code with glibc's malloc, not a target: the load cannot end before that CPU time, spread evenly over the cores".into(),
            ));
        }
        true => out.notes.push(
            "CPU of PostgreSQL's COPY: not measured (the benchmark's role may not read /proc/self/stat through pg_read_file)."
                .into(),
        ),
    }
    match other_allocator() {
        Some(library) => {
            // One run of each at a time, so that both see the same stretch of the
            // machine's noise.
            let (mut glibc, mut other) = (Vec::new(), Vec::new());
            for _ in 0..repeat {
                glibc.push(timed_loads_with(env, ValueType::Typed, &table, &name, None, 1, None).await?);
                other.push(timed_loads_with(env, ValueType::Typed, &table, &name, None, 1, Some(library)).await?);
            }
            let (glibc, other) = (Loads::median_of(glibc), Loads::median_of(other));
            eprintln!(
                "  with {library}: cache {:.2} s, {:.2} × COPY, {:.0} B RSS per row, {:.2} s CPU (glibc alternating: {:.2} s, {:.2} ×, {:.2} s CPU)",
                other.seconds, other.ratio, other.bytes_per_row, other.cpu, glibc.seconds, glibc.ratio, glibc.cpu
            );
            for (loads, allocator) in [(&glibc, "glibc's malloc"), (&other, "mimalloc (LD_PRELOAD)")] {
                let mut row = beside_copy(
                    format!("warm start, {rows} rows, typed, default readers, {allocator}, the two alternating"),
                    loads.seconds,
                    Some(rows),
                    loads.copy,
                    loads.ratio,
                    None,
                );
                row.1 = format!("{}; {:.2} s of CPU", row.1, loads.cpu);
                out.rows.push(row);
            }
            out.rows.push((
                "memory per cached row (typed struct), mimalloc (LD_PRELOAD)".into(),
                format!("{:.0} B RSS per row", other.bytes_per_row),
                format!("row as JSON {json:.0} B"),
                format!("{:.2} × JSON", other.bytes_per_row / json),
                format!(
                    "reference: the same rows' values alone take {:.0} B",
                    other.values_per_row
                ),
            ));
        }
        None => out.notes.push(
            "The rows with mimalloc were not measured: libmimalloc.so.2 is not installed (scripts/bench.sh installs it with apt-get)."
                .into(),
        ),
    }
    out.notes.push(format!(
        "Readers: the warm start with `Builder::parallel_load(n)`, n connections each copying a range of the table's pages in \
         the load's exported snapshot, the decoding on {} thread(s) (one per core but one). `dump` is the example binary \
         (`Cache<Row, Row>`, the schema-agnostic value type) with `--follow 0` and its output to /dev/null: load, \
         sort and print, as its own process; its memory is that process's peak resident set (its `VmHWM`) per row. \
         Every timed load runs in a new process (the benchmark binary again), as a service's warm start does, and like every \
         `dump` run it comes right after its own `COPY` of the table, once the machine is idle (under 10 % busy over half a \
         second). Its ratio is the median of the runs' own ratios, which this machine's noise (COPY alone took 1.2 to 2.1 s \
         in one hour) moves less than the ratio of two medians. One untimed load of the table comes before the timed ones.",
        std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).clamp(1, 4))
    ));
    out.notes.push(
        "Memory is the growth of the loading process's resident set while its cache loads, divided by its rows (the median of the runs); \
         it includes allocator slack and the map's own overhead."
            .into(),
    );
    let kept = if keep {
        Some(warm)
    } else {
        warm.drop(env).await?;
        None
    };

    let replay = full_replay(env, 100_000, repeat).await?;
    out.rows.extend(replay.rows);
    out.notes.extend(replay.notes);
    Ok((out, kept))
}

/// The warm start of `table` with 1, 2 and 4 readers (typed and `Row`), and `dump`
/// (`Row`) with the default readers, each beside `COPY`; the `Row` cache's and
/// `dump`'s memory.
async fn readers_and_dump(
    env: &Env,
    table: &str,
    prefix: &str,
    rows: usize,
    repeat: usize,
) -> Result<Vec<(String, String, String, String, String)>, BoxError> {
    let mut out = Vec::new();
    for readers in [1, 2, 4] {
        let loads =
            timed_loads(env, ValueType::Typed, table, prefix, Some(readers), repeat).await?;
        let (c, used) = (loads.seconds, loads.readers);
        eprintln!(
            "  {readers} reader(s) (used {used}): {c:.2} s, {:.2} × COPY",
            loads.ratio
        );
        out.push(beside_copy(
            format!("warm start, typed, parallel_load({readers}), {used} read"),
            c,
            Some(rows),
            loads.copy,
            loads.ratio,
            None,
        ));
    }
    // The same for the schema-agnostic value type.
    let mut row_bytes = 0.0;
    for readers in [1, 2, 4] {
        let loads = timed_loads(env, ValueType::Row, table, prefix, Some(readers), repeat).await?;
        let (c, used) = (loads.seconds, loads.readers);
        if readers == 1 {
            row_bytes = loads.bytes_per_row;
        }
        eprintln!(
            "  Row, {readers} reader(s) (used {used}): {c:.2} s, {:.2} × COPY, {:.0} B RSS per row",
            loads.ratio, loads.bytes_per_row
        );
        out.push(beside_copy(
            format!("warm start, Row, parallel_load({readers}), {used} read"),
            c,
            Some(rows),
            loads.copy,
            loads.ratio,
            (readers == 1).then_some(2.0),
        ));
    }
    let dump = std::env::current_exe()?
        .with_file_name("examples")
        .join("dump");
    if !dump.exists() {
        return Err(format!(
            "{} is missing: build it with cargo build --release -p tidemark-examples --examples",
            dump.display()
        )
        .into());
    }
    let (mut took, mut peak, mut copies, mut ratios) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeat {
        settle().await;
        let copy = copy_seconds(env, table)?;
        let (t, p) = time_and_peak(
            Command::new(&dump)
                .args(["--postgres", &env.postgres, "--kafka", &env.kafka])
                .args(["--table", &format!("public.{table}")])
                .args(["--topic-prefix", prefix, "--follow", "0"])
                .stderr(std::process::Stdio::null()),
        )?;
        eprintln!(
            "  dump run: {:.2} s, COPY {copy:.2} s, peak {:.0} B per row",
            t.as_secs_f64(),
            p as f64 / rows as f64
        );
        took.push(t.as_secs_f64());
        ratios.push(t.as_secs_f64() / copy);
        copies.push(copy);
        peak.push(p as f64);
    }
    let (d, p) = (median(took), median(peak));
    let json = row_json_bytes(env, table).await?;
    let ratio = median(ratios);
    eprintln!(
        "  dump: {d:.2} s, {ratio:.2} × COPY, peak {:.0} B per row",
        p / rows as f64
    );
    out.push(beside_copy(
        format!("dump (Row), {rows} rows, load + sort + print"),
        d,
        None,
        median(copies),
        ratio,
        Some(2.0),
    ));
    out.push((
        "memory per cached row (Row)".into(),
        format!("{row_bytes:.0} B RSS per row"),
        format!("row as JSON {json:.0} B"),
        format!("{:.2} × JSON", row_bytes / json),
        format!(
            "≤ 2 × JSON: {}",
            if row_bytes <= 2.0 * json {
                "met"
            } else {
                "NOT met"
            }
        ),
    ));
    out.push((
        "dump's peak memory (Row cache plus its sorted list)".into(),
        format!("{:.0} B per row", p / rows as f64),
        format!("row as JSON {json:.0} B"),
        format!("{:.2} × JSON", p / rows as f64 / json),
        format!(
            "≤ 2 × JSON: {}",
            if p / rows as f64 <= 2.0 * json {
                "met"
            } else {
                "NOT met"
            }
        ),
    ));
    Ok(out)
}

/// The replay table: `rows` rows, then 5 updates per key, all through the bridge.
async fn replay_table(
    env: &Env,
    name: &str,
    rows: usize,
) -> Result<(String, String, BridgeProcess), BoxError> {
    let table = format!("{name}_t");
    let pg = env.pg().await?;
    pg.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} ({COLUMNS})"
    ))
    .await?;
    let bridge = BridgeProcess::start(env, name, &format!("public.{table}"), 3).await?;
    pg.batch_execute(&format!(
        "INSERT INTO {table} SELECT g, 'customer ' || g, 'customer' || g || '@example.com', 0, now(),
             substr(repeat(md5(g::text), 4), 1, 90) FROM generate_series(1, {rows}) g"
    ))
    .await?;
    for round in 1..=5 {
        for start in (1..=rows).step_by(10_000) {
            pg.batch_execute(&format!(
                "UPDATE {table} SET balance = balance + {round}, updated_at = now() WHERE id BETWEEN {start} AND {}",
                start + 9_999
            ))
            .await?;
        }
    }
    let topic = format!("{name}.public.{table}");
    let consumer = env.consumer()?;
    let expected = (rows * 6) as i64;
    let t = Instant::now();
    while env.records_in(&consumer, &topic) < expected {
        if t.elapsed() > Duration::from_secs(900) {
            return Err(format!(
                "the bridge wrote {} of {expected} records in 15 minutes",
                env.records_in(&consumer, &topic)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((table, topic, bridge))
}

/// How long one full replay may take before the section is reported as failed.
const REPLAY_LIMIT: Duration = Duration::from_secs(600);

/// Rebuilds the map from the whole topic, the way a service without tidemark does.
fn replay_topic(env: &Env, topic: &str) -> Result<(Duration, usize), BoxError> {
    let consumer = env.consumer()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        ends.insert(p.id(), high);
    }
    let t = Instant::now();
    consumer.assign(&tpl)?;
    let mut map: HashMap<Vec<u8>, Account> = HashMap::new();
    let mut done = ends.iter().filter(|(_, &h)| h == 0).count();
    while done < ends.len() {
        if t.elapsed() > REPLAY_LIMIT {
            return Err(format!(
                "the full replay read {} keys and did not finish within {} s",
                map.len(),
                REPLAY_LIMIT.as_secs()
            )
            .into());
        }
        let Some(msg) = consumer.poll(Duration::from_secs(5)) else {
            continue;
        };
        let msg = msg?;
        let key = msg.key().unwrap_or_default().to_vec();
        // The bridge's slot markers are not changes.
        let marker = {
            use rdkafka::message::Headers as _;
            msg.headers()
                .is_some_and(|h| h.iter().any(|h| h.key == SLOT_MARKER_HEADER))
        };
        if let Some(payload) = msg.payload().filter(|_| !marker) {
            let env: Envelope = serde_json::from_slice(payload)?;
            match env.op {
                Op::Delete => {
                    map.remove(&key);
                }
                _ => {
                    if let Some(after) = env.after {
                        let row: Account =
                            serde_json::from_value(serde_json::Value::Object(after as Row))?;
                        map.insert(key, row);
                    }
                }
            }
        }
        if msg.offset() + 1 == ends[&msg.partition()] {
            done += 1;
        }
    }
    Ok((t.elapsed(), map.len()))
}

async fn full_replay(env: &Env, rows: usize, repeat: usize) -> Result<Section, BoxError> {
    let name = format!("benchrp{}", rand::random::<u16>());
    eprintln!("full replay: {rows} rows x 6 versions through the bridge");
    let (table, topic, bridge) = replay_table(env, &name, rows).await?;
    let (mut cache_s, mut replay_s) = (Vec::new(), Vec::new());
    for run in 0..repeat {
        let t = Instant::now();
        let cache = builder(env, &table, &name).build().await?;
        let took = t.elapsed();
        assert_eq!(cache.len(), rows, "the cache holds the table");
        cache.shutdown().await;
        let (env2, topic2) = (env.clone(), topic.clone());
        let (replay, n) =
            tokio::task::spawn_blocking(move || replay_topic(&env2, &topic2)).await??;
        if n != rows {
            return Err(format!("the replay rebuilt {n} rows, expected {rows}").into());
        }
        eprintln!(
            "  run {run}: cache {:.2} s, full replay {:.2} s",
            took.as_secs_f64(),
            replay.as_secs_f64()
        );
        cache_s.push(took.as_secs_f64());
        replay_s.push(replay.as_secs_f64());
    }
    bridge.stop()?;
    let (c, r) = (median(cache_s), median(replay_s));
    let mut out = Section {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    out.rows.push((
        format!(
            "warm start vs full replay, {rows} rows, topic of {} records (5 updates per key)",
            rows * 6
        ),
        format!("cache {c:.2} s"),
        format!("replay from offset 0 {r:.2} s"),
        format!("{:.1} × faster", r / c),
        format!(
            "≥ 5 × faster: {}",
            if r >= 5.0 * c { "met" } else { "NOT met" }
        ),
    ));
    out.notes.push(format!(
        "The replay comparison uses a {rows}-row table so that its topic ({} records) can be written through \
         the bridge within the run; the 1,000,000-row table is used for the COPY comparison and memory.",
        rows * 6
    ));
    let pg = env.pg().await?;
    drop_slot(&pg, &format!("{name}_slot")).await;
    // The fan-out creates its own table, so this one goes too.
    pg.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS {name}_pub; DROP TABLE IF EXISTS {table}"
    ))
    .await?;
    Ok(out)
}

/// A steady writer: 200 single-row updates a second, by primary key, on its own
/// connection.
pub(crate) struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<u64, BoxError>>,
}

impl Writer {
    /// Starts updating `table` (keys `1..=rows`).
    pub fn start(env: &Env, table: &str, rows: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (env, table, stop) = (env.clone(), table.to_owned(), stop.clone());
            async move {
                let pg = env.pg().await?;
                let mut tick = tokio::time::interval(Duration::from_millis(5));
                let mut i = 0u64;
                while !stop.load(AtomicOrdering::Relaxed) {
                    tick.tick().await;
                    i += 1;
                    pg.execute(
                        &format!("UPDATE {table} SET balance = balance + 1 WHERE id = $1"),
                        &[&((i % rows as u64) as i64 + 1)],
                    )
                    .await?;
                }
                Ok::<u64, BoxError>(i)
            }
        });
        Writer { stop, task }
    }

    /// Stops the writer and returns how many updates it made; its connection is
    /// closed when this returns.
    pub async fn stop(self) -> Result<u64, BoxError> {
        self.stop.store(true, AtomicOrdering::Relaxed);
        self.task.await?
    }
}

/// Samples, every 50 ms, how many PostgreSQL sessions carry an application name,
/// and keeps the peak.
pub(crate) struct Sessions {
    peak: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<Result<(), BoxError>>,
}

impl Sessions {
    /// Starts sampling sessions named `application_name`.
    pub fn start(env: &Env, application_name: &str) -> Self {
        let peak = Arc::new(AtomicI64::new(0));
        let task = tokio::spawn({
            let (env, peak, app) = (env.clone(), peak.clone(), application_name.to_owned());
            async move {
                let pg = env.pg().await?;
                loop {
                    let c: i64 = pg
                        .query_one(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                            &[&app],
                        )
                        .await?
                        .get(0);
                    peak.fetch_max(c, AtomicOrdering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Sessions { peak, task }
    }

    /// Stops sampling and returns the peak.
    pub fn stop(self) -> i64 {
        self.task.abort();
        self.peak.load(AtomicOrdering::Relaxed)
    }
}

/// Rows read from `table` so far: sequential plus index tuples, from
/// `pg_stat_user_tables` (after flushing this session's own counts).
pub(crate) async fn rows_read(pg: &tokio_postgres::Client, table: &str) -> Result<i64, BoxError> {
    pg.batch_execute("SELECT pg_stat_force_next_flush()")
        .await?;
    Ok(pg
        .query_one(
            "SELECT (seq_tup_read + coalesce(idx_tup_fetch, 0))::int8 FROM pg_stat_user_tables WHERE relname = $1",
            &[&table],
        )
        .await?
        .get(0))
}

/// Starts one cache per builder at the same moment and waits until all are ready
/// or `limit` has passed; returns the caches, how many became ready and when the
/// last one did.
pub(crate) async fn start_all(
    builders: Vec<tidemark_client::Builder<Key, Account>>,
    limit: Duration,
) -> Result<(Vec<Cache<Key, Account>>, usize, Duration), BoxError> {
    let t = Instant::now();
    let caches: Vec<Cache<Key, Account>> = builders
        .into_iter()
        .map(|b| b.start())
        .collect::<Result<_, _>>()?;
    let deadline = t + limit;
    let mut ready = 0;
    for c in &caches {
        let left = deadline.saturating_duration_since(Instant::now());
        if matches!(tokio::time::timeout(left, c.ready()).await, Ok(Ok(()))) {
            ready += 1;
        }
    }
    Ok((caches, ready, t.elapsed()))
}

/// How long the fan-out waits for all caches.
const FAN_OUT_LIMIT: Duration = Duration::from_secs(180);

/// `n` caches starting at once under a steady writer.
pub async fn fan_out(env: &Env, n: usize) -> Result<Section, BoxError> {
    let name = format!("benchfo{}", rand::random::<u16>());
    let rows = 100_000usize;
    let table = format!("{name}_t");
    create_table(env, &table, rows).await?;
    let bridge = BridgeProcess::start(env, &name, &format!("public.{table}"), 3).await?;
    let pg = env.pg().await?;
    let read_before = rows_read(&pg, &table).await?;
    let writer = Writer::start(env, &table, rows);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let sessions = Sessions::start(env, "tidemark-client");
    let builders = (0..n).map(|_| builder(env, &table, &name)).collect();
    let (caches, ready, all_ready) = start_all(builders, FAN_OUT_LIMIT).await?;
    let max_conns = sessions.stop();
    writer.stop().await?;
    let read_after = rows_read(&pg, &table).await?;
    for c in caches {
        c.shutdown().await;
    }
    bridge.stop()?;
    drop_slot(&pg, &format!("{name}_slot")).await;
    pg.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS {name}_pub; DROP TABLE {table}"
    ))
    .await?;
    let rows_read = read_after - read_before;
    Ok(Section {
        rows: vec![(
            format!("fan-out: {n} caches of {rows} rows start at once, writer at 200 txn/s"),
            if ready == n {
                format!("all ready in {:.2} s", all_ready.as_secs_f64())
            } else {
                format!("only {ready} of {n} ready after {} s", FAN_OUT_LIMIT.as_secs())
            },
            format!(
                "PostgreSQL: {rows_read} rows read ({:.2} × table per cache), at most {} connections",
                rows_read as f64 / (rows * n) as f64,
                max_conns
            ),
            "-".into(),
            "report only".into(),
        )],
        notes: vec![
            "Fan-out rows read come from pg_stat_user_tables (sequential plus index tuples) before and after; \
             connections are the peak count of sessions named tidemark-client, sampled every 50 ms."
                .into(),
        ],
    })
}
