//! Dumps a table through a tidemark cache: warm start, catch up, follow for a while,
//! then print one JSON line per row, sorted by key, as `{"key": {...}, "value": {...}}`.
//!
//! ```text
//! cargo run --release --example dump -- --postgres URL --kafka BROKERS --table schema.table \
//!     [--strategy snapshot|watermark --ts-column COL] [--follow SECONDS] \
//!     [--checkpoint DIR] [--checkpoint-from DIR|URL] [--parallel-load N]
//! ```
//!
//! With `--checkpoint DIR` it starts from the newest usable checkpoint in DIR (else
//! from `--checkpoint-from`, else from PostgreSQL) and writes one to DIR when it
//! exits. The closing line on stderr says where the rows came from.
//!
//! With `--follow 0` it prints as soon as the cache is ready. Logs go to stderr, so
//! stdout can be compared with the table directly. It exits within `--follow` plus
//! `--startup-timeout` seconds (and the time to print): with status 1 and the step that
//! did not finish when the cache is not ready in time.

use std::cmp::Ordering;
use std::io::Write;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::Value;
use tidemark_client::Row;
use tidemark_client::{Cache, StartedFrom, Strategy};

/// Dump a table through a tidemark cache.
#[derive(Parser, Debug)]
struct Args {
    /// PostgreSQL URL.
    #[arg(long, env = "TIDEMARK_POSTGRES", hide_env_values = true)]
    postgres: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "TIDEMARK_KAFKA")]
    kafka: String,
    /// The table, schema.table.
    #[arg(long)]
    table: String,
    /// How the load and the stream meet.
    #[arg(long, value_enum, default_value_t = StrategyArg::Snapshot)]
    strategy: StrategyArg,
    /// The watermark strategy's ts column.
    #[arg(long, required_if_eq("strategy", "watermark"))]
    ts_column: Option<String>,
    /// Seconds to keep following the topic after the cache is ready.
    #[arg(long, default_value_t = 0)]
    follow: u64,
    /// The topic, when it does not follow the naming rule.
    #[arg(long)]
    topic: Option<String>,
    /// The bridge's topic prefix.
    #[arg(long, default_value = tidemark_client::DEFAULT_TOPIC_PREFIX)]
    topic_prefix: String,
    /// Seconds replayed before the snapshot time.
    #[arg(long)]
    safety_window: Option<u64>,
    /// Seconds the cache may take to be ready; past them dump exits with status 1 and
    /// names the step that did not finish.
    #[arg(long, default_value_t = tidemark_client::DEFAULT_STARTUP_TIMEOUT.as_secs())]
    startup_timeout: u64,
    /// A checkpoint directory: start from its newest usable checkpoint, and write
    /// one there on exit.
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<std::path::PathBuf>,
    /// Where else to look for a checkpoint at start: a shared directory or an
    /// http(s) URL (read only).
    #[arg(long, value_name = "DIR|URL")]
    checkpoint_from: Option<String>,
    /// Connections that read the table in parallel, each a range of its pages in one
    /// snapshot [default: from the table's size and the cores].
    #[arg(long, value_name = "N")]
    parallel_load: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StrategyArg {
    Snapshot,
    Watermark,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dump: {e}");
            // At once: a Kafka request of the stopped cache may still be running on a
            // blocking thread, and the runtime would wait for it.
            std::process::exit(1)
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    tidemark_examples::init_logging("warn");
    let args = Args::parse();
    let strategy = match (args.strategy, args.ts_column) {
        (StrategyArg::Snapshot, _) => Strategy::Snapshot,
        (StrategyArg::Watermark, Some(ts_column)) => Strategy::Watermark { ts_column },
        (StrategyArg::Watermark, None) => {
            return Err("--strategy watermark needs --ts-column".into())
        }
    };
    let mut builder = Cache::<Row, Row>::builder()
        .postgres(args.postgres)
        .kafka(args.kafka)
        .table(args.table)
        .topic_prefix(args.topic_prefix)
        .strategy(strategy);
    if let Some(topic) = args.topic {
        builder = builder.topic(topic);
    }
    let checkpointing = args.checkpoint.is_some();
    if let Some(dir) = args.checkpoint {
        builder = builder.checkpoint_dir(dir);
    }
    if let Some(location) = args.checkpoint_from {
        builder = builder.checkpoint_from(location);
    }
    if let Some(readers) = args.parallel_load {
        builder = builder.parallel_load(readers);
    }
    if let Some(secs) = args.safety_window {
        builder = builder.safety_window(Duration::from_secs(secs));
    }
    let cache = builder
        .startup_timeout(Duration::from_secs(args.startup_timeout))
        .build()
        .await?;
    if args.follow > 0 {
        tokio::time::sleep(Duration::from_secs(args.follow)).await;
    }
    // The key columns, from one key; the rows' values hold them too, so only the
    // values are collected (copying a million keys costs seconds).
    let key_columns: Vec<String> = cache
        .iter()
        .next()
        .map(|(key, _)| key.columns().map(String::from).collect())
        .unwrap_or_default();
    // With a directory for checkpoints, shutting down writes one. It starts now, but
    // the follower's last changes and the checkpoint wait until the rows, which stay
    // locked for reading in the map, are printed. Without a directory there is
    // nothing to wait for: the process ends when the rows are printed.
    let stopping = checkpointing.then(|| tokio::spawn(cache.clone().shutdown()));
    // A failed print (a closed pipe, say) still lets the checkpoint be written.
    let printed = print_rows(&key_columns, &cache);
    if let Some(stopping) = stopping {
        if !matches!(
            tokio::time::timeout(Duration::from_secs(600), stopping).await,
            Ok(Ok(()))
        ) {
            eprintln!("dump: the cache did not stop within 600 s of printing the rows");
        }
    }
    printed?;
    let stats = cache.stats();
    eprintln!(
        "dump: {} rows (loaded {}, applied {}, skipped as already loaded {}, duplicates {}, bad records {})",
        stats.rows,
        stats.loaded_rows,
        stats.applied,
        stats.skipped_in_snapshot,
        stats.duplicates,
        stats.bad_records
    );
    let source = match &stats.started_from {
        Some(StartedFrom::Checkpoint { location, taken_ms }) => {
            format!("rows came from checkpoint {location} (taken at {taken_ms} ms since the epoch)")
        }
        Some(StartedFrom::Postgres { refused: Some(why) }) => {
            format!("rows came from PostgreSQL (no usable checkpoint: {why})")
        }
        Some(StartedFrom::Postgres { refused: None }) | None => {
            "rows came from PostgreSQL".to_owned()
        }
    };
    let written = if stats.checkpoints_written > 0 {
        "; checkpoint written"
    } else {
        ""
    };
    eprintln!("dump: {source}{written}");
    // Ends here, without freeing a million rows one by one on the way out.
    std::process::exit(0)
}

/// Prints the rows sorted by key: for one integer key column, from (key, row) pairs;
/// else from the rows sorted over their key columns; else sorted by the map's keys.
/// The rows stay in the map, locked for reading, until they are printed: nothing is
/// copied and no reference is counted, so the pass over the map does not wait for
/// each row's memory in turn.
fn print_rows(
    key_columns: &[String],
    cache: &Cache<Row, Row>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let names = key_columns
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<Vec<_>, _>>()?;
    cache.read_all(|rows| {
        let rows: Vec<(&Row, &Row)> = rows.collect();
        if let [column] = key_columns {
            let pairs: Option<Vec<(i64, &Row)>> = rows
                .iter()
                .map(|&(_, row)| Some((row.get_i64(column)?, row)))
                .collect();
            if let Some(mut pairs) = pairs {
                drop(rows);
                // Each key occurs once: sorting by the key alone is a total order.
                pairs.sort_unstable_by_key(|(key, _)| *key);
                return print_sorted(&mut out, pairs.len(), |j, buf| {
                    let (key, row) = pairs[j];
                    buf.extend_from_slice(b"{\"key\":{");
                    buf.extend_from_slice(&names[0]);
                    write!(buf, ":{key}}},\"value\":")?;
                    serde_json::to_writer(&mut *buf, row)?;
                    buf.extend_from_slice(b"}\n");
                    Ok(())
                });
            }
        }
        // The key values of all rows in one flat vector (row i's at i*k..(i+1)*k), and
        // the rows' order sorted over it: no vector per row.
        let k = key_columns.len().max(1);
        let keys: Option<Vec<Value>> = rows
            .iter()
            .flat_map(|(_, row)| key_columns.iter().map(move |c| row.get(c)))
            .collect();
        match keys {
            Some(keys) if !key_columns.is_empty() && keys.len() == rows.len() * k => {
                let key_of = |i: usize| &keys[i * k..(i + 1) * k];
                let mut order: Vec<usize> = (0..rows.len()).collect();
                order.sort_unstable_by(|&a, &b| compare_key_values(key_of(a), key_of(b)));
                print_sorted(&mut out, order.len(), |j, buf| {
                    let i = order[j];
                    buf.extend_from_slice(b"{\"key\":{");
                    for (n, (column, v)) in names.iter().zip(key_of(i)).enumerate() {
                        if n > 0 {
                            buf.push(b',');
                        }
                        buf.extend_from_slice(column);
                        buf.push(b':');
                        serde_json::to_writer(&mut *buf, v)?;
                    }
                    buf.extend_from_slice(b"},\"value\":");
                    serde_json::to_writer(&mut *buf, rows[i].1)?;
                    buf.extend_from_slice(b"}\n");
                    Ok(())
                })
            }
            // A value without its key columns (not a whole row): the keys themselves.
            _ => {
                let mut rows = rows;
                rows.sort_by(|a, b| compare_keys(a.0, b.0));
                rows.into_iter().try_for_each(|(key, value)| {
                    serde_json::to_writer(
                        &mut out,
                        &serde_json::json!({"key": key, "value": value}),
                    )?;
                    out.write_all(b"\n")
                })
            }
        }
    })?;
    out.flush()?;
    Ok(())
}

/// Writes `lines` lines to `out` in order, the `j`-th made by `line(j, buffer)`:
/// chunks of lines are formatted on one thread per core while this one writes them.
fn print_sorted(
    out: &mut impl Write,
    lines: usize,
    line: impl Fn(usize, &mut Vec<u8>) -> std::io::Result<()> + Sync,
) -> std::io::Result<()> {
    const CHUNK: usize = 4096;
    let chunks = lines.div_ceil(CHUNK);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 8));
    std::thread::scope(|scope| {
        let line = &line;
        // Thread t formats chunks t, t + threads, ...; each hands them over in order.
        let receivers: Vec<_> = (0..threads)
            .map(|t| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(2);
                scope.spawn(move || {
                    for chunk in (t..chunks).step_by(threads) {
                        let mut buf = Vec::with_capacity(CHUNK * 256);
                        let done = (chunk * CHUNK..lines.min((chunk + 1) * CHUNK))
                            .try_for_each(|j| line(j, &mut buf))
                            .map(|()| buf);
                        if tx.send(done).is_err() {
                            return;
                        }
                    }
                });
                rx
            })
            .collect();
        for chunk in 0..chunks {
            let buf = receivers[chunk % threads]
                .recv()
                .map_err(|_| std::io::Error::other("a formatting thread stopped"))??;
            out.write_all(&buf)?;
        }
        Ok(())
    })
}

/// Orders keys column by column: numbers numerically, everything else by its text.
fn compare_keys(a: &Row, b: &Row) -> Ordering {
    let values = |r: &Row| r.iter().map(|(_, v)| v).collect::<Vec<_>>();
    compare_key_values(&values(a), &values(b))
}

/// [`compare_keys`] of the keys' values, in key order.
fn compare_key_values(a: &[Value], b: &[Value]) -> Ordering {
    for (x, y) in a.iter().zip(b.iter()) {
        let ord = match (x, y) {
            (Value::Number(m), Value::Number(n)) => match (m.as_i64(), n.as_i64()) {
                (Some(i), Some(j)) => i.cmp(&j),
                // Exact for integers, `total_cmp` otherwise (a key column holds one type).
                _ => match (m.as_u64(), n.as_u64()) {
                    (Some(i), Some(j)) => i.cmp(&j),
                    _ => m
                        .as_f64()
                        .unwrap_or(0.0)
                        .total_cmp(&n.as_f64().unwrap_or(0.0)),
                },
            },
            (Value::String(s), Value::String(t)) => s.cmp(t),
            _ => x.to_string().cmp(&y.to_string()),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    a.len().cmp(&b.len())
}
