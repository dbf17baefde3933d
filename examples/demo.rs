//! The demo: the bridge, a writer under load, and caches that warm-start at staggered
//! moments while the table changes, each shown converging on the table.
//!
//! `scripts/demo.sh` starts the development stack and runs this. It creates
//! `demo_accounts` (50,000 rows), runs the bridge in-process, writes random inserts,
//! updates and deletes, starts a cache every few seconds, prints a status line a
//! second, and at the end compares every cache with the table, row for row.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tidemark_client::Cache;
use tidemark_examples::Stack;
use tokio::sync::watch;

/// Runs the bridge, a writer and staggered caches against demo_accounts.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    stack: Stack,
    /// How long the writer runs, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Writer transactions per second.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// How many caches start, evenly spread over the writer's run.
    #[arg(long, default_value_t = 4)]
    caches: usize,
}

const TABLE: &str = "demo_accounts";
const ROWS: i64 = 50_000;

/// The cache's key: the primary key columns.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
struct AccountId {
    id: i64,
}

/// The cache's value: the whole row.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Account {
    id: i64,
    owner: String,
    /// `numeric` arrives as an exact decimal string.
    balance: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tidemark_examples::init_logging("warn");
    let args = Args::parse();
    let (pg, conn) = tokio_postgres::connect(&args.stack.postgres, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    pg.batch_execute(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'tidemark_demo';
         DROP PUBLICATION IF EXISTS tidemark_demo;
         DROP TABLE IF EXISTS {TABLE};
         CREATE TABLE {TABLE} (id int8 PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL);
         INSERT INTO {TABLE} SELECT g, 'owner-' || g, 100 FROM generate_series(1, {ROWS}) g;"
    ))
    .await?;
    println!("demo: {TABLE} has {ROWS} rows; starting the bridge (3 partitions)");
    let prefix = "demo".to_string();
    let config = tidemark_bridge::Config::from_cli(tidemark_bridge::Cli::parse_from([
        "tidemark-bridge",
        "--postgres",
        &args.stack.postgres,
        "--kafka",
        &args.stack.kafka,
        "--tables",
        &format!("public.{TABLE}"),
        "--slot",
        "tidemark_demo",
        "--publication",
        "tidemark_demo",
        "--topic-prefix",
        &prefix,
        "--partitions",
        "3",
    ]))?;
    let (stop, shutdown) = watch::channel(false);
    let bridge = tokio::spawn(tidemark_bridge::run(config, shutdown));

    let commits = Arc::new(AtomicU64::new(0));
    println!(
        "demo: writer starts: {} transactions/s for {} s",
        args.rate, args.seconds
    );
    let writer = tokio::spawn(write(
        args.stack.postgres.clone(),
        args.seconds,
        args.rate,
        commits.clone(),
    ));
    let started = Instant::now();
    let mut caches: Vec<Cache<AccountId, Account>> = Vec::new();
    let spacing = Duration::from_secs(args.seconds) / (args.caches as u32 + 1);
    let mut next_cache = spacing;
    let mut next_status = Duration::from_secs(1);
    while !writer.is_finished() {
        if caches.len() < args.caches && started.elapsed() >= next_cache {
            let n = caches.len() + 1;
            let t = Instant::now();
            let cache = Cache::builder()
                .postgres(args.stack.postgres.clone())
                .kafka(args.stack.kafka.clone())
                .table(format!("public.{TABLE}"))
                .topic_prefix(prefix.clone())
                .build()
                .await?;
            let s = cache.stats();
            println!(
                "cache {n}: warm and caught up in {} ms under live writes ({} rows loaded, {} changes applied, \
                 {} skipped as already loaded)",
                t.elapsed().as_millis(),
                s.loaded_rows,
                s.applied,
                s.skipped_in_snapshot
            );
            caches.push(cache);
            next_cache += spacing;
        }
        if started.elapsed() >= next_status {
            let sizes: Vec<String> = caches.iter().map(|c| c.len().to_string()).collect();
            println!(
                "t={:>2}s  writer: {:>6} commits  caches: [{}]",
                started.elapsed().as_secs(),
                commits.load(Ordering::Relaxed),
                sizes.join(", ")
            );
            next_status += Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.await??;
    println!(
        "demo: the writer stopped after {} commits; waiting for the caches to catch up",
        commits.load(Ordering::Relaxed)
    );

    let table = read_table(&pg).await?;
    for (i, cache) in caches.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut differing = diff(&table, cache);
        while differing > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            differing = diff(&table, cache);
        }
        if differing == 0 {
            println!("cache {}: {} rows, matches the table", i + 1, cache.len());
        } else {
            println!(
                "cache {}: {} rows, DIFFERS from the table in {differing} rows",
                i + 1,
                cache.len()
            );
        }
    }
    for cache in caches {
        cache.shutdown().await;
    }
    let _ = stop.send(true);
    bridge.await??;
    Ok(())
}

async fn read_table(
    pg: &tokio_postgres::Client,
) -> Result<BTreeMap<i64, (String, String)>, tokio_postgres::Error> {
    Ok(pg
        .query(
            &format!("SELECT id, owner, balance::text FROM {TABLE}"),
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// Rows in which the cache and the table differ.
fn diff(table: &BTreeMap<i64, (String, String)>, cache: &Cache<AccountId, Account>) -> usize {
    let mut cached: BTreeMap<i64, (String, String)> = BTreeMap::new();
    for (k, a) in cache.iter() {
        cached.insert(k.id, (a.owner.clone(), a.balance.clone()));
    }
    let missing_or_wrong = table
        .iter()
        .filter(|(k, v)| cached.get(k) != Some(v))
        .count();
    let extra = cached.keys().filter(|k| !table.contains_key(k)).count();
    missing_or_wrong + extra
}

/// Random single-row updates, inserts and deletes at `rate` transactions per second.
async fn write(
    url: String,
    seconds: u64,
    rate: u64,
    commits: Arc<AtomicU64>,
) -> Result<(), tokio_postgres::Error> {
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let mut next_id = ROWS + 1;
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        let id = rng.gen_range(1..next_id);
        match rng.gen_range(0..10) {
            0 => {
                pg.execute(
                    &format!("INSERT INTO {TABLE} VALUES ($1, 'new', 0)"),
                    &[&next_id],
                )
                .await?;
                next_id += 1;
            }
            1 => {
                pg.execute(&format!("DELETE FROM {TABLE} WHERE id = $1"), &[&id])
                    .await?;
            }
            _ => {
                pg.execute(
                    &format!("UPDATE {TABLE} SET balance = balance + 1 WHERE id = $1"),
                    &[&id],
                )
                .await?;
            }
        }
        commits.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
