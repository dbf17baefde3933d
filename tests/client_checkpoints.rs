//! Checkpoints: a cache restarts from its own checkpoint without reading the table,
//! a new instance starts from a peer's over HTTP, and a checkpoint that is damaged,
//! of another table shape, or older than the topic's retention is refused with its
//! reason and the cache warm-starts from PostgreSQL instead, ending equal to the table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::admin::AdminOptions;
use rdkafka::consumer::Consumer as _;
use rdkafka::{Offset, TopicPartitionList};
use tidemark_client::{Cache, Row, StartedFrom};
use tokio_postgres::Client;

use crate::support::*;

/// A bridge on `table` without its initial snapshot: the snapshot scans the table, and
/// the bridge's backend reports that scan whenever it flushes its statistics, which
/// the tests here would count against the cache.
async fn start_bridge_unscanned(name: &str, table: &str) -> (Bridge, BridgeArgs) {
    let mut args = BridgeArgs::new(name, &[&format!("public.{table}")]);
    args.extra = vec!["--snapshot".into(), "never".into()];
    start_bridge_with(args).await
}

/// A fresh, empty directory for checkpoints.
fn checkpoint_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tidemark-checkpoints-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The checkpoint files in `dir`.
fn checkpoints_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .collect();
    files.sort();
    files
}

/// Sequential scans of `table` and the rows they read, as the statistics say.
/// (this session's own scans, the test's `UPDATE`s, flushed first).
async fn scans(pg: &Client, table: &str) -> (i64, i64) {
    pg.batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    let row = pg
        .query_one(
            "SELECT seq_scan, seq_tup_read FROM pg_stat_user_tables WHERE relid = $1::text::regclass",
            &[&table],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Updates, deletes and inserts some rows.
async fn churn(pg: &Client, table: &str, round: i32) {
    pg.batch_execute(&format!(
        "UPDATE {table} SET v = 'round{round}-' || id WHERE id % 7 = {m};
         DELETE FROM {table} WHERE id % 11 = {m};
         INSERT INTO {table} SELECT g, 'new{round}-' || g FROM generate_series({a}, {b}) g;",
        m = round % 7,
        a = 1000 + round * 100,
        b = 1000 + round * 100 + 30,
    ))
    .await
    .unwrap();
}

/// Waits until `cache` equals the table.
async fn until_equal(pg: &Client, table: &str, cache: &Cache<Row, Row>) {
    until_rows(&table_rows(pg, table).await, cache).await;
}

/// Waits until `cache` holds `expected` (read from the table beforehand, so that
/// waiting does not scan the table).
async fn until_rows(expected: &BTreeMap<i64, String>, cache: &Cache<Row, Row>) {
    wait_for_rows(cache, expected, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_a_checkpoint_reads_nothing_from_the_table() {
    let pg = pg().await;
    let name = unique("ckrestart");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let (mut bridge, args) = start_bridge_unscanned(&name, &table).await;
    let dir = checkpoint_dir(&name);

    // The first run loads from PostgreSQL, follows some changes, and writes a
    // checkpoint when it shuts down.
    let first = args
        .row_cache(&table)
        .checkpoint_dir(&dir)
        .build()
        .await
        .expect("cache");
    assert_eq!(
        first.stats().started_from,
        Some(StartedFrom::Postgres {
            refused: Some(format!(
                "{} holds no checkpoint of {}",
                dir.display(),
                args.topic(&format!("public.{table}"))
            ))
        })
    );
    churn(&pg, &table, 1).await;
    until_equal(&pg, &table, &first).await;
    first.clone().shutdown().await;
    // Written at shutdown.
    assert!(first.stats().checkpoints_written >= 1);
    assert!(!checkpoints_in(&dir).is_empty());

    // Changes while no cache runs.
    churn(&pg, &table, 2).await;
    pg.batch_execute(&format!("UPDATE {table} SET v = 'last' WHERE id = 3"))
        .await
        .unwrap();
    let expected = table_rows(&pg, &table).await;
    let before = scans(&pg, &table).await;

    let second = args
        .row_cache(&table)
        .checkpoint_dir(&dir)
        .build()
        .await
        .expect("cache");
    let stats = second.stats();
    assert!(
        matches!(&stats.started_from, Some(StartedFrom::Checkpoint { location, .. }) if location.starts_with(&dir.display().to_string())),
        "{:?}",
        stats.started_from
    );
    assert_eq!(stats.loaded_rows, 0);
    until_rows(&expected, &second).await;
    // A backend reports its statistics when it ends at the latest.
    second.clone().shutdown().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        scans(&pg, &table).await,
        before,
        "the start from a checkpoint scanned the table"
    );

    // The measurement can see a scan: a start without checkpoints makes one.
    let third = args.row_cache(&table).build().await.expect("cache");
    until_equal(&pg, &table, &third).await;
    third.shutdown().await;
    let after = wait_for(
        Duration::from_secs(10),
        "the load's scan in the statistics",
        || async {
            let now = scans(&pg, &table).await;
            (now != before).then_some(now)
        },
    )
    .await;
    assert!(
        after.0 > before.0 && after.1 >= before.1 + 500,
        "{before:?} -> {after:?}"
    );
    // Older checkpoints were pruned: the newest two are kept.
    assert_eq!(checkpoints_in(&dir).len(), 2);
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_reshaped_and_expired_checkpoints_fall_back_to_postgres() {
    let pg = pg().await;
    let name = unique("ckrefuse");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    // A topic with time retention (cleanup.policy=delete), created before the bridge
    // starts (it keeps existing topics as they are): retention, unlike compaction,
    // moves the low watermark, and DeleteRecords can do the same at once.
    let args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    let topic = args.topic(&format!("public.{table}"));
    let admin = create_topic(&args.kafka, &topic, 1, &[("cleanup.policy", "delete")]).await;
    let (mut bridge, args) = start_bridge_with(args).await;
    let good = checkpoint_dir(&format!("{name}_good"));
    let cache = args
        .row_cache(&table)
        .checkpoint_dir(&good)
        .build()
        .await
        .expect("cache");
    churn(&pg, &table, 1).await;
    until_equal(&pg, &table, &cache).await;
    cache.shutdown().await;
    let file = checkpoints_in(&good).pop().expect("a checkpoint");

    // Refused, with the reason, and the start from PostgreSQL is exact.
    async fn falls_back(
        pg: &Client,
        table: &str,
        args: &BridgeArgs,
        dir: &Path,
        reason: &str,
        round: i32,
    ) {
        let cache = args
            .row_cache(table)
            .checkpoint_dir(dir)
            // Retention deletes records far older than the safety window; these
            // were deleted seconds after they were written.
            .safety_window(Duration::from_secs(1))
            .build()
            .await
            .expect("cache");
        let stats = cache.stats();
        match &stats.started_from {
            Some(StartedFrom::Postgres { refused: Some(why) }) => {
                assert!(
                    why.contains(reason),
                    "refused for {why:?}, expected {reason:?}"
                )
            }
            other => panic!("expected a refusal ({reason}), got {other:?}"),
        }
        assert_eq!(stats.checkpoint_refusals, 1);
        assert!(stats.loaded_rows > 0);
        churn(pg, table, round).await;
        until_equal(pg, table, &cache).await;
        cache.shutdown().await;
    }

    // Damaged on disk: one bit flipped in the middle.
    let damaged = checkpoint_dir(&format!("{name}_damaged"));
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(damaged.join(file.file_name().unwrap()), &bytes).unwrap();
    falls_back(&pg, &table, &args, &damaged, "checksum", 2).await;

    // Another table shape: a column added after the checkpoint was taken.
    let reshaped = checkpoint_dir(&format!("{name}_reshaped"));
    std::fs::copy(&file, reshaped.join(file.file_name().unwrap())).unwrap();
    pg.batch_execute(&format!("ALTER TABLE {table} ADD COLUMN w int"))
        .await
        .unwrap();
    falls_back(&pg, &table, &args, &reshaped, "another table shape", 3).await;

    // Retention removed changes the checkpoint lacks: the records up to the end are
    // deleted (as retention deletes a segment), so the low watermark passes the
    // checkpoint's offset.
    // (A checkpoint of the new shape: the one the last cache wrote when it stopped.)
    let file = checkpoints_in(&reshaped).pop().expect("a checkpoint");
    let expired = checkpoint_dir(&format!("{name}_expired"));
    std::fs::copy(&file, expired.join(file.file_name().unwrap())).unwrap();
    churn(&pg, &table, 4).await;
    // Every change is on the topic before the records are deleted up to its end.
    let end = current_lsn(&pg).await;
    wait_for(
        Duration::from_secs(30),
        "the bridge to confirm the changes",
        || async { confirmed_flush(&pg, &args.slot).await.filter(|&c| c >= end) },
    )
    .await;
    let high = {
        let (k, t) = (args.kafka.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            consumer(&k)
                .fetch_watermarks(&t, 0, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .await
        .unwrap()
    };
    let mut upto = TopicPartitionList::new();
    upto.add_partition_offset(&topic, 0, Offset::Offset(high))
        .unwrap();
    let deleted = admin
        .delete_records(&upto, &AdminOptions::new())
        .await
        .unwrap();
    assert!(
        deleted.elements().iter().all(|e| e.error().is_ok()),
        "{deleted:?}"
    );
    let low = {
        let (k, t) = (args.kafka.clone(), topic.clone());
        tokio::task::spawn_blocking(move || {
            consumer(&k)
                .fetch_watermarks(&t, 0, Duration::from_secs(10))
                .unwrap()
                .0
        })
        .await
        .unwrap()
    };
    assert_eq!(low, high, "the records were not deleted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    falls_back(&pg, &table, &args, &expired, "retention removed", 5).await;

    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_starts_from_a_peer_over_http() {
    let pg = pg().await;
    let name = unique("ckhttp");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let (mut bridge, args) = start_bridge_unscanned(&name, &table).await;
    let topic = args.topic(&format!("public.{table}"));
    let peer = args
        .row_cache(&table)
        .checkpoint_dir(checkpoint_dir(&name))
        .checkpoint_interval(Duration::from_secs(1))
        .build()
        .await
        .expect("cache");
    let server = peer
        .serve_checkpoints("127.0.0.1:0".parse().unwrap())
        .await
        .expect("server");
    churn(&pg, &table, 1).await;
    until_equal(&pg, &table, &peer).await;
    wait_for(
        Duration::from_secs(30),
        "the peer's first checkpoint",
        || async { (peer.stats().checkpoints_written > 0).then_some(()) },
    )
    .await;
    churn(&pg, &table, 2).await;
    let expected = table_rows(&pg, &table).await;
    let before = scans(&pg, &table).await;
    let fresh = args
        .row_cache(&table)
        .checkpoint_from(server.url(&topic))
        .build()
        .await
        .expect("cache");
    assert!(
        matches!(&fresh.stats().started_from, Some(StartedFrom::Checkpoint { location, .. }) if location.starts_with("http://127.0.0.1:")),
        "{:?}",
        fresh.stats().started_from
    );
    until_rows(&expected, &fresh).await;
    fresh.clone().shutdown().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        scans(&pg, &table).await.1,
        before.1,
        "the new instance read the table"
    );

    // A URL with no checkpoint behind it: refused as missing, loaded from PostgreSQL.
    let other = args
        .row_cache(&table)
        .checkpoint_from(server.url("no.such.topic"))
        .build()
        .await
        .expect("cache");
    assert!(
        matches!(&other.stats().started_from, Some(StartedFrom::Postgres { refused: Some(why) }) if why.contains("no checkpoint")),
        "{:?}",
        other.stats().started_from
    );
    until_equal(&pg, &table, &other).await;
    drop(server);
    peer.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_starts_from_its_checkpoint_and_says_so() {
    let pg = pg().await;
    let name = unique("ckdump");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let (mut bridge, args) = start_bridge(&name, &[&format!("public.{table}")]).await;
    let dir = checkpoint_dir(&name);
    let dump = |expect_from: &'static str| {
        let out = std::process::Command::new(dump_bin())
            .args(["--postgres", &pg_url(), "--kafka", &args.kafka])
            .args([
                "--table",
                &format!("public.{table}"),
                "--topic-prefix",
                &args.prefix,
            ])
            .arg("--checkpoint")
            .arg(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains(expect_from),
            "expected {expect_from:?} in {stderr}"
        );
        assert!(stderr.contains("checkpoint written"), "{stderr}");
        String::from_utf8(out.stdout).unwrap().lines().count()
    };
    assert_eq!(dump("rows came from PostgreSQL"), 500);
    churn(&pg, &table, 1).await;
    let expected = table_rows(&pg, &table).await.len();
    // The bridge has the changes on the topic before the second dump reads it.
    let end = current_lsn(&pg).await;
    wait_for(
        Duration::from_secs(30),
        "the bridge to confirm the changes",
        || async { confirmed_flush(&pg, &args.slot).await.filter(|&c| c >= end) },
    )
    .await;
    assert_eq!(dump("rows came from checkpoint"), expected);
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

/// A value type that keeps only the key column.
#[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
struct IdOnly {
    id: i64,
}

/// A later version of it that also reads `v`, with a default: given rows without
/// `v` it would load every row with `v` empty, silently.
#[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
struct WithV {
    id: i64,
    #[serde(default)]
    v: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_value_type_that_reads_a_field_the_checkpoint_lacks_loads_from_postgres() {
    let pg = pg().await;
    let name = unique("ckfields");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let (mut bridge, args) = start_bridge(&name, &[&format!("public.{table}")]).await;
    let dir = checkpoint_dir(&name);
    let typed = |prefix: &str| {
        Cache::<i64, IdOnly>::builder()
            .postgres(pg_url())
            .kafka(args.kafka.clone())
            .table(format!("public.{table}"))
            .topic_prefix(prefix.to_owned())
    };
    let old = typed(&args.prefix)
        .checkpoint_dir(&dir)
        .build()
        .await
        .expect("cache");
    old.clone().shutdown().await;
    assert_eq!(checkpoints_in(&dir).len(), 1);

    // The same value type continues from it.
    let same = typed(&args.prefix)
        .checkpoint_dir(&dir)
        .build()
        .await
        .expect("cache");
    assert!(
        matches!(
            same.stats().started_from,
            Some(StartedFrom::Checkpoint { .. })
        ),
        "{:?}",
        same.stats().started_from
    );
    same.shutdown().await;

    // The new one reads `v`, which the checkpoint's rows do not hold: refused, and
    // every row has its `v` from PostgreSQL.
    let new = Cache::<i64, WithV>::builder()
        .postgres(pg_url())
        .kafka(args.kafka.clone())
        .table(format!("public.{table}"))
        .topic_prefix(args.prefix.clone())
        .checkpoint_dir(&dir)
        .build()
        .await
        .expect("cache");
    match &new.stats().started_from {
        Some(StartedFrom::Postgres { refused: Some(why) }) => {
            assert!(why.contains("also reads v"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(new.len(), 500);
    assert!(new.iter().all(|(id, row)| row.v == Some(format!("v{id}"))));
    new.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_older_than_the_topics_compaction_lag_loads_from_postgres() {
    let pg = pg().await;
    let name = unique("cklag");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    // A compacted topic whose records may be compacted a second after they are written:
    // a checkpoint cannot know whether the records after it are all still there.
    let args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    let topic = args.topic(&format!("public.{table}"));
    create_topic(
        &args.kafka,
        &topic,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("min.compaction.lag.ms", "1000"),
        ],
    )
    .await;
    let (mut bridge, args) = start_bridge_with(args).await;
    let dir = checkpoint_dir(&name);
    let first = args
        .row_cache(&table)
        .checkpoint_dir(&dir)
        .build()
        .await
        .expect("cache");
    churn(&pg, &table, 1).await;
    until_equal(&pg, &table, &first).await;
    first.shutdown().await;

    // Nothing written since: no record after the checkpoint can be missing.
    let quiet = args
        .row_cache(&table)
        .checkpoint_dir(&dir)
        .build()
        .await
        .expect("cache");
    assert!(
        matches!(
            quiet.stats().started_from,
            Some(StartedFrom::Checkpoint { .. })
        ),
        "{:?}",
        quiet.stats().started_from
    );
    quiet.shutdown().await;

    // Changes since, older than the lag by the time the next cache starts.
    churn(&pg, &table, 2).await;
    let expected = table_rows(&pg, &table).await;
    let end = current_lsn(&pg).await;
    wait_for(
        Duration::from_secs(30),
        "the bridge to confirm the changes",
        || async { confirmed_flush(&pg, &args.slot).await.filter(|&c| c >= end) },
    )
    .await;
    let later = args
        .row_cache(&table)
        .checkpoint_dir(&dir)
        .build()
        .await
        .expect("cache");
    match &later.stats().started_from {
        Some(StartedFrom::Postgres { refused: Some(why) }) => {
            assert!(why.contains("min.compaction.lag.ms"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    until_rows(&expected, &later).await;
    later.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

/// A cache whose value format differs from the one a checkpoint's rows were encoded in
/// (the operator switched the bridge to Debezium's format) must not restore it: a
/// `date` is text in tidemark's format and a day count in Debezium's, and the restored
/// rows would keep the old encoding while new records bring the new one. It loads
/// from PostgreSQL, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_of_another_value_format_loads_from_postgres() {
    use tidemark_core::wire::ValueFormat;
    let pg = pg().await;
    let name = unique("ckformat");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, d date NOT NULL);
         INSERT INTO {table} SELECT g, date '2024-01-01' + g::int FROM generate_series(1, 20) g"
    ))
    .await
    .unwrap();
    let (mut bridge, args) = start_bridge_unscanned(&name, &table).await;
    let dir = checkpoint_dir(&name);
    let cache = |format: ValueFormat| {
        Cache::<Row, Row>::builder()
            .postgres(pg_url())
            .kafka(args.kafka.clone())
            .table(format!("public.{table}"))
            .topic_prefix(args.prefix.clone())
            .value_format(format)
            .checkpoint_dir(&dir)
    };
    let old = cache(ValueFormat::Tidemark).build().await.expect("cache");
    old.clone().shutdown().await;
    assert_eq!(checkpoints_in(&dir).len(), 1);

    let debezium = ValueFormat::Debezium(Default::default());
    let new = cache(debezium).build().await.expect("cache");
    match &new.stats().started_from {
        Some(StartedFrom::Postgres { refused: Some(why) }) => {
            assert!(why.contains("value format tidemark"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let days = |id: i64| serde_json::json!(19723 + id);
    assert_eq!(new.len(), 20);
    assert!(
        new.iter().all(|(key, row)| {
            let id = key.get_i64("id").expect("id");
            row.get("d") == Some(days(id))
        }),
        "dates are not Debezium's day counts: {:?}",
        new.iter().take(3).collect::<Vec<_>>()
    );
    new.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}
