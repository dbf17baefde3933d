//! The demo: the bridge and a writer under load, with the changes arriving in Kafka.
//!
//! `scripts/demo.sh` starts the development stack and runs this. It creates the
//! table `demo_accounts` (50,000 rows), runs the bridge in-process, writes random
//! inserts, updates and deletes, and prints once a second how many changes reached
//! Kafka and how far behind the commit they arrived.

use std::time::Duration;

use clap::Parser;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tidemark_client::wire::Envelope;
use tokio::sync::watch;

/// Runs the bridge and a writer against demo_accounts and shows the stream.
#[derive(Parser, Debug)]
struct Args {
    /// PostgreSQL URL.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    postgres: String,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    kafka: String,
    /// How long the writer runs, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Writer transactions per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
}

const TABLE: &str = "demo_accounts";
const ROWS: i64 = 50_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let (pg, conn) = tokio_postgres::connect(&args.postgres, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    pg.batch_execute(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'tidemark_demo';
         DROP PUBLICATION IF EXISTS tidemark_demo;
         DROP TABLE IF EXISTS {TABLE};
         CREATE TABLE {TABLE} (id int8 PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL,
                               updated_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO {TABLE} SELECT g, 'owner-' || g, 100, now() FROM generate_series(1, {ROWS}) g;"
    ))
    .await?;
    println!("demo: table {TABLE} has {ROWS} rows; starting the bridge");

    let config = tidemark_bridge::Config::from_cli(tidemark_bridge::Cli::parse_from([
        "tidemark-bridge",
        "--postgres",
        &args.postgres,
        "--kafka",
        &args.kafka,
        "--tables",
        &format!("public.{TABLE}"),
        "--slot",
        "tidemark_demo",
        "--publication",
        "tidemark_demo",
        "--topic-prefix",
        "demo",
        "--partitions",
        "3",
    ]))?;
    let (stop, shutdown) = watch::channel(false);
    let bridge = tokio::spawn(tidemark_bridge::run(config, shutdown));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let consumer = open_at_end(&args.kafka, &format!("demo.public.{TABLE}"))?;
    let writer = tokio::spawn(write(args.postgres.clone(), args.seconds, args.rate));
    let watcher = tokio::task::spawn_blocking(move || watch_topic(&consumer, args.seconds + 5));
    let written = writer.await??;
    let received = watcher.await??;
    let _ = stop.send(true);
    bridge.await??;
    println!(
        "demo: the writer committed {written} changes; {received} change records reached Kafka"
    );
    Ok(())
}

/// Random single-row updates, inserts and deletes at `rate` transactions per second.
async fn write(url: String, seconds: u64, rate: u64) -> Result<u64, tokio_postgres::Error> {
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let (mut next_id, mut count) = (ROWS + 1, 0u64);
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        let id = rng.gen_range(1..next_id);
        match rng.gen_range(0..10) {
            0 => {
                pg.execute(
                    &format!("INSERT INTO {TABLE} VALUES ($1, 'new', 0, now())"),
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
                pg.execute(&format!("UPDATE {TABLE} SET balance = balance + 1, updated_at = now() WHERE id = $1"), &[&id])
                    .await?;
            }
        }
        count += 1;
    }
    Ok(count)
}

/// A consumer assigned to every partition of `topic` at its current end.
fn open_at_end(kafka: &str, topic: &str) -> Result<BaseConsumer, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", "tidemark-demo-unused")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "20")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Reads from `consumer` for `seconds`, printing a line a second.
fn watch_topic(consumer: &BaseConsumer, seconds: u64) -> Result<u64, rdkafka::error::KafkaError> {
    let (mut total, mut window, mut lag_ms) = (0u64, 0u64, Vec::new());
    let started = std::time::Instant::now();
    let mut next_report = Duration::from_secs(1);
    while started.elapsed() < Duration::from_secs(seconds) {
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(100)) {
            if let Some(env) = msg
                .payload()
                .and_then(|p| serde_json::from_slice::<Envelope>(p).ok())
            {
                total += 1;
                window += 1;
                lag_ms.push(now_ms() - env.source.ts_ms);
            }
        }
        if started.elapsed() >= next_report {
            lag_ms.sort_unstable();
            let median = lag_ms.get(lag_ms.len() / 2).copied().unwrap_or(0);
            println!("kafka: {window:>5} changes in the last second ({total} in all), commit-to-consumer median {median} ms");
            window = 0;
            lag_ms.clear();
            next_report += Duration::from_secs(1);
        }
    }
    Ok(total)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
