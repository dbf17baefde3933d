//! The bridge's initial snapshot (`--snapshot initial`, the default): every row of a
//! table written as an op `r` record before the first change, under concurrent
//! writes, across a crash in the middle, and with caches that start while it runs.
//!
//! The table is `(id int PRIMARY KEY, v text)` where `v` counts the updates of its row
//! from `'0'`. So a consumer that rebuilds the table from the topic can check every
//! step: an `r` record never goes back, an update is exactly one more than what came
//! before it on the key, a create finds the key absent. A change that the snapshot
//! already holds and that the bridge wrote again, or one it left out, breaks this.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tidemark_client::{Cache, Row};
use tokio_postgres::Client;

use crate::support::*;

/// Creates `table` with `rows` rows `(id, '0')`.
async fn create_counted(pg: &Client, table: &str, rows: i64) {
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO {table} SELECT g, '0' FROM generate_series(1, {rows}) g;"
    ))
    .await
    .unwrap();
}

/// Writes until `stop`: one statement per transaction, updates (`v + 1`) of random
/// keys, inserts of new keys, and deletes when `deletes` is set.
fn start_writer(
    table: String,
    keys: i64,
    deletes: bool,
    stop: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let pg = pg().await;
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let id = (n.wrapping_mul(2_654_435_761) % (keys as u64 * 5 / 4)) as i64 + 1;
            let sql = match n % 10 {
                0..=6 => format!("UPDATE {table} SET v = (v::int8 + 1)::text WHERE id = {id}"),
                7 | 8 => format!("INSERT INTO {table} VALUES ({id}, '0') ON CONFLICT DO NOTHING"),
                _ if deletes => format!("DELETE FROM {table} WHERE id = {id}"),
                _ => format!("UPDATE {table} SET v = (v::int8 + 1)::text WHERE id = {id}"),
            };
            pg.batch_execute(&sql).await.unwrap();
            commits.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// What a consumer that rebuilds the table from the topic holds, after checking every
/// step (see the module doc). Returns the rows and the number of `r` records.
fn rebuild(records: &[Rec]) -> Result<(BTreeMap<i64, String>, usize), String> {
    let mut rows: BTreeMap<i64, String> = BTreeMap::new();
    let mut reads = 0;
    let mut streamed_on = std::collections::HashSet::new();
    for rec in records {
        let Some(id) = rec.key.get("id").and_then(Value::as_i64) else {
            return Err(format!("a record without an id key: {:?}", rec.key));
        };
        let Some(value) = &rec.value else {
            // A tombstone follows its delete.
            if rows.contains_key(&id) {
                return Err(format!("a tombstone of {id}, which is present"));
            }
            continue;
        };
        let op = value["op"].as_str().unwrap_or_default();
        let v = || {
            value["after"]["v"]
                .as_str()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| format!("no v in {value}"))
        };
        let before = rows.get(&id).map(|s| s.parse::<i64>().unwrap_or(-1));
        match op {
            "r" => {
                if streamed_on.contains(&rec.partition) {
                    return Err(format!(
                        "an r record of {id} after a streamed change on partition {}",
                        rec.partition
                    ));
                }
                if rec.snapshot.is_none() {
                    return Err(format!("the r record of {id} has no snapshot header"));
                }
                let v = v()?;
                if before.is_some_and(|b| v < b) {
                    return Err(format!("r record of {id} goes back from {before:?} to {v}"));
                }
                reads += 1;
                rows.insert(id, v.to_string());
            }
            "c" | "u" | "d" => {
                streamed_on.insert(rec.partition);
                match (op, before) {
                    ("c", None) if v()? == 0 => {
                        rows.insert(id, "0".into());
                    }
                    ("u", Some(b)) if v()? == b + 1 => {
                        rows.insert(id, (b + 1).to_string());
                    }
                    ("d", Some(_)) => {
                        rows.remove(&id);
                    }
                    _ => {
                        return Err(format!(
                            "{op} of {id} at offset {} of partition {} does not follow {before:?}: {value}",
                            rec.offset, rec.partition
                        ))
                    }
                }
            }
            other => return Err(format!("unexpected op {other:?}")),
        }
    }
    Ok((rows, reads))
}

/// Waits until the rebuilt topic equals the table; panics on a broken step.
async fn until_rebuilt(pg: &Client, table: &str, topic: &str) -> Vec<Rec> {
    let expected = table_rows(pg, table).await;
    wait_for(
        Duration::from_secs(90),
        "the topic to rebuild the table",
        || async {
            let (b, t) = (kafka(), topic.to_string());
            let records = tokio::task::spawn_blocking(move || read_topic(&b, &t))
                .await
                .unwrap();
            let (rows, _) = rebuild(&records).unwrap_or_else(|e| panic!("{topic}: {e}"));
            (rows == expected).then_some(records)
        },
    )
    .await
}

/// The `source.snapshot` marks other than `"true"`, sorted (records come partition by
/// partition, so their order says nothing).
fn marks(records: &[Rec]) -> Vec<String> {
    let mut marks: Vec<String> = records
        .iter()
        .filter_map(|r| r.value.as_ref())
        .filter(|v| v["op"] == "r")
        .map(|v| {
            v["source"]["snapshot"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .filter(|m| m != "true")
        .collect();
    marks.sort();
    marks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_and_the_stream_rebuild_the_table_under_concurrent_writes() {
    let pg = pg().await;
    let name = unique("snapwrites");
    let table = format!("{name}_t");
    create_counted(&pg, &table, 3000).await;
    let (stop, commits) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let writer = start_writer(table.clone(), 3000, true, stop.clone(), commits.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.partitions = 3;
    args.extra = vec!["--snapshot-rows-per-second".into(), "1500".into()];
    let (_bridge, args) = start_bridge_with(args).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let records = until_rebuilt(&pg, &table, &args.topic(&format!("public.{table}"))).await;
    let (_, reads) = rebuild(&records).unwrap();
    let m = marks(&records);
    println!(
        "snapshot under writes: {} commits, {reads} r records, {} records in all, marks {m:?}",
        commits.load(Ordering::Relaxed),
        records.len()
    );
    assert!(reads >= 3000 * 3 / 4, "{reads} r records");
    assert_eq!(
        m,
        ["first", "last"],
        "one table: its first row is the snapshot's first, its last the snapshot's last"
    );
    assert!(
        records.len() > reads,
        "changes made during the snapshot were streamed after it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_never_writes_only_changes() {
    let pg = pg().await;
    let name = unique("snapnever");
    let table = format!("{name}_t");
    create_counted(&pg, &table, 50).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.extra = vec!["--snapshot".into(), "never".into()];
    let (_bridge, args) = start_bridge_with(args).await;
    pg.batch_execute(&format!("INSERT INTO {table} VALUES (1000, '0')"))
        .await
        .unwrap();
    let records = wait_for_records(
        &kafka(),
        &args.topic(&format!("public.{table}")),
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].value.as_ref().unwrap()["op"], "c");
}

/// Whether a table gets its snapshot depends on whether its topic holds any row, not
/// on its watermarks: what a failed first attempt to start a slot can leave there (a
/// slot marker, records of an aborted Kafka transaction) raises the watermarks but
/// holds no row, and the table must still get its op r records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_holding_only_markers_and_aborted_records_still_gets_the_snapshot() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
    let pg = pg().await;
    let name = unique("snapmarked");
    let table = format!("{name}_t");
    create_counted(&pg, &table, 50).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.partitions = 2;
    let topic = args.topic(&format!("public.{table}"));
    create_topic(&kafka(), &topic, 2, &[]).await;
    let written = topic.clone();
    tokio::task::spawn_blocking(move || {
        let producer: ThreadedProducer<_> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka())
            .set("transactional.id", format!("{written}-test"))
            .create()
            .expect("producer");
        let timeout = Duration::from_secs(30);
        producer.init_transactions(timeout).expect("init");
        // Partition 0: a slot marker, committed.
        producer.begin_transaction().expect("begin");
        let marker = OwnedHeaders::new().insert(Header {
            key: tidemark_core::wire::envelope::SLOT_MARKER_HEADER,
            value: Some(r#"{"slot":"earlier"}"#),
        });
        producer
            .send(
                BaseRecord::to(&written)
                    .partition(0)
                    .key(r#"{"tidemark.slot-created":"earlier"}"#)
                    .payload(r#"{"slot":"earlier"}"#)
                    .headers(marker),
            )
            .map_err(|(e, _)| e)
            .expect("send the marker");
        producer.commit_transaction(timeout).expect("commit");
        // Partition 1: a row's record in a transaction that is aborted.
        producer.begin_transaction().expect("begin");
        producer
            .send(
                BaseRecord::to(&written)
                    .partition(1)
                    .key(r#"{"id":1}"#)
                    .payload(r#"{"op":"c","after":{"id":1,"v":"0"}}"#),
            )
            .map_err(|(e, _)| e)
            .expect("send the row");
        producer.flush(timeout).expect("flush");
        producer.abort_transaction(timeout).expect("abort");
    })
    .await
    .unwrap();
    let (bridge, _args) = start_bridge_with(args).await;
    let records = wait_for_records(&kafka(), &topic, 50, Duration::from_secs(30)).await;
    assert!(
        !bridge.log_text().contains("no snapshot of this table"),
        "{}",
        bridge.log_text()
    );
    assert_eq!(records.len(), 50, "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| r.value.as_ref().is_some_and(|v| v["op"] == "r")),
        "{records:?}"
    );
}

/// A cache of the small table's shape on `args`' topic.
fn cache(args: &BridgeArgs, table: &str) -> Cache<Row, Row> {
    args.row_cache(table).start().expect("cache starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_started_before_during_and_after_the_bridges_snapshot_are_exact() {
    let pg = pg().await;
    let name = unique("snapcache");
    // The bridge reads `other` first, then `table`: a cache of `table` started while
    // `other` is read loads after the slot was created and before `table`'s snapshot.
    let (other, table) = (format!("{name}_o"), format!("{name}_t"));
    create_counted(&pg, &other, 4000).await;
    create_counted(&pg, &table, 20_000).await;
    let (stop, commits) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let writer = start_writer(table.clone(), 20_000, true, stop.clone(), commits.clone());
    let mut args = BridgeArgs::new(
        &name,
        &[&format!("public.{other}"), &format!("public.{table}")],
    );
    args.partitions = 2;
    args.extra = vec!["--snapshot-rows-per-second".into(), "4000".into()];
    // Before the bridge starts, on the empty topic (which the bridge keeps and fills).
    let topic = args.topic(&format!("public.{table}"));
    create_topic(&args.kafka, &topic, 2, &[("cleanup.policy", "compact")]).await;
    let before = cache(&args, &table);
    before.ready().await.expect("ready on the empty topic");
    drop_slot_and_publication(&pg, &args.slot, &args.publication).await;
    let bridge = Bridge::start(&args);
    bridge
        .wait_for_log("initial snapshot: writing", Duration::from_secs(60))
        .await;
    let between = cache(&args, &table);
    bridge
        .wait_for_log("snapshot of the table written", Duration::from_secs(60))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = cache(&args, &table);
    bridge
        .wait_for_log("streaming", Duration::from_secs(60))
        .await;
    let after = cache(&args, &table);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let expected = table_rows(&pg, &table).await;
    let caches = [
        ("before", &before),
        ("between", &between),
        ("during", &during),
        ("after", &after),
    ];
    for (label, c) in caches {
        c.ready().await.expect("ready");
        wait_for_rows(c, &expected, Duration::from_secs(60)).await;
        let s = c.stats();
        println!(
            "cache started {label} the snapshot: {} warm starts, {} skipped as in its load, {} applied",
            s.warm_starts, s.skipped_in_snapshot, s.applied
        );
        assert_eq!(s.bad_records, 0, "{label}");
    }
    println!(
        "{} commits during the test",
        commits.load(Ordering::Relaxed)
    );
    // Loaded before the slot: the slot marker sends it back; loaded after the slot
    // but before the table's snapshot: the snapshot's first record does.
    assert!(before.stats().warm_starts >= 2, "before");
    assert!(between.stats().warm_starts >= 2, "between");
    until_rebuilt(&pg, &table, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_during_the_snapshot_reads_only_the_unfinished_table_again() {
    let pg = pg().await;
    let name = unique("snapcrash");
    let (first, second) = (format!("{name}_a"), format!("{name}_b"));
    create_counted(&pg, &first, 1000).await;
    create_counted(&pg, &second, 4000).await;
    let stop = Arc::new(AtomicBool::new(false));
    let commits = Arc::new(AtomicU64::new(0));
    // No deletes: a row deleted between the interrupted read and the next one would
    // keep its r record (see docs/design.md), which this rebuild would count.
    let writers = [
        start_writer(first.clone(), 1000, false, stop.clone(), commits.clone()),
        start_writer(second.clone(), 4000, false, stop.clone(), commits.clone()),
    ];
    let mut args = BridgeArgs::new(
        &name,
        &[&format!("public.{first}"), &format!("public.{second}")],
    );
    args.partitions = 2;
    args.extra = vec!["--snapshot-rows-per-second".into(), "1000".into()];
    drop_slot_and_publication(&pg, &args.slot, &args.publication).await;
    let mut bridge = Bridge::start(&args);
    let second_topic = args.topic(&format!("public.{second}"));
    wait_for_records(&kafka(), &second_topic, 1000, Duration::from_secs(60)).await;
    bridge.kill9();
    assert!(
        !bridge.log_text().contains("initial snapshot written"),
        "the kill came after the snapshot"
    );
    args.extra.clear();
    let restarted = Bridge::start(&args);
    restarted
        .wait_for_log("streaming", Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let first_records = until_rebuilt(&pg, &first, &args.topic(&format!("public.{first}"))).await;
    let second_records = until_rebuilt(&pg, &second, &second_topic).await;
    let (m1, m2) = (marks(&first_records), marks(&second_records));
    println!(
        "crash during the snapshot: {} commits; marks of the first table {m1:?}, of the second {m2:?}",
        commits.load(Ordering::Relaxed)
    );
    assert_eq!(
        m1,
        ["first", "last_in_data_collection"],
        "the finished table is read once"
    );
    assert_eq!(
        m2.iter()
            .filter(|m| *m == "first_in_data_collection")
            .count(),
        2,
        "the unfinished table is read again: {m2:?}"
    );
    assert_eq!(
        m2.iter().filter(|m| *m == "last").count(),
        1,
        "the snapshot's last row: {m2:?}"
    );
    // And a cache of each ends equal to its table.
    for table in [&first, &second] {
        let c = args.row_cache(table).build().await.expect("cache");
        let expected = table_rows(&pg, table).await;
        wait_for_rows(&c, &expected, Duration::from_secs(60)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_row_reads_as_the_stream_writes_it() {
    let pg = pg().await;
    let name = unique("snaptypes");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, b bool, ip inet, net cidr, n numeric, \
         m money, tz timestamptz, ts timestamp, d date, t time, iv interval, by bytea, \
         j json, jb jsonb, words text[], ints int4[], u uuid, f float8, bits bit(3), \
         vb varbit, pt point, boxes box[], c char(3), x xml, nothing text)"
    ))
    .await
    .unwrap();
    let insert = |id: i32| {
        format!(
            r#"INSERT INTO {table} VALUES ({id}, true, '10.1.2.3', '10.1.0.0/16', 12.50,
                 '-1234.56', '2026-01-02 03:04:05.678+02', '2026-01-02 03:04:05', '2026-01-02',
                 '04:05:06.5', '1 year 2 months 3 days', '\x00ff', '{{"a": [1, 2.5]}}',
                 '{{"b": null}}', ARRAY['x', 'y z', NULL], '{{1,2}}',
                 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'NaN', B'101', B'1', '(1,2)',
                 ARRAY['((1,1),(0,0))'::box], 'ab', '<a>1</a>', NULL)"#
        )
    };
    pg.batch_execute(&insert(1)).await.unwrap();
    let (_bridge, args) = start_bridge(&name, &[&format!("public.{table}")]).await;
    pg.batch_execute(&insert(2)).await.unwrap();
    let records = wait_for_records(
        &kafka(),
        &args.topic(&format!("public.{table}")),
        2,
        Duration::from_secs(30),
    )
    .await;
    let row = |op: &str| {
        let mut after = records
            .iter()
            .filter_map(|r| r.value.as_ref())
            .find(|v| v["op"] == op)
            .unwrap_or_else(|| panic!("no {op} record in {records:?}"))["after"]
            .clone();
        after.as_object_mut().unwrap().remove("id");
        after
    };
    assert_eq!(
        row("r"),
        row("c"),
        "the snapshot and the stream encode alike"
    );
    assert_eq!(row("r")["b"], Value::Bool(true));
    assert_eq!(row("r")["ip"], Value::String("10.1.2.3".into()));
}
