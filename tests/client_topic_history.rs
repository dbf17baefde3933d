//! The topic's history changes under the caches: its partition count grows, or
//! retention removes records a warm start needs. A cache warm-starts again, or fails
//! loudly, and never silently diverges.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tidemark_client::Error;

use crate::support::*;

fn admin(brokers: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_increase_makes_running_caches_warm_start_again() {
    let pg = pg().await;
    let name = unique("repartition");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    // librdkafka would otherwise notice the new partitions only after 5 minutes.
    args.extra = vec![
        "--kafka-property".into(),
        "topic.metadata.refresh.interval.ms=1000".into(),
    ];
    let (mut bridge, args) = start_bridge_with(args).await;
    let topic = args.topic(&format!("public.{table}"));
    let cache = args.row_cache(&table).build().await.expect("cache");

    let added = admin(&args.kafka)
        .create_partitions(&[NewPartitions::new(&topic, 3)], &AdminOptions::new())
        .await
        .unwrap();
    assert!(added.iter().all(|r| r.is_ok()), "{added:?}");
    // Writes for 30 s, across the bridge's switch to three partitions.
    for round in 0..15 {
        pg.batch_execute(&format!(
            "UPDATE {table} SET v = 'round {round} ' || id WHERE id % 5 = {} ;
             DELETE FROM {table} WHERE id = {};
             INSERT INTO {table} VALUES ({}, 'new {round}');",
            round % 5,
            round + 1,
            1000 + round
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let recs = {
        let (b, t) = (args.kafka.clone(), topic.clone());
        tokio::task::spawn_blocking(move || read_topic(&b, &t))
            .await
            .unwrap()
    };
    assert!(
        recs.iter().any(|r| r.partition > 0),
        "no record reached the new partitions, so this test proves nothing"
    );
    let expected = table_rows(&pg, &table).await;
    wait_for_rows(&cache, &expected, Duration::from_secs(90)).await;
    assert!(cache.stats().warm_starts >= 2, "{:?}", cache.stats());
    // And a cache that starts now.
    let late = args.row_cache(&table).build().await.expect("late cache");
    assert_eq!(cache_rows(&late), expected);
    late.shutdown().await;
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_retention_cut_short_fails_loudly() {
    let pg = pg().await;
    let name = unique("retention");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    // A topic with retention as well as compaction (Kafka refuses to delete records
    // of a topic that is only compacted). No initial snapshot: the offsets below
    // count changes only.
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.extra = vec!["--snapshot".into(), "never".into()];
    let topic = args.topic(&format!("public.{table}"));
    let created = admin(&args.kafka)
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))
                .set("cleanup.policy", "compact,delete")],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let (mut bridge, args) = start_bridge_with(args).await;
    pg.batch_execute(&format!("UPDATE {table} SET v = 'changed' WHERE id <= 10"))
        .await
        .unwrap();
    // Ten changes, after the slot marker at offset 0.
    wait_for_records(&args.kafka, &topic, 10, Duration::from_secs(60)).await;
    // What retention does to old segments, done at once: the log now starts at 5.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Offset(5))
        .unwrap();
    let deleted = admin(&args.kafka)
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .expect("delete records");
    let (b, t) = (args.kafka.clone(), topic.clone());
    let (low, high) = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::Consumer;
        consumer(&b)
            .fetch_watermarks(&t, 0, Duration::from_secs(10))
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!((low, high), (5, 11), "{deleted:?}");
    // A replay from an hour ago needs the deleted records.
    let started = args
        .row_cache(&table)
        .safety_window(Duration::from_secs(3600))
        .build()
        .await;
    match started {
        Err(e @ Error::RetentionGap { .. }) => {
            assert!(e.to_string().contains("retention"), "{e}");
            assert!(!e.is_transient());
        }
        Err(e) => panic!("the wrong error: {e}"),
        Ok(_) => panic!("the cache started although records its replay needs are gone"),
    }
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_created_anew_makes_running_caches_warm_start_again() {
    let pg = pg().await;
    let name = unique("newslot");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let (mut bridge, args) = start_bridge(&name, &[&format!("public.{table}")]).await;
    let cache = args.row_cache(&table).build().await.expect("cache");
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
    // The slot goes (dropped by an operator, or lost to max_slot_wal_keep_size), and
    // changes made until a new one exists never reach the topic. The row deleted
    // then leaves the running cache only through the sweep after its new warm start.
    pg.batch_execute(&format!(
        "UPDATE {table} SET v = 'before the drop' WHERE id <= 10;
         SELECT pg_drop_replication_slot('{}');
         UPDATE {table} SET v = 'while no slot existed' WHERE id > 490;
         DELETE FROM {table} WHERE id = 300;",
        args.slot
    ))
    .await
    .unwrap();
    let mut bridge = Bridge::start(&args);
    bridge
        .wait_for_log("streaming", Duration::from_secs(60))
        .await;
    assert!(
        bridge.log_text().contains("created replication slot"),
        "{}",
        bridge.log_text()
    );
    pg.batch_execute(&format!("UPDATE {table} SET v = 'after' WHERE id = 250"))
        .await
        .unwrap();
    let expected = table_rows(&pg, &table).await;
    wait_for_rows(&cache, &expected, Duration::from_secs(90)).await;
    assert!(cache.stats().warm_starts >= 2, "{:?}", cache.stats());
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}
