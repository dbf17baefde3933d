//! The cache under bad input and failures: garbage records, deleted history, a broker
//! outage, PostgreSQL unreachable, and dropping a cache.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use tidemark_client::Row;
use tidemark_client::{Cache, Error};
use tokio_postgres::Client;

use crate::support::*;

type RowCache = Cache<Row, Row>;

fn builder(args: &BridgeArgs, table: &str) -> tidemark_client::Builder<Row, Row> {
    Cache::builder()
        .postgres(pg_url())
        .kafka(args.kafka.clone())
        .table(format!("public.{table}"))
        .topic_prefix(args.prefix.clone())
}

/// Waits until the cache holds exactly the table.
async fn converges(pg: &Client, table: &str, cache: &RowCache) {
    let expected = table_rows(pg, table).await;
    wait_for_rows(cache, &expected, Duration::from_secs(90)).await;
}

async fn setup(base: &str, broker: Option<&PrivateBroker>) -> (Client, String, Bridge, BridgeArgs) {
    let pg = pg().await;
    let name = unique(base);
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.partitions = 2;
    if let Some(b) = broker {
        args.kafka = b.address();
    }
    let (bridge, args) = start_bridge_with(args).await;
    (pg, table, bridge, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_counted_and_skipped() {
    let (pg, table, mut bridge, args) = setup("badrec", None).await;
    let cache = builder(&args, &table).build().await.expect("cache");
    let topic = args.topic(&format!("public.{table}"));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka)
        .create()
        .unwrap();
    let other_table = serde_json::json!({
        "before": null, "after": {"id": 1, "v": "hijack"}, "op": "c", "ts_ms": 0,
        "source": {"connector": "postgresql", "name": "x", "db": "test", "schema": "public", "table": "someone_else",
                   "txId": 1, "lsn": u64::MAX - 1, "commit_lsn": u64::MAX - 1, "ts_ms": 0, "snapshot": "false"}
    })
    .to_string();
    for (key, value) in [
        (r#"{"id":1}"#, "this is not JSON".to_string()),
        (r#"{"id":2}"#, r#"{"op":"c","after":{"id":2}}"#.to_string()),
        (r#"{"id":1}"#, other_table),
    ] {
        producer
            .send(
                FutureRecord::to(&topic).key(key).payload(&value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    pg.batch_execute(&format!(
        "UPDATE {table} SET v = 'after the garbage' WHERE id IN (1, 2, 3)"
    ))
    .await
    .unwrap();
    converges(&pg, &table, &cache).await;
    wait_for(
        Duration::from_secs(30),
        "three bad records counted",
        || async { (cache.stats().bad_records == 3).then_some(()) },
    )
    .await;
    assert_eq!(
        cache.get(&key(1)).unwrap().get_str("v"),
        Some("after the garbage")
    );
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

fn key(id: i64) -> Row {
    Row::from_iter([("id".to_owned(), Value::from(id))])
}

/// History disappears from under a cache: the topic (`cleanup.policy=delete`, as a
/// topic another tool created) loses its old records the way retention removes them,
/// from the start of each partition, here with the DeleteRecords admin call (the
/// broker's retention check runs every 5 minutes by default). A new cache must not
/// need the lost history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_converges_after_old_records_were_deleted() {
    let pg = pg().await;
    let name = unique("history");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.partitions = 2;
    let topic = args.topic(&format!("public.{table}"));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka)
        .create()
        .unwrap();
    let new_topic =
        NewTopic::new(&topic, 2, TopicReplication::Fixed(1)).set("cleanup.policy", "delete");
    admin
        .create_topics(&[new_topic], &AdminOptions::new())
        .await
        .unwrap();
    let (mut bridge, args) = start_bridge_with(args).await;

    for round in 0..5 {
        pg.batch_execute(&format!("UPDATE {table} SET v = 'round {round} ' || id"))
            .await
            .unwrap();
    }
    wait_for_records(&args.kafka, &topic, 2_500, Duration::from_secs(60)).await;
    let c = consumer(&args.kafka);
    let mut old = TopicPartitionList::new();
    for p in 0..2 {
        let (_, high) = c
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .unwrap();
        old.add_partition_offset(&topic, p, Offset::Offset(high))
            .unwrap();
    }
    pg.batch_execute(&format!("UPDATE {table} SET v = 'fresh ' || id"))
        .await
        .unwrap();
    wait_for_records(&args.kafka, &topic, 3_000, Duration::from_secs(60)).await;
    let deleted = admin
        .delete_records(&old, &AdminOptions::new())
        .await
        .expect("DeleteRecords");
    for e in deleted.elements() {
        assert!(e.error().is_ok(), "DeleteRecords failed: {:?}", e.error());
    }
    for p in 0..2 {
        let (low, high) = c
            .fetch_watermarks(&topic, p, Duration::from_secs(10))
            .unwrap();
        assert!(
            low > 0 && low < high,
            "partition {p}: the deletion left offsets {low}..{high}"
        );
    }
    // Changes after the deletion, then a new cache that must not need the lost history.
    pg.batch_execute(&format!(
        "UPDATE {table} SET v = 'latest' WHERE id <= 50; DELETE FROM {table} WHERE id > 450"
    ))
    .await
    .unwrap();
    // The replay starts after the deleted records (a short window, and time for it to
    // pass): records the seek time needs that are gone make a warm start fail instead
    // (`client_topic_history`).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cache = builder(&args, &table)
        .safety_window(Duration::from_secs(1))
        .build()
        .await
        .expect("cache after deleted history");
    converges(&pg, &table, &cache).await;
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_resumes_after_a_broker_outage() {
    let mut broker = PrivateBroker::start(19095).await;
    let (pg, table, mut bridge, args) = setup("cacheoutage", Some(&broker)).await;
    let cache = builder(&args, &table).build().await.expect("cache");
    converges(&pg, &table, &cache).await;
    broker.stop();
    pg.batch_execute(&format!(
        "UPDATE {table} SET v = 'during' WHERE id <= 100; DELETE FROM {table} WHERE id > 490"
    ))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    broker.resume().await;
    pg.batch_execute(&format!(
        "UPDATE {table} SET v = 'after' WHERE id BETWEEN 101 AND 120"
    ))
    .await
    .unwrap();
    converges(&pg, &table, &cache).await;
    assert_eq!(
        cache.stats().warm_starts,
        1,
        "resumed without warming up again"
    );
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(60)).success());
}

/// A Kafka request that times out during the first warm start is tried again: the
/// broker is down for longer than one metadata request may take (30 s), so the
/// first attempt fails; the cache must start once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_started_while_the_broker_is_down_starts_when_it_returns() {
    let mut broker = PrivateBroker::start(19096).await;
    let (pg, table, mut bridge, args) = setup("cachelate", Some(&broker)).await;
    broker.stop();
    let started = tokio::spawn(builder(&args, &table).build());
    tokio::time::sleep(Duration::from_secs(33)).await;
    assert!(
        !started.is_finished(),
        "the start gave up while the broker was down"
    );
    broker.resume().await;
    let cache = tokio::time::timeout(Duration::from_secs(60), started)
        .await
        .expect("the cache did not start within 60 s of the broker's return")
        .expect("the start task")
        .expect("the cache started");
    converges(&pg, &table, &cache).await;
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(60)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_at_start_is_a_typed_error() {
    let result = Cache::<Row, Row>::builder()
        .postgres("postgres://postgres:pw@127.0.0.1:1/test")
        .kafka(kafka())
        .table("public.whatever")
        .build()
        .await;
    match result {
        Err(e @ Error::PostgresUnreachable { .. }) => {
            let text = e.to_string();
            assert!(text.contains("127.0.0.1:1"), "{text}");
            assert!(!text.contains(":pw@"), "the password leaked: {text}");
        }
        Err(other) => panic!("expected PostgresUnreachable, got {other:?}"),
        Ok(_) => panic!("a cache started without PostgreSQL"),
    }
}

/// Established TCP connections of this process to `port`.
fn connections_to(port: u16) -> usize {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .filter_map(|l| {
                    l.to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    let port_hex = format!("{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 9
                && f[3] == "01"
                && f[2].ends_with(&format!(":{port_hex}"))
                && inodes.contains(f[9])
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_cache_leaks_no_task_or_connection() {
    let (pg, table, mut bridge, args) = setup("dropcache", None).await;
    let broker_port: u16 = args.kafka.rsplit(':').next().unwrap().parse().unwrap();
    // The caches' PostgreSQL sessions carry their own application name, so the server
    // counts exactly them.
    let app = format!("{table}_cache");
    let sessions = || async {
        pg.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let runtime = tokio::runtime::Handle::current();
    let (tasks_before, kafka_before) = (
        runtime.metrics().num_alive_tasks(),
        connections_to(broker_port),
    );
    for round in 0..3 {
        let cache = builder(&args, &table)
            .postgres(format!("{}?application_name={app}", pg_url()))
            .build()
            .await
            .expect("cache");
        converges(&pg, &table, &cache).await;
        assert!(
            sessions().await >= 1,
            "round {round}: the cache holds a PostgreSQL session"
        );
        drop(cache);
    }
    wait_for(
        Duration::from_secs(30),
        "tasks and connections back to where they were",
        || async {
            let now = (
                runtime.metrics().num_alive_tasks(),
                sessions().await,
                connections_to(broker_port),
            );
            (now.0 <= tasks_before && now.1 == 0 && now.2 <= kafka_before).then_some(())
        },
    )
    .await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

/// The process-wide Prometheus recorder for the tests that read exported metrics.
fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("install the metrics recorder")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_exports_its_figures_through_the_metrics_facade() {
    let handle = prometheus();
    let (pg, table, mut bridge, args) = setup("cachemetrics", None).await;
    let cache = builder(&args, &table).build().await.expect("cache");
    pg.batch_execute(&format!("UPDATE {table} SET v = 'moved' WHERE id <= 40"))
        .await
        .unwrap();
    converges(&pg, &table, &cache).await;
    let label = format!("table=\"public.{table}\"");
    let text = wait_for(
        Duration::from_secs(30),
        "the figures to be exported",
        || async {
            let text = handle.render();
            metric_value(&text, "tidemark_client_applied_total", &[&label])
                .filter(|&n| n >= 40.0)
                .map(|_| text)
        },
    )
    .await;
    assert_eq!(
        metric_value(&text, "tidemark_client_rows_loaded_total", &[&label]),
        Some(500.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "tidemark_client_warm_starts_total", &[&label]),
        Some(1.0)
    );
    assert!(
        metric_value(&text, "tidemark_client_warm_start_seconds_count", &[&label])
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    for name in [
        "tidemark_client_skipped_in_snapshot_total",
        "tidemark_client_duplicates_total",
        "tidemark_client_bad_records_total",
    ] {
        assert!(
            metric_value(&text, name, &[&label]).is_some(),
            "{name} missing:\n{text}"
        );
    }
    wait_for(
        Duration::from_secs(30),
        "a lag gauge per partition",
        || async {
            let text = handle.render();
            (0..2)
                .all(|p| {
                    metric_value(
                        &text,
                        "tidemark_client_lag_records",
                        &[&label, &format!("partition=\"{p}\"")],
                    )
                    .is_some()
                })
                .then_some(())
        },
    )
    .await;
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}
