//! A compacted topic, compacted by the broker while the test runs: a cache that
//! warm-starts from it afterwards, replaying through the compacted history (older
//! versions of keys gone, tombstones removed, offsets with gaps), is still exact.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_warm_starts_exactly_from_a_compacted_topic() {
    let pg = pg().await;
    let name = unique("compact");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.partitions = 2;
    let topic = args.topic(&format!("public.{table}"));
    // The bridge's own topic settings (compact), made eager: segments roll after
    // 500 ms, a little dirt makes a log cleanable, and tombstones may go at once.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka)
        .create()
        .unwrap();
    let new_topic = NewTopic::new(&topic, 2, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "500")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("min.compaction.lag.ms", "0")
        .set("delete.retention.ms", "0");
    let created = admin
        .create_topics(&[new_topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
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
