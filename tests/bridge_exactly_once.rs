//! `--exactly-once`: across kill -9 crashes a `read_committed` reader sees every
//! committed change exactly once; the same crashes without it replay changes (the
//! at-least-once baseline, which shows the check can fail). And heartbeats: an idle
//! table's topic gets them on every partition, and a cache of it stays exact.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use tidemark_core::wire::envelope::SLOT_MARKER_HEADER;
use tidemark_core::wire::heartbeat::HEARTBEAT_HEADER;

use crate::support::*;

/// Commits `total` writes (inserts of new ids and updates of earlier ones) in
/// transactions of 1 to 20, paced to `per_sec`. Write `w` sets column `w` to `w`, so
/// each change is named by its `w`; returns the committed ones.
async fn write(table: &str, total: i64, per_sec: u64) -> Vec<i64> {
    write_until(table, total, per_sec, &AtomicBool::new(false)).await
}

/// [`write`], ending early once `stop` is set.
async fn write_until(table: &str, total: i64, per_sec: u64, stop: &AtomicBool) -> Vec<i64> {
    let pg = pg().await;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let (mut w, mut next_id, mut committed) = (0i64, 1i64, Vec::new());
    let started = Instant::now();
    while w < total && !stop.load(Ordering::Relaxed) {
        let n = rng.gen_range(1..=20);
        let mut sql = String::from("BEGIN;");
        let (mut ws, mut ids) = (Vec::new(), next_id);
        for _ in 0..n {
            w += 1;
            if ids == 1 || rng.gen_range(0..100) < 60 {
                sql += &format!("INSERT INTO {table} VALUES ({ids}, {w});");
                ids += 1;
            } else {
                let id = rng.gen_range(1..ids);
                sql += &format!("UPDATE {table} SET w = {w} WHERE id = {id};");
            }
            ws.push(w);
        }
        sql += "COMMIT;";
        pg.batch_execute(&sql).await.expect("writer transaction");
        next_id = ids;
        committed.extend(ws);
        let due = Duration::from_millis(committed.len() as u64 * 1000 / per_sec);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    committed
}

/// Rows in the table before the bridge starts, written by its initial snapshot.
const SNAPSHOT_ROWS: i64 = 2_000;

/// One record of a topic as a `read_committed` consumer sees it.
struct Seen {
    partition: i32,
    value: Option<Value>,
    headers: Vec<String>,
}

/// Every record of `topic` a `read_committed` consumer reads up to the end of each
/// partition (for such a consumer, the last stable offset).
fn read_committed(brokers: &str, topic: &str) -> Vec<Seen> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "tidemark-tests-unused")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for &p in &parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("assign");
    }
    c.assign(&tpl).expect("assign");
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while at_end.len() < parts.len() {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        match c.poll(Duration::from_millis(500)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            Some(Ok(m)) => out.push(Seen {
                partition: m.partition(),
                value: m
                    .payload()
                    .map(|v| serde_json::from_slice(v).expect("JSON value")),
                headers: m
                    .headers()
                    .map(|h| h.iter().map(|h| h.key.to_owned()).collect())
                    .unwrap_or_default(),
            }),
        }
    }
    out
}

/// The write a change record carries (its `after.w`); `None` for anything else.
fn write_of(seen: &Seen) -> Option<i64> {
    if seen
        .headers
        .iter()
        .any(|h| h == SLOT_MARKER_HEADER || h == HEARTBEAT_HEADER)
    {
        return None;
    }
    seen.value.as_ref()?["after"]["w"].as_i64()
}

/// How often a `read_committed` reader of `topic` sees each write, once it sees every
/// one of `expected` (within 180 s).
async fn counts_once_complete(
    brokers: &str,
    topic: &str,
    expected: &HashSet<i64>,
) -> BTreeMap<i64, usize> {
    wait_for(
        Duration::from_secs(180),
        "every committed write in Kafka",
        || {
            let (topic, brokers) = (topic.to_owned(), brokers.to_owned());
            async move {
                let seen = tokio::task::spawn_blocking(move || read_committed(&brokers, &topic))
                    .await
                    .unwrap();
                let mut counts = BTreeMap::<i64, usize>::new();
                for w in seen.iter().filter_map(write_of) {
                    *counts.entry(w).or_default() += 1;
                }
                expected
                    .iter()
                    .all(|w| counts.contains_key(w))
                    .then_some(counts)
            }
        },
    )
    .await
}

/// A new table for a bridge with 3 partitions, holding rows from before the slot:
/// the initial snapshot writes them as op r records (with --exactly-once, in Kafka
/// transactions too), ids above 1,000,000 and w = -1 .. -SNAPSHOT_ROWS. Returns the
/// table's name and the bridge's arguments.
async fn table_with_rows(prefix: &str) -> (String, BridgeArgs) {
    let name = unique(prefix);
    let table = format!("{name}_t");
    pg().await
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int8 PRIMARY KEY, w int8 NOT NULL);
             INSERT INTO {table} SELECT 1000000 + g, -g FROM generate_series(1, {SNAPSHOT_ROWS}) g"
        ))
        .await
        .unwrap();
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.partitions = 3;
    (table, args)
}

/// Writes under load, kills the bridge with SIGKILL twice at different moments and
/// restarts it each time; returns the committed writes (the snapshot's rows as
/// negative numbers) and how often a
/// `read_committed` reader sees each write once every committed one arrived.
async fn crash_twice(exactly_once: bool) -> (Vec<i64>, BTreeMap<i64, usize>) {
    let (table, mut args) = table_with_rows(if exactly_once { "eos" } else { "alo" }).await;
    if exactly_once {
        args.extra = vec!["--exactly-once".into()];
    }
    let (mut bridge, args) = start_bridge_with(args).await;
    let writer = tokio::spawn({
        let table = table.clone();
        async move { write(&table, 15_000, 1_200).await }
    });
    // Different moments: early in a Kafka transaction's life and at a random point.
    let mut rng = rand::rngs::StdRng::from_entropy();
    for (crash, wait_ms) in [(1, 3_000), (2, 3_000 + rng.gen_range(0..1_000))] {
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        bridge.kill9();
        eprintln!("crash {crash}: SIGKILL after {wait_ms} ms");
        tokio::time::sleep(Duration::from_millis(300)).await;
        bridge = Bridge::start(&args);
    }
    let mut committed = writer.await.unwrap();
    committed.extend((1..=SNAPSHOT_ROWS).map(|g| -g));
    let topic = args.topic(&format!("public.{table}"));
    let expected: HashSet<i64> = committed.iter().copied().collect();
    let counts = counts_once_complete(&args.kafka, &topic, &expected).await;
    assert!(
        bridge.sigterm(Duration::from_secs(60)).success(),
        "{}",
        bridge.log_text()
    );
    (committed, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_a_read_committed_reader_sees_each_change_once_across_two_crashes() {
    let (committed, counts) = crash_twice(true).await;
    let expected: HashSet<i64> = committed.iter().copied().collect();
    let unknown: Vec<&i64> = counts.keys().filter(|w| !expected.contains(w)).collect();
    assert!(
        unknown.is_empty(),
        "writes that were never committed: {unknown:?}"
    );
    let twice: Vec<(&i64, &usize)> = counts.iter().filter(|(_, &n)| n > 1).collect();
    eprintln!(
        "exactly once: {} committed writes, {} change records, {} written more than once",
        committed.len(),
        counts.values().sum::<usize>(),
        twice.len()
    );
    assert!(
        twice.is_empty(),
        "{} writes reached the reader more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(counts.len(), expected.len());
}

/// The baseline: the same crashes without `--exactly-once` replay changes, so the
/// check above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_baseline_at_least_once_replays_after_crashes() {
    let (committed, counts) = crash_twice(false).await;
    let twice = counts.values().filter(|&&n| n > 1).count();
    eprintln!(
        "at least once: {} committed writes, {} change records, {twice} written more than once",
        committed.len(),
        counts.values().sum::<usize>()
    );
    assert!(twice > 0, "a crash under at-least-once replayed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_reach_every_partition_of_an_idle_topic_and_a_cache_stays_exact() {
    let pg = pg().await;
    let name = unique("beat");
    let (idle, busy) = (format!("{name}_idle"), format!("{name}_busy"));
    create_table(&pg, &idle).await;
    create_table(&pg, &busy).await;
    let mut args = BridgeArgs::new(
        &name,
        &[&format!("public.{idle}"), &format!("public.{busy}")],
    );
    args.partitions = 3;
    args.extra = vec!["--heartbeat-interval".into(), "1s".into()];
    let (mut bridge, args) = start_bridge_with(args).await;
    let cache = args.row_cache(&idle).build().await.expect("cache");
    cache.ready().await.expect("ready");

    // The busy table gets a change every 200 ms; the idle one none for a while.
    let busy_writer = tokio::spawn({
        let busy = busy.clone();
        async move {
            let pg = crate::support::pg().await;
            for i in 0..25 {
                pg.batch_execute(&format!("UPDATE {busy} SET v = 'b{i}' WHERE id = 1"))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    let topic = args.topic(&format!("public.{idle}"));
    let beats = wait_for(
        Duration::from_secs(30),
        "heartbeats on every partition of the idle topic",
        || {
            let (topic, brokers) = (topic.clone(), args.kafka.clone());
            async move {
                let seen = tokio::task::spawn_blocking(move || read_committed(&brokers, &topic))
                    .await
                    .unwrap();
                let mut per_partition: HashMap<i32, usize> = HashMap::new();
                for s in seen
                    .iter()
                    .filter(|s| s.headers.iter().any(|h| h == HEARTBEAT_HEADER))
                {
                    assert!(s.value.is_none(), "a heartbeat is a tombstone");
                    *per_partition.entry(s.partition).or_default() += 1;
                }
                (per_partition.len() == 3 && per_partition.values().all(|&n| n >= 2))
                    .then_some(per_partition)
            }
        },
    )
    .await;
    busy_writer.await.unwrap();
    let busy_topic = args.topic(&format!("public.{busy}"));
    let busy_beats = tokio::task::spawn_blocking({
        let brokers = args.kafka.clone();
        move || read_committed(&brokers, &busy_topic)
    })
    .await
    .unwrap()
    .iter()
    .filter(|s| s.headers.iter().any(|h| h == HEARTBEAT_HEADER))
    .count();
    eprintln!(
        "heartbeats per partition of the idle topic: {beats:?}; on the busy topic: {busy_beats}"
    );

    pg.batch_execute(&format!(
        "UPDATE {idle} SET v = 'changed' WHERE id % 7 = 0; DELETE FROM {idle} WHERE id % 11 = 0"
    ))
    .await
    .unwrap();
    let expected = table_rows(&pg, &idle).await;
    wait_for_rows(&cache, &expected, Duration::from_secs(30)).await;
    let stats = cache.stats();
    assert_eq!(
        stats.bad_records, 0,
        "heartbeats are no bad records: {stats:?}"
    );
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

/// A broker outage longer than the transaction timeout: the open transaction's records
/// time out, the transaction is never committed, the session ends, and the next one
/// starts again from the stored position: a `read_committed` reader sees every
/// change once, with no gap.
///
/// An outage can also begin while the bridge waits for a commit whose records are all
/// delivered: the commit then completes when the broker is back, and nothing is
/// aborted (correct too, but not the case under test). The broker is killed (no clean
/// shutdown, which holds requests longer) at a random moment while changes stream,
/// until one outage has ended a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_an_aborted_transaction_is_written_again_without_gap_or_duplicate() {
    const ATTEMPTS: usize = 5;
    const FAILED: &str = "session failed; retrying";
    let pg = pg().await;
    let name = unique("eosabort");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, w int8 NOT NULL)"
    ))
    .await
    .unwrap();
    let mut broker = PrivateBroker::start(19133).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.kafka = broker.address();
    args.partitions = 3;
    args.extra = vec![
        "--exactly-once".into(),
        "--kafka-property".into(),
        "transaction.timeout.ms=5000".into(),
    ];
    let (mut bridge, args) = start_bridge_with(args).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (table, stop) = (table.clone(), stop.clone());
        async move { write_until(&table, i64::MAX, 200, &stop).await }
    });
    let mut outages = 0;
    while outages < ATTEMPTS && !bridge.log_text().contains(FAILED) {
        outages += 1;
        let streaming = Duration::from_millis(rand::thread_rng().gen_range(2_000..4_000));
        tokio::time::sleep(streaming).await;
        tokio::task::block_in_place(|| broker.kill());
        // Longer than the message timeout (the transaction timeout, 5 s).
        tokio::time::sleep(Duration::from_secs(12)).await;
        broker.resume().await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let committed = writer.await.unwrap();
    let expected: HashSet<i64> = committed.iter().copied().collect();
    let topic = args.topic(&format!("public.{table}"));
    let counts = counts_once_complete(&args.kafka, &topic, &expected).await;
    let twice = counts.values().filter(|&&n| n > 1).count();
    let log = bridge.log_text();
    eprintln!(
        "outages: {outages}: {} committed writes, {} change records, {twice} more than once; sessions started: {}",
        committed.len(),
        counts.values().sum::<usize>(),
        log.matches("exactly once: transactions up to").count()
    );
    assert!(
        log.contains(FAILED),
        "none of {outages} outages ended the session:\n{log}"
    );
    assert_eq!(twice, 0, "duplicates after the aborted transaction");
    assert_eq!(
        counts.len(),
        expected.len(),
        "records of writes never committed"
    );
    assert!(
        log.matches("exactly once: transactions up to").count() >= 2,
        "no session started after the outage:\n{log}"
    );
    assert!(bridge.sigterm(Duration::from_secs(60)).success());
}

/// A table's snapshot and a PostgreSQL transaction that each take longer to produce
/// than `transaction.timeout.ms`: the bridge splits them over several Kafka
/// transactions instead of failing every session (the coordinator would abort a
/// transaction that stays open longer), and a kill -9 after part of the large
/// transaction is committed resumes inside it: a `read_committed` reader sees each
/// row of the snapshot and each change of the transaction exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_a_snapshot_and_a_transaction_longer_than_the_transaction_timeout_are_written_once(
) {
    /// Rows of the one large transaction.
    const LARGE: i64 = 1_000_000;
    let (table, mut args) = table_with_rows("eoslong").await;
    let pg = pg().await;
    // The snapshot takes about 16 s at this rate: longer than the transaction timeout
    // plus the broker's check for timed-out transactions (every 10 s), so a single
    // Kafka transaction for it is surely aborted.
    args.extra = vec![
        "--exactly-once".into(),
        "--kafka-property".into(),
        "transaction.timeout.ms=4000".into(),
        "--snapshot-rows-per-second".into(),
        (SNAPSHOT_ROWS / 16).to_string(),
        // A heartbeat commits a Kafka transaction between PostgreSQL ones, also while
        // the restarted bridge decodes the large transaction again: that commit must
        // keep the stored part of it.
        "--heartbeat-interval".into(),
        "1s".into(),
    ];
    let (mut bridge, args) = start_bridge_with(args).await;
    pg.batch_execute(&format!(
        "INSERT INTO {table} SELECT g, g FROM generate_series(1, {LARGE}) g"
    ))
    .await
    .unwrap();
    // Killed right after the first part of the large transaction is committed.
    bridge
        .wait_for_log(
            "committed part of a PostgreSQL transaction",
            Duration::from_secs(120),
        )
        .await;
    bridge.kill9();
    bridge = Bridge::start(&args);
    let expected: HashSet<i64> = (1..=LARGE).chain((1..=SNAPSHOT_ROWS).map(|g| -g)).collect();
    let topic = args.topic(&format!("public.{table}"));
    let counts = counts_once_complete(&args.kafka, &topic, &expected).await;
    let twice: Vec<(&i64, &usize)> = counts.iter().filter(|(_, &n)| n > 1).collect();
    let log = bridge.log_text();
    assert!(
        twice.is_empty(),
        "{} rows or changes reached the reader more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(counts.len(), expected.len());
    assert!(
        log.contains("resuming inside PostgreSQL transaction"),
        "the restarted bridge did not resume inside the large transaction:\n{log}"
    );
    assert!(bridge.sigterm(Duration::from_secs(60)).success());
}

/// A session that creates the slot and then fails before the slot's markers are
/// written (here the broker refuses the transactional producer: a
/// `transaction.timeout.ms` above its `transaction.max.timeout.ms`, which stops the
/// bridge, since retrying cannot change it) drops the new slot again. The next
/// session creates it anew, so it writes the markers and the table's initial
/// snapshot. A slot left behind would look like an old one to the next session: no
/// markers (caches would not learn of the gap before it) and no snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_failing_after_creating_its_slot_drops_it_so_the_next_marks_it() {
    let pg = pg().await;
    let name = unique("eosfailnew");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, w int8 NOT NULL);
         INSERT INTO {table} SELECT g, g FROM generate_series(1, 50) g;"
    ))
    .await
    .unwrap();
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.extra = vec![
        "--exactly-once".into(),
        "--kafka-property".into(),
        "transaction.timeout.ms=1000000000".into(),
    ];
    let topic = args.topic(&format!("public.{table}"));
    let mut failing = Bridge::start(&args);
    let status = failing.wait_exit(Duration::from_secs(60));
    let log = failing.log_text();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("created replication slot") && log.contains("max.transaction.timeout.ms"),
        "the failing session never got as far as the slot, or failed for another reason: {log}"
    );
    let left = pg
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&args.slot],
        )
        .await
        .unwrap();
    assert!(
        left.is_none(),
        "the unmarked new slot was left behind: {log}"
    );

    args.extra = vec!["--exactly-once".into()];
    let bridge = Bridge::start(&args);
    bridge
        .wait_for_log("streaming", Duration::from_secs(60))
        .await;
    assert!(
        bridge.log_text().contains("new slot: markers written"),
        "the slot the failed session created was taken for an old one: {}",
        bridge.log_text()
    );
    let seen = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || read_committed(&kafka(), &topic)
    })
    .await
    .unwrap();
    let markers = seen
        .iter()
        .filter(|s| s.headers.iter().any(|h| h == SLOT_MARKER_HEADER))
        .count();
    let snapshot: BTreeMap<i64, i64> = seen
        .iter()
        .filter_map(|s| s.value.as_ref())
        .filter(|v| v["op"] == "r")
        .map(|v| {
            (
                v["after"]["id"].as_i64().unwrap(),
                v["after"]["w"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(markers, 1, "one marker on the topic's one partition");
    assert_eq!(
        snapshot,
        (1..=50).map(|g| (g, g)).collect::<BTreeMap<_, _>>(),
        "the table's initial snapshot"
    );
}

/// A producer that takes over the bridge's `transactional.id` fences the bridge: its
/// session fails, and the log says what fences a producer, naming both causes (another
/// bridge with the same id, or a transaction the broker aborted after
/// `transaction.timeout.ms`), so an operator does not hunt for a second bridge that
/// does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_bridge_says_what_fences_it() {
    use rdkafka::producer::{Producer, ThreadedProducer};
    let pg = pg().await;
    let name = unique("eosfenced");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, w int8 NOT NULL)"
    ))
    .await
    .unwrap();
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.extra = vec!["--exactly-once".into()];
    let (bridge, args) = start_bridge_with(args).await;
    let id = format!("tidemark.{}.{}", args.prefix, args.slot);
    assert!(bridge.log_text().contains(&id), "{}", bridge.log_text());
    let before = bridge.log_text().len();
    tokio::task::spawn_blocking(move || {
        let other: ThreadedProducer<_> = ClientConfig::new()
            .set("bootstrap.servers", kafka())
            .set("transactional.id", &id)
            .create()
            .expect("producer");
        other
            .init_transactions(Duration::from_secs(30))
            .expect("init");
    })
    .await
    .unwrap();
    pg.batch_execute(&format!("INSERT INTO {table} VALUES (1, 1)"))
        .await
        .unwrap();
    let failed = wait_for(
        Duration::from_secs(60),
        "the fenced session to fail",
        || {
            let log = bridge.log_text();
            async move {
                log.get(before..)
                    .unwrap_or_default()
                    .lines()
                    .find(|l| l.contains("session failed"))
                    .map(str::to_owned)
            }
        },
    )
    .await;
    for cause in [
        "This instance has been fenced by a newer instance",
        "with its transactional id (tidemark.",
        "transaction.timeout.ms (",
    ] {
        assert!(
            failed.contains(cause),
            "{cause:?} is not named in: {failed}"
        );
    }
    // The next session starts a new producer (fencing the other one) and writes each
    // change once.
    pg.batch_execute(&format!("INSERT INTO {table} VALUES (2, 2)"))
        .await
        .unwrap();
    let topic = args.topic(&format!("public.{table}"));
    let seen = wait_for(
        Duration::from_secs(60),
        "both changes after the fencing",
        || {
            let topic = topic.clone();
            async move {
                let seen = tokio::task::spawn_blocking(move || read_committed(&kafka(), &topic))
                    .await
                    .unwrap();
                let writes: Vec<i64> = seen.iter().filter_map(write_of).collect();
                writes.contains(&2).then_some(writes)
            }
        },
    )
    .await;
    assert_eq!(seen, vec![1, 2]);
}
