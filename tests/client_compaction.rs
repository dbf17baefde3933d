//! Compacted topics, compacted by the broker while the tests run: a cache that
//! warm-starts from one afterwards, replaying through the compacted history (older
//! versions of keys gone, tombstones removed, offsets with gaps), is still exact; a
//! running cache that reads a tombstone whose delete was compacted away removes the
//! key; and the bridge creates its topics with a minimum compaction lag.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::ClientConfig;
use tidemark_client::Cache;
use tidemark_client::Row;

use crate::support::*;

/// Records readable in `topic` and the offsets its partitions span; fewer records
/// than offsets means the cleaner removed some.
async fn records_and_offsets(brokers: &str, topic: &str) -> (usize, i64) {
    let (b, t) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c = consumer(&b);
        let span: i64 = (0..2)
            .map(|p| {
                let (low, high) = c.fetch_watermarks(&t, p, Duration::from_secs(10)).unwrap();
                high - low
            })
            .sum();
        (read_topic(&b, &t).len(), span)
    })
    .await
    .unwrap()
}

/// Creates `topic` compacted as the bridge creates it, but eager: segments roll after
/// 500 ms, a little dirt makes a log cleanable, nothing is too young to compact, and
/// tombstones stay `delete_retention_ms`.
async fn create_eager_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    delete_retention_ms: &str,
) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "500")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("min.compaction.lag.ms", "0")
        .set("delete.retention.ms", delete_retention_ms);
    let created = admin
        .create_topics(&[new_topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
}

/// The change records of `topic` (tombstones left out) and its tombstones' keys.
fn changes_and_tombstones(brokers: &str, topic: &str) -> (Vec<Rec>, Vec<serde_json::Value>) {
    let recs = read_topic(brokers, topic);
    let tombstones = recs
        .iter()
        .filter(|r| r.value.is_none())
        .map(|r| r.key.clone())
        .collect();
    (
        recs.into_iter().filter(|r| r.value.is_some()).collect(),
        tombstones,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_whose_delete_was_compacted_away_still_deletes() {
    let pg = pg().await;
    let name = unique("tombstone");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    // A node of its own whose cleaner looks every second, with a second listener
    // that the cache reaches through a proxy: pausing the proxy makes the cache lag
    // while the bridge goes on writing.
    let broker = PrivateBroker::start_with(
        19098,
        &[
            ("TIDEMARK_NODE_PROXY_PORT", "19198"),
            ("TIDEMARK_NODE_PROPERTIES", "log.cleaner.backoff.ms=1000"),
        ],
    )
    .await;
    let proxy = Proxy::start(19198, broker.proxied_listener_port()).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.kafka = broker.address();
    let topic = args.topic(&format!("public.{table}"));
    create_eager_topic(&args.kafka, &topic, 1, "86400000").await;
    let (mut bridge, args) = start_bridge_with(args).await;
    let cache = args
        .row_cache(&table)
        .kafka("127.0.0.1:19198")
        .build()
        .await
        .expect("cache");
    proxy.pause(true);
    // Fetches already at the broker are answered before the delete commits.
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.batch_execute(&format!("DELETE FROM {table} WHERE id = 7"))
        .await
        .unwrap();
    // Keep writing so that segments roll, until the cleaner has removed the delete
    // and kept its tombstone.
    let deadline = Instant::now() + Duration::from_secs(100);
    loop {
        pg.batch_execute(&format!("UPDATE {table} SET v = 'tick' WHERE id = 1"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (b, t) = (args.kafka.clone(), topic.clone());
        let (changes, tombstones) =
            tokio::task::spawn_blocking(move || changes_and_tombstones(&b, &t))
                .await
                .unwrap();
        let delete_gone = !changes.iter().any(|r| r.key["id"] == 7);
        if delete_gone && tombstones.contains(&serde_json::json!({"id": 7})) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broker did not compact the delete of id 7 away within 100 s"
        );
    }
    assert!(
        cache_rows(&cache).contains_key(&7),
        "the cache read the delete through a paused proxy"
    );
    proxy.pause(false);
    let expected = table_rows(&pg, &table).await;
    wait_for(
        Duration::from_secs(150),
        "the cache to apply the tombstone as a delete",
        || async { (cache_rows(&cache) == expected).then_some(()) },
    )
    .await;
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_creates_topics_with_a_minimum_compaction_lag() {
    let name = unique("lag");
    let table = format!("{name}_t");
    create_table(&pg().await, &table).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.extra = vec!["--min-compaction-lag-ms".into(), "7200000".into()];
    let (mut bridge, args) = start_bridge_with(args).await;
    let topic = args.topic(&format!("public.{table}"));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka)
        .create()
        .unwrap();
    let configs = admin
        .describe_configs(
            &[rdkafka::admin::ResourceSpecifier::Topic(&topic)],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let config = configs[0].as_ref().expect("topic config");
    let get = |name: &str| config.get(name).and_then(|e| e.value.clone());
    assert_eq!(get("min.compaction.lag.ms").as_deref(), Some("7200000"));
    assert_eq!(get("cleanup.policy").as_deref(), Some("compact"));
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_warm_starts_exactly_from_a_compacted_topic() {
    let pg = pg().await;
    let name = unique("compact");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.partitions = 2;
    let topic = args.topic(&format!("public.{table}"));
    create_eager_topic(&args.kafka, &topic, 2, "0").await;
    let (mut bridge, args) = start_bridge_with(args).await;

    // Every key rewritten several times, some deleted and re-inserted.
    for round in 0..6 {
        pg.batch_execute(&format!(
            "UPDATE {table} SET v = 'round {round} ' || id;
             DELETE FROM {table} WHERE id % 7 = {round};
             INSERT INTO {table} SELECT g, 'back {round} ' || g FROM generate_series(1, 500) g
               WHERE g % 7 = ({round} + 6) % 7 ON CONFLICT (id) DO NOTHING;"
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // The cleaner looks for dirty logs every 15 s (log.cleaner.backoff.ms); a
    // segment rolls only when a record arrives after segment.ms, so keep writing.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (records, offsets) = loop {
        pg.batch_execute(&format!(
            "UPDATE {table} SET v = 'tick ' || id WHERE id <= 10"
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (records, offsets) = records_and_offsets(&args.kafka, &topic).await;
        if records * 2 < offsets as usize {
            break (records, offsets);
        }
        assert!(
            Instant::now() < deadline,
            "the broker did not compact {topic} within 180 s: {records} records over {offsets} offsets"
        );
    };
    eprintln!("compacted: {records} records left over {offsets} offsets");

    // A cache whose replay starts at the beginning of the compacted topic (a safety
    // window longer than the test), and one with the default window.
    pg.batch_execute(&format!(
        "UPDATE {table} SET v = 'after compaction' WHERE id % 3 = 0"
    ))
    .await
    .unwrap();
    let builder = || {
        Cache::<Row, Row>::builder()
            .postgres(pg_url())
            .kafka(args.kafka.clone())
            .table(format!("public.{table}"))
            .topic_prefix(args.prefix.clone())
    };
    let full = builder()
        .safety_window(Duration::from_secs(3600))
        .build()
        .await
        .expect("cache replaying the compacted topic");
    let recent = builder().build().await.expect("cache");
    pg.batch_execute(&format!(
        "UPDATE {table} SET v = 'last' WHERE id % 5 = 0; DELETE FROM {table} WHERE id > 490"
    ))
    .await
    .unwrap();
    let expected = table_rows(&pg, &table).await;
    for (what, cache) in [("replaying everything", &full), ("default window", &recent)] {
        wait_for(
            Duration::from_secs(90),
            &format!("the cache ({what}) to equal the table"),
            || async { (cache_rows(cache) == expected).then_some(()) },
        )
        .await;
    }
    let stats = full.stats();
    assert!(
        stats.skipped_in_snapshot > 0,
        "the full replay skipped nothing its snapshot held, so it did not read the compacted history: {stats:?}"
    );
    full.shutdown().await;
    recent.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}
