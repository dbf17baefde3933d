//! The cost of `--exactly-once` beside at-least-once, in the same run: throughput
//! from a WAL backlog and commit-to-consumer latency at a steady rate.
//!
//! Throughput here is timed the same way for both modes, and not by high watermarks
//! (a transactional topic's offsets hold commit markers, and records of an open
//! transaction are below the high watermark before they are committed): from the
//! bridge's "streaming" line until a `read_committed` consumer has received every
//! change record.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::bridge_bench::{latency_with, write_workload, Latency, Shape};
use crate::cache_bench::Section;
use crate::env::{drop_slot, median, BoxError, BridgeProcess, Env};

/// Rows per second from a backlog to a `read_committed` consumer, with `extra` flags.
async fn throughput_run(env: &Env, shape: Shape, extra: &[&str]) -> Result<f64, BoxError> {
    let name = format!(
        "benchtx{}x{}{}_{}",
        shape.row_bytes,
        shape.txn_rows,
        if extra.is_empty() { "alo" } else { "eos" },
        rand::random::<u16>()
    );
    let table = format!("{name}_t");
    let pg = env.pg().await?;
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, pad text NOT NULL)"
    ))
    .await?;
    BridgeProcess::start_with(env, &name, &format!("public.{table}"), 1, extra)
        .await?
        .stop()?;
    write_workload(env, &table, shape).await?;
    let topic = format!("{name}.public.{table}");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.kafka)
        .set("group.id", "tidemark-bench-unused")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let bridge =
        BridgeProcess::start_with(env, &name, &format!("public.{table}"), 1, extra).await?;
    let t = Instant::now();
    let total = shape.total_rows;
    let counted = tokio::task::spawn_blocking(move || {
        let mut n = 0usize;
        while n < total && t.elapsed() < Duration::from_secs(600) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                // Change records carry no header; the slot marker does.
                if m.headers().is_none() {
                    n += 1;
                }
            }
        }
        n
    })
    .await?;
    let elapsed = t.elapsed();
    bridge.stop()?;
    drop_slot(&pg, &format!("{name}_slot")).await;
    pg.batch_execute(&format!("DROP PUBLICATION {name}_pub; DROP TABLE {table}"))
        .await?;
    if counted < total {
        return Err(format!("only {counted} of {total} records within 10 minutes").into());
    }
    Ok(total as f64 / elapsed.as_secs_f64())
}

fn percentiles(l: &Latency) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        l.p50, l.p99, l.max
    )
}

/// Both modes side by side: throughput for two shapes (medians of `repeat` runs) and
/// latency at `rate` transactions a second for `seconds`.
pub async fn section(
    env: &Env,
    repeat: usize,
    rate: u64,
    seconds: u64,
) -> Result<Section, BoxError> {
    let eos: &[&str] = &["--exactly-once"];
    let mut rows = Vec::new();
    for shape in [
        Shape {
            row_bytes: 100,
            txn_rows: 1,
            total_rows: 50_000,
        },
        Shape {
            row_bytes: 100,
            txn_rows: 100,
            total_rows: 200_000,
        },
    ] {
        let (mut alo, mut tx) = (Vec::new(), Vec::new());
        for _ in 0..repeat {
            alo.push(throughput_run(env, shape, &[]).await?);
            tx.push(throughput_run(env, shape, eos).await?);
            eprintln!(
                "  exactly-once throughput {}B x {}: at-least-once {:.0}/s, exactly-once {:.0}/s",
                shape.row_bytes,
                shape.txn_rows,
                alo.last().copied().unwrap_or_default(),
                tx.last().copied().unwrap_or_default()
            );
        }
        let (alo, tx) = (median(alo), median(tx));
        rows.push((
            format!(
                "--exactly-once throughput, {} B rows, {}-row txns, backlog → read_committed consumer",
                shape.row_bytes, shape.txn_rows
            ),
            format!("{tx:.0} rows/s"),
            format!("at-least-once, same method: {alo:.0} rows/s"),
            format!("{:.2} × at-least-once", tx / alo),
            "-".to_owned(),
        ));
    }
    let alo = latency_with(env, rate, seconds, &[]).await?;
    let tx = latency_with(env, rate, seconds, eos).await?;
    rows.push((
        format!(
            "--exactly-once commit → read_committed consumer latency at {rate} txn/s (achieved {:.0}/s; one run of {seconds} s; --transaction-interval-ms 100)",
            tx.achieved
        ),
        percentiles(&tx),
        format!("at-least-once, same run: {}", percentiles(&alo)),
        format!("p50 +{:.1} ms", tx.p50 - alo.p50),
        "-".to_owned(),
    ));
    Ok(Section {
        rows,
        notes: vec![
            "The exactly-once rows compare the bridge with and without `--exactly-once`, measured the same way \
             in the same run: throughput from a WAL backlog until a `read_committed` consumer received every \
             record (not by high watermarks, which count transaction markers and uncommitted records), and \
             latency from the commit time to arrival at a `read_committed` consumer. With `--exactly-once` a \
             record becomes visible only when its Kafka transaction commits, every `--transaction-interval-ms` \
             (100 ms by default), so about half an interval is added on average."
                .to_owned(),
        ],
    })
}
