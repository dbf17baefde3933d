//! Bridge throughput (rows/s from a WAL backlog to Kafka acknowledgements) beside
//! its two bounds, and commit-to-Kafka and commit-to-cache latency at a steady rate.
//!
//! Throughput: both slots (the bridge's and a reference slot) are created before the
//! workload is written, so the bridge and `pg_recvlogical` decode exactly the same
//! WAL. The bridge's time runs from its "streaming" log line until the topic's high
//! watermarks hold every record (a record is in the high watermark only once the
//! broker has acknowledged it). The broker bound produces the same number of records
//! of the bridge's own record size with a plain idempotent rdkafka producer.

use std::process::Command;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::env::{
    current_lsn, drop_slot, median, quantile, time_command, BoxError, BridgeProcess, Env,
};

/// One throughput shape.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub row_bytes: usize,
    pub txn_rows: usize,
    pub total_rows: usize,
}

/// Rows per second of the bridge and of its two references, medians over `repeat` runs.
#[derive(Debug)]
pub struct Throughput {
    pub bridge: f64,
    pub decode_bound: f64,
    pub broker_bound: f64,
}

pub(crate) async fn write_workload(env: &Env, table: &str, shape: Shape) -> Result<(), BoxError> {
    let pg = env.pg().await?;
    let pad = format!(
        "substr(repeat(md5(random()::text), {}), 1, {})",
        shape.row_bytes / 32 + 1,
        shape.row_bytes
    );
    if shape.txn_rows == 1 {
        // Single-row transactions, pipelined over one connection.
        let stmt = pg
            .prepare(&format!("INSERT INTO {table} VALUES ($1, {pad})"))
            .await?;
        let ids: Vec<i64> = (0..shape.total_rows as i64).collect();
        for chunk in ids.chunks(200) {
            try_join_all(chunk.iter().map(|id| {
                let (pg, stmt) = (&pg, &stmt);
                async move { pg.execute(stmt, &[id]).await }
            }))
            .await?;
        }
    } else {
        for start in (0..shape.total_rows).step_by(shape.txn_rows) {
            pg.batch_execute(&format!(
                "INSERT INTO {table} SELECT g, {pad} FROM generate_series({start}, {}) g",
                start + shape.txn_rows - 1
            ))
            .await?;
        }
    }
    Ok(())
}

async fn one_run(env: &Env, shape: Shape, run: usize) -> Result<(f64, f64, f64), BoxError> {
    let name = format!(
        "benchtp{}x{}r{run}_{}",
        shape.row_bytes,
        shape.txn_rows,
        rand::random::<u16>()
    );
    let table = format!("{name}_t");
    let pg = env.pg().await?;
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, pad text NOT NULL)"
    ))
    .await?;
    // First start: publication, slot and topic exist, positioned before the workload.
    BridgeProcess::start(env, &name, &format!("public.{table}"), 1)
        .await?
        .stop()?;
    let ref_slot = format!("{name}_ref");
    pg.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&ref_slot],
    )
    .await?;

    write_workload(env, &table, shape).await?;
    let end = current_lsn(&pg).await?;

    // (a) pg_recvlogical on the same WAL.
    let decode = time_command(
        Command::new("pg_recvlogical")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "test",
                "-S",
                &ref_slot,
                "--start",
                "--no-loop",
            ])
            .args([
                "-E",
                &tokio_postgres::types::PgLsn::from(end).to_string(),
                "-o",
                "proto_version=1",
                "-o",
                &format!("publication_names={name}_pub"),
            ])
            .args(["-f", "/dev/null"]),
    )?;

    // The bridge on the same WAL.
    let topic = format!("{name}.public.{table}");
    let consumer = env.consumer()?;
    let bridge = BridgeProcess::start(env, &name, &format!("public.{table}"), 1).await?;
    let t = Instant::now();
    while env.records_in(&consumer, &topic) < shape.total_rows as i64 {
        if t.elapsed() > Duration::from_secs(600) {
            return Err("the bridge did not finish within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bridge_time = t.elapsed();
    bridge.stop()?;

    // (b) the broker: the same number of records of the bridge's record size.
    let value = sample_value(env, &topic)?;
    let broker_topic = format!("{name}.producer");
    env.create_topic(&broker_topic, 1).await?;
    let broker_time = produce(env, &broker_topic, shape.total_rows, &value).await?;

    drop_slot(&pg, &ref_slot).await;
    drop_slot(&pg, &format!("{name}_slot")).await;
    pg.batch_execute(&format!("DROP PUBLICATION {name}_pub; DROP TABLE {table}"))
        .await?;
    let rps = |d: Duration| shape.total_rows as f64 / d.as_secs_f64();
    Ok((rps(bridge_time), rps(decode), rps(broker_time)))
}

/// The value of the last record of partition 0 of `topic`: the bridge's record size for
/// the broker bound.
fn sample_value(env: &Env, topic: &str) -> Result<Vec<u8>, BoxError> {
    let consumer = env.consumer()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::OffsetTail(1))?;
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            return Ok(m.payload().unwrap_or_default().to_vec());
        }
    }
    Err(format!("no record on {topic}").into())
}

/// Produces `n` records like the bridge does (idempotent, acks=all, lz4, linger 5 ms)
/// and returns the time until all are acknowledged.
async fn produce(env: &Env, topic: &str, n: usize, value: &[u8]) -> Result<Duration, BoxError> {
    let producer = plain_producer(env)?;
    let t = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let k = format!("{{\"id\":{i}}}");
        let rec = FutureRecord::to(topic).key(&k).payload(value);
        pending.push(producer.send_result(rec).map_err(|(e, _)| e)?);
        if pending.len() >= 50_000 {
            use futures::StreamExt;
            while let Some(r) = pending.next().await {
                r?.map_err(|(e, _)| e)?;
                if pending.len() < 25_000 {
                    break;
                }
            }
        }
    }
    use futures::StreamExt;
    while let Some(r) = pending.next().await {
        r?.map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(t.elapsed())
}

/// A producer with the bridge's settings (idempotent, acks=all, lz4, linger 5 ms).
fn plain_producer(env: &Env) -> Result<FutureProducer, BoxError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &env.kafka)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "100000")
        .create()?)
}

/// Throughput for one shape, medians of `repeat` runs.
pub async fn throughput(env: &Env, shape: Shape, repeat: usize) -> Result<Throughput, BoxError> {
    let (mut b, mut d, mut k) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..repeat {
        let (bridge, decode, broker) = one_run(env, shape, run).await?;
        eprintln!(
            "  throughput {}B x {}: bridge {bridge:.0}/s, pg_recvlogical {decode:.0}/s, producer {broker:.0}/s",
            shape.row_bytes, shape.txn_rows
        );
        b.push(bridge);
        d.push(decode);
        k.push(broker);
    }
    Ok(Throughput {
        bridge: median(b),
        decode_bound: median(d),
        broker_bound: median(k),
    })
}

/// Commit-to-consumer latency percentiles, in milliseconds.
#[derive(Debug)]
pub struct Latency {
    pub achieved: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Runs the bridge under `rate` single-row transactions per second for `seconds`,
/// and measures commit time (the record timestamp) to arrival at a consumer that
/// polls with `fetch.wait.max.ms=5`: an upper bound on commit-to-acknowledgement.
pub async fn latency(env: &Env, rate: u64, seconds: u64) -> Result<Latency, BoxError> {
    latency_with(env, rate, seconds, &[]).await
}

/// [`latency`] of a bridge started with `extra` flags; the consumer reads
/// `read_committed` (librdkafka's default).
pub async fn latency_with(
    env: &Env,
    rate: u64,
    seconds: u64,
    extra: &[&str],
) -> Result<Latency, BoxError> {
    let name = format!("benchlat{rate}_{}", rand::random::<u16>());
    let table = format!("{name}_t");
    let pg = env.pg().await?;
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, pad text NOT NULL)"
    ))
    .await?;
    let bridge =
        BridgeProcess::start_with(env, &name, &format!("public.{table}"), 1, extra).await?;
    let topic = format!("{name}.public.{table}");
    let consumer = env.consumer()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    // One change end to end before the clock starts, so that connection set-up and
    // the consumer's first fetch are not counted as latency.
    pg.execute(&format!("INSERT INTO {table} VALUES (-1, 'warm-up')"), &[])
        .await?;
    let consumer = warm_up(consumer).await?;

    let (total, writers) = paced_writers(env, &table, rate, seconds);
    let reader = tokio::task::spawn_blocking(move || read_latencies(&consumer, total, seconds));
    let elapsed = writers.await?;
    let lat = reader.await?;
    bridge.stop()?;
    drop_slot(&pg, &format!("{name}_slot")).await;
    pg.batch_execute(&format!("DROP PUBLICATION {name}_pub; DROP TABLE {table}"))
        .await?;
    Ok(Latency::of(lat, total as f64 / elapsed))
}

/// What the cache of [`cache_latency`] keeps of a row: when it was inserted.
#[derive(serde::Deserialize)]
struct Inserted {
    at_us: i64,
}

/// The cache's latency under the writers of [`latency`]: a bridge with 3 partitions
/// and a typed cache following the table, measured from each row's insert time (a
/// column the inserting transaction sets with `clock_timestamp()`, just before its
/// commit) to the moment the cache's change subscription delivers it, which is when
/// `Cache::get` returns it. The follower's periodic watermark refresh (one request per
/// partition) runs in this window, so a refresh that held records back would show.
pub async fn cache_latency(env: &Env, rate: u64, seconds: u64) -> Result<Latency, BoxError> {
    use tokio::sync::broadcast::error::RecvError;
    let name = format!("benchcachelat{rate}_{}", rand::random::<u16>());
    let table = format!("{name}_t");
    let pg = env.pg().await?;
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, pad text NOT NULL, \
         at_us int8 NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::int8)"
    ))
    .await?;
    let bridge = BridgeProcess::start_with(env, &name, &format!("public.{table}"), 3, &[]).await?;
    let cache = tidemark_client::Cache::<i64, Inserted>::builder()
        .postgres(env.postgres.clone())
        .kafka(env.kafka.clone())
        .table(format!("public.{table}"))
        .topic_prefix(name.clone())
        .build()
        .await?;
    let mut changes = cache.subscribe();
    // One change end to end before the clock starts, as for the consumer.
    pg.execute(&format!("INSERT INTO {table} VALUES (-1, 'warm-up')"), &[])
        .await?;
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match changes.recv().await {
                Ok(c) if c.key == -1 => return Ok(()),
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return Err("the cache stopped"),
            }
        }
    })
    .await
    .map_err(|_| "the warm-up change did not reach the cache within 60 s")??;
    let (total, writers) = paced_writers(env, &table, rate, seconds);
    let reader = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(total as usize);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds + 60);
        while (lat.len() as u64) < total {
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Ok(Ok(c)) => {
                    if let Some(v) = c.value {
                        lat.push((now_ms_f64() - v.at_us as f64 / 1000.0).max(0.0));
                    }
                }
                // Changes the subscription dropped are missing from the count below.
                Ok(Err(RecvError::Lagged(_))) => {}
                Ok(Err(RecvError::Closed)) | Err(_) => break,
            }
        }
        lat
    });
    let elapsed = writers.await?;
    let lat = reader.await?;
    cache.shutdown().await;
    bridge.stop()?;
    drop_slot(&pg, &format!("{name}_slot")).await;
    pg.batch_execute(&format!("DROP PUBLICATION {name}_pub; DROP TABLE {table}"))
        .await?;
    if (lat.len() as u64) < total {
        return Err(format!("the cache delivered {} of {total} changes", lat.len()).into());
    }
    Ok(Latency::of(lat, total as f64 / elapsed))
}

/// Starts writers that commit `rate` single-row inserts a second into `table` for
/// `seconds`; returns the number of transactions and a future of the seconds taken.
///
/// Writers use synchronous_commit on (the default): with it off, a commit reaches the
/// walsender only when the WAL writer flushes, up to wal_writer_delay later. One
/// connection per 300 transactions a second, each paced by the clock.
fn paced_writers(
    env: &Env,
    table: &str,
    rate: u64,
    seconds: u64,
) -> (
    u64,
    impl std::future::Future<Output = Result<f64, BoxError>>,
) {
    let writers = rate.div_ceil(300).max(1);
    let per = rate / writers;
    let total = per * writers * seconds;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (env, table) = (env.clone(), table.to_owned());
        tasks.push(tokio::spawn(async move {
            let pg = env.pg().await?;
            pg.batch_execute("SET synchronous_commit = on").await?;
            let stmt = pg
                .prepare(&format!(
                    "INSERT INTO {table} VALUES ($1, md5(random()::text))"
                ))
                .await?;
            let start = Instant::now();
            let mut i = 0u64;
            while i < per * seconds {
                let due = Duration::from_secs_f64(i as f64 / per as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
                pg.execute(&stmt, &[&((i * writers + w) as i64)]).await?;
                i += 1;
            }
            Ok::<f64, BoxError>(start.elapsed().as_secs_f64())
        }));
    }
    let done = async move {
        let mut elapsed = 0.0f64;
        for t in tasks {
            elapsed = elapsed.max(t.await??);
        }
        Ok(elapsed)
    };
    (total, done)
}

/// PostgreSQL's own part of the latency, the second reference for [`latency`]: the
/// same writers, and `pg_recvlogical` (test_decoding, with commit timestamps) reading
/// the slot; each COMMIT line is timed from its commit time to its arrival here.
pub async fn decode_latency(env: &Env, rate: u64, seconds: u64) -> Result<Latency, BoxError> {
    use std::io::BufRead;
    let name = format!("benchdec{rate}_{}", rand::random::<u16>());
    let table = format!("{name}_t");
    let slot = format!("{name}_slot");
    let pg = env.pg().await?;
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, pad text NOT NULL)"
    ))
    .await?;
    pg.execute(
        "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
        &[&slot],
    )
    .await?;
    let mut child = Command::new("pg_recvlogical")
        .env("PGTZ", "UTC")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test"])
        .args(["-S", &slot, "--start", "-f", "-"])
        .args(["-o", "include-timestamp=on", "-o", "skip-empty-xacts=on"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout from pg_recvlogical")?;
    // One transaction end to end before the clock starts, as for the bridge.
    let mut lines = std::io::BufReader::new(stdout).lines();
    pg.execute(&format!("INSERT INTO {table} VALUES (-1, 'warm-up')"), &[])
        .await?;
    let warm = tokio::task::spawn_blocking(move || {
        let seen = lines
            .by_ref()
            .any(|l| l.is_ok_and(|l| l.starts_with("COMMIT")));
        (seen, lines)
    });
    let (seen, lines) = tokio::time::timeout(Duration::from_secs(60), warm).await??;
    if !seen {
        return Err("pg_recvlogical ended before the warm-up transaction".into());
    }
    let (total, writers) = paced_writers(env, &table, rate, seconds);
    let reader = tokio::task::spawn_blocking(move || {
        let mut lat = Vec::with_capacity(total as usize);
        for line in lines {
            let Ok(line) = line else { break };
            // "COMMIT (at 2026-11-26 15:03:38.123456+00)"
            let Some(at) = line
                .strip_prefix("COMMIT")
                .and_then(|l| l.split_once("(at "))
                .map(|(_, t)| t.trim_end_matches(')'))
            else {
                continue;
            };
            if let Ok(t) =
                chrono::DateTime::parse_from_str(&format!("{at}00"), "%Y-%m-%d %H:%M:%S%.f%z")
            {
                lat.push((now_ms_f64() - t.timestamp_micros() as f64 / 1000.0).max(0.0));
            }
            if lat.len() as u64 >= total {
                break;
            }
        }
        lat
    });
    let elapsed = writers.await?;
    let lat = tokio::time::timeout(Duration::from_secs(60), reader).await;
    let _ = child.kill();
    let _ = child.wait();
    drop_slot(&pg, &slot).await;
    pg.batch_execute(&format!("DROP TABLE {table}")).await?;
    Ok(Latency::of(lat??, total as f64 / elapsed))
}

/// The broker's own latency, the reference for [`latency`]: a plain producer with
/// the bridge's settings sends `rate` records a second (the size of the bridge's
/// records for that table, about 400 B) for `seconds`, and the same consumer measures
/// the record timestamp (the producer's create time) to arrival.
pub async fn broker_latency(env: &Env, rate: u64, seconds: u64) -> Result<Latency, BoxError> {
    let topic = format!("benchlat{rate}_{}.producer", rand::random::<u16>());
    env.create_topic(&topic, 1).await?;
    let consumer = env.consumer()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let total = rate * seconds;
    let producer = plain_producer(env)?;
    let value = vec![b'x'; 400];
    // One record end to end before the clock starts, as for the bridge.
    producer
        .send(
            FutureRecord::to(&topic).key("{}").payload(&value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)?;
    let consumer = warm_up(consumer).await?;
    let reader = tokio::task::spawn_blocking(move || read_latencies(&consumer, total, seconds));
    let start = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..total {
        let due = Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let k = format!("{{\"id\":{i}}}");
        let rec = FutureRecord::to(&topic).key(&k).payload(&value);
        pending.push(producer.send_result(rec).map_err(|(e, _)| e)?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    use futures::StreamExt;
    while let Some(r) = pending.next().await {
        r?.map_err(|(e, _)| e)?;
    }
    Ok(Latency::of(reader.await?, total as f64 / elapsed))
}

/// Polls until one record arrives (within 60 s) and hands the consumer back.
async fn warm_up(
    consumer: rdkafka::consumer::BaseConsumer,
) -> Result<rdkafka::consumer::BaseConsumer, BoxError> {
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                m?;
                return Ok(consumer);
            }
        }
        Err("the warm-up record did not arrive within 60 s".into())
    })
    .await?
}

/// Polls until `total` records arrived (or `seconds` + 60 s passed) and returns each
/// record's time from its timestamp to its arrival, in milliseconds.
fn read_latencies(
    consumer: &rdkafka::consumer::BaseConsumer,
    total: u64,
    seconds: u64,
) -> Vec<f64> {
    let mut lat = Vec::with_capacity(total as usize);
    let deadline = Instant::now() + Duration::from_secs(seconds + 60);
    while (lat.len() as u64) < total && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            if let Some(ts) = m.timestamp().to_millis() {
                lat.push((now_ms_f64() - ts as f64).max(0.0));
            }
        }
    }
    lat
}

impl Latency {
    fn of(mut lat: Vec<f64>, achieved: f64) -> Latency {
        lat.sort_by(|a, b| a.total_cmp(b));
        Latency {
            achieved,
            p50: quantile(&lat, 0.5),
            p99: quantile(&lat, 0.99),
            max: lat.last().copied().unwrap_or(f64::NAN),
        }
    }
}

fn now_ms_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}
