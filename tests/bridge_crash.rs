//! No change is lost across crashes (kill -9) or a broker outage longer than any
//! producer timeout, no partition has a gap that a replay fills later, and a SIGTERM
//! drains and confirms.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::support::*;

/// One change as the writer committed it: (id, op, version); deletes carry version 0.
type Change = (i64, char, i64);

/// Commits `total` changes (inserts, updates, deletes) in transactions of 1 to 20,
/// paced to `per_sec`; returns every committed change in commit order.
async fn write_changes(table: &str, total: usize, per_sec: u64) -> Vec<Change> {
    let pg = pg().await;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let (mut next_id, mut live, mut versions) =
        (1i64, Vec::<i64>::new(), HashMap::<i64, i64>::new());
    let mut committed = Vec::with_capacity(total);
    let started = std::time::Instant::now();
    while committed.len() < total {
        let n = rng.gen_range(1..=20);
        let (mut sql, mut changes) = (String::from("BEGIN;"), Vec::new());
        let (mut txn_live, mut txn_versions) = (live.clone(), versions.clone());
        for _ in 0..n {
            let roll = rng.gen_range(0..100);
            if roll < 50 || txn_live.is_empty() {
                sql += &format!("INSERT INTO {table} VALUES ({next_id}, 0, repeat('x', 80));");
                changes.push((next_id, 'c', 0));
                txn_live.push(next_id);
                txn_versions.insert(next_id, 0);
                next_id += 1;
            } else if roll < 85 {
                let id = txn_live[rng.gen_range(0..txn_live.len())];
                let v = txn_versions[&id] + 1;
                sql += &format!("UPDATE {table} SET v = {v} WHERE id = {id};");
                changes.push((id, 'u', v));
                txn_versions.insert(id, v);
            } else {
                let id = txn_live.swap_remove(rng.gen_range(0..txn_live.len()));
                sql += &format!("DELETE FROM {table} WHERE id = {id};");
                changes.push((id, 'd', 0));
            }
        }
        sql += "COMMIT;";
        pg.batch_execute(&sql).await.expect("writer transaction");
        live = txn_live;
        versions = txn_versions;
        committed.extend(changes);
        let due = Duration::from_millis(committed.len() as u64 * 1000 / per_sec);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    committed
}

fn change_of(rec: &Rec) -> Option<Change> {
    let v = rec.value.as_ref()?;
    let op = v["op"].as_str()?.chars().next()?;
    let row = if op == 'd' { &v["before"] } else { &v["after"] };
    let id = row["id"].as_i64()?;
    Some((id, op, if op == 'd' { 0 } else { row["v"].as_i64()? }))
}

fn position(rec: &Rec) -> (u64, u64, u64) {
    let s = &rec.value.as_ref().expect("not a tombstone")["source"];
    (
        s["commit_lsn"].as_u64().expect("commit_lsn"),
        s["lsn"].as_u64().expect("lsn"),
        s["seq"].as_u64().unwrap_or(0),
    )
}

/// Records written out of order: per partition, a record below the highest position
/// before it that no earlier record had. That is a gap a replay filled later, and
/// readers drop the record as a replay although they never saw it.
fn gaps(recs: &[Rec]) -> Vec<&Rec> {
    type Seen = (HashSet<(u64, u64, u64)>, (u64, u64, u64));
    let mut seen: HashMap<i32, Seen> = HashMap::new();
    let mut out = Vec::new();
    for rec in recs.iter().filter(|r| r.value.is_some()) {
        let pos = position(rec);
        let (earlier, max) = seen.entry(rec.partition).or_default();
        if pos < *max && !earlier.contains(&pos) {
            out.push(rec);
        }
        earlier.insert(pos);
        *max = (*max).max(pos);
    }
    out
}

/// Applies the readers' rule: per partition, a record whose position is not
/// newer than the last one kept is a replay. Returns the kept changes per id, and
/// how many replays were dropped.
fn without_replays(recs: &[Rec]) -> (BTreeMap<i64, Vec<Change>>, usize) {
    let mut last: HashMap<i32, (u64, u64, u64)> = HashMap::new();
    let (mut per_id, mut replays) = (BTreeMap::<i64, Vec<Change>>::new(), 0);
    for rec in recs.iter().filter(|r| r.value.is_some()) {
        let pos = position(rec);
        if last.get(&rec.partition).is_some_and(|&l| pos <= l) {
            replays += 1;
            continue;
        }
        last.insert(rec.partition, pos);
        let c = change_of(rec).expect("a change record");
        per_id.entry(c.0).or_default().push(c);
    }
    (per_id, replays)
}

/// Waits until the topic holds every committed change, then checks it: exactly the
/// committed changes, no gaps, and after dropping replays each row's history in order.
async fn check_topic(args: &BridgeArgs, table: &str, committed: &[Change], what: &str) {
    let topic = args.topic(&format!("public.{table}"));
    let brokers = args.kafka.clone();
    let expected: HashSet<Change> = committed.iter().copied().collect();
    let recs = wait_for(
        Duration::from_secs(180),
        "every committed change in Kafka",
        || {
            let (topic, expected, brokers) = (topic.clone(), expected.clone(), brokers.clone());
            async move {
                let recs = tokio::task::spawn_blocking(move || read_topic(&brokers, &topic))
                    .await
                    .unwrap();
                let seen: HashSet<Change> = recs.iter().filter_map(change_of).collect();
                expected.is_subset(&seen).then_some(recs)
            }
        },
    )
    .await;

    let changes: Vec<Change> = recs.iter().filter_map(change_of).collect();
    let unique: HashSet<Change> = changes.iter().copied().collect();
    assert_eq!(
        unique, expected,
        "Kafka holds exactly the committed changes"
    );
    let gaps = gaps(&recs);
    assert!(
        gaps.is_empty(),
        "{} records were written after later records of their partition, e.g. {:?}",
        gaps.len(),
        gaps.first()
    );
    let (per_id, replays) = without_replays(&recs);
    let mut committed_per_id = BTreeMap::<i64, Vec<Change>>::new();
    for c in committed {
        committed_per_id.entry(c.0).or_default().push(*c);
    }
    assert_eq!(
        per_id, committed_per_id,
        "after dropping replays, every row's history is its committed history, in order"
    );
    eprintln!(
        "{what}: {} committed changes, {} change records in Kafka, {} duplicates from replay ({} dropped by the position rule)",
        committed.len(),
        changes.len(),
        changes.len() - unique.len(),
        replays
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_change_is_lost_across_two_crashes() {
    let pg = pg().await;
    let name = unique("crash");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, v int8 NOT NULL, pad text)"
    ))
    .await
    .unwrap();
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.partitions = 3;
    let (mut bridge, args) = start_bridge_with(args).await;

    let writer = tokio::spawn({
        let table = table.clone();
        async move { write_changes(&table, 20_000, 1_500).await }
    });
    for crash in 1..=2 {
        tokio::time::sleep(Duration::from_secs(4)).await;
        bridge.kill9();
        eprintln!("crash {crash}: killed the bridge with SIGKILL");
        tokio::time::sleep(Duration::from_millis(500)).await;
        bridge = Bridge::start(&args);
    }
    let committed = writer.await.unwrap();
    assert!(committed.len() >= 20_000);

    check_topic(&args, &table, &committed, "crash test").await;
    let status = bridge.sigterm(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_longer_than_any_timeout_leaves_no_gap() {
    let pg = pg().await;
    let name = unique("outage");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, v int8 NOT NULL, pad text)"
    ))
    .await
    .unwrap();
    let mut broker = PrivateBroker::start(19097).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.kafka = broker.address();
    args.partitions = 3;
    let (mut bridge, args) = start_bridge_with(args).await;

    // About 60 s of writes; the broker is gone for 45 of them, longer than the
    // 30 s message timeout librdkafka would otherwise apply.
    let writer = tokio::spawn({
        let table = table.clone();
        async move { write_changes(&table, 6_000, 100).await }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    tokio::task::block_in_place(|| broker.stop());
    tokio::time::sleep(Duration::from_secs(45)).await;
    broker.resume().await;
    let committed = writer.await.unwrap();
    check_topic(&args, &table, &committed, "broker outage").await;
    let log = bridge.log_text();
    assert!(
        !log.contains("timed out"),
        "a record timed out in the producer:\n{log}"
    );
    let status = bridge.sigterm(Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
}

/// Rows the SIGTERM test writes.
const ROWS: i64 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_confirms_and_exits_zero() {
    let pg = pg().await;
    let name = unique("term");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, v int8 NOT NULL, pad text)"
    ))
    .await
    .unwrap();
    let (mut bridge, args) = start_bridge(&name, &[&format!("public.{table}")]).await;
    let topic = args.topic(&format!("public.{table}"));

    // Half the rows as a backlog, SIGTERM while the bridge works through it, then
    // the other half while it is stopped.
    let write = |from: i64, to: i64| {
        let table = table.clone();
        async move {
            let pg = crate::support::pg().await;
            for batch in (from..to).step_by(100) {
                pg.batch_execute(&format!(
                    "INSERT INTO {table} SELECT g, 0, repeat('y', 200) FROM generate_series({}, {}) g",
                    batch + 1,
                    batch + 100
                ))
                .await
                .unwrap();
            }
        }
    };
    write(0, ROWS / 2).await;
    let status = bridge.sigterm(Duration::from_secs(60));
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        bridge.log_text()
    );
    assert!(
        bridge.log_text().contains("stopped cleanly"),
        "{}",
        bridge.log_text()
    );
    let confirmed = confirmed_flush(&pg, &args.slot).await.expect("slot exists");
    write(ROWS / 2, ROWS).await;

    let first_run = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || read_topic(&kafka(), &topic)
    })
    .await
    .unwrap();
    assert!(
        first_run.len() < ROWS as usize,
        "SIGTERM landed while changes were still arriving"
    );
    let first_commits: HashSet<u64> = first_run.iter().map(|r| position(r).0).collect();
    let beyond: Vec<&u64> = first_commits.iter().filter(|&&c| c >= confirmed).collect();
    assert!(
        beyond.len() <= 1,
        "only a transaction cut off by the stop may lie beyond the confirmed LSN {confirmed}; these do: {beyond:?}"
    );

    // A new bridge replays from the confirmed LSN: nothing is missing, and nothing
    // confirmed before the stop is sent again.
    let mut bridge = Bridge::start(&args);
    let recs = wait_for_records(&kafka(), &topic, ROWS as usize, Duration::from_secs(180)).await;
    let ids: HashSet<i64> = recs.iter().filter_map(change_of).map(|c| c.0).collect();
    assert_eq!(ids.len(), ROWS as usize, "every row reached Kafka");
    let mut seen = HashSet::new();
    for rec in &recs {
        let key = (position(rec), rec.key.clone());
        if !seen.insert(key) {
            assert!(
                position(rec).0 >= confirmed,
                "a change confirmed before SIGTERM was replayed: {rec:?}"
            );
        }
    }
    eprintln!(
        "sigterm test: {} records before the stop, confirmed LSN {confirmed}, {} records after the restart",
        first_run.len(),
        recs.len()
    );
    assert!(bridge.sigterm(Duration::from_secs(60)).success());
}
