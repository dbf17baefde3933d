//! Records Kafka will not take. A change larger than its topic's `max.message.bytes`
//! stops the bridge with the table, key, LSN, size and fix, or, with
//! `--oversized-records skip`, is left out, logged and counted while later changes
//! flow. Either way nothing is retried forever in silence.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// Starts a bridge on a new table whose topic takes record batches of at most 20,000
/// bytes (so the producer takes records of up to 19,488), writes a small row, a row of
/// 50,000 bytes and another small row.
async fn write_an_oversized_row(name: &str, extra: &[&str]) -> (Bridge, BridgeArgs, String) {
    let pg = pg().await;
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text NOT NULL)"
    ))
    .await
    .unwrap();
    let mut args = BridgeArgs::new(name, &[&format!("public.{table}")]);
    args.extra = ["--topic-config", "max.message.bytes=20000"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
    let (bridge, args) = start_bridge_with(args).await;
    pg.batch_execute(&format!(
        "INSERT INTO {table} VALUES (1, 'small');
         INSERT INTO {table} VALUES (2, repeat('x', 50000));
         INSERT INTO {table} VALUES (3, 'small again');"
    ))
    .await
    .unwrap();
    (bridge, args, table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_topics_limit_stops_the_bridge_with_the_fix() {
    let name = unique("oversize");
    let (mut bridge, args, table) = write_an_oversized_row(&name, &[]).await;
    let status = bridge.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "a refused record stops the bridge");
    let log = bridge.log_text();
    for part in [
        format!("table public.{table}"),
        "{\"id\":2}".to_string(),
        "LSN".to_string(),
        "over the 19488 bytes".to_string(),
        "--oversized-records skip".to_string(),
    ] {
        assert!(log.contains(&part), "the message names {part}:\n{log}");
    }
    // The change before it is in the topic; nothing after it is.
    let recs = read_topic(&args.kafka, &args.topic(&format!("public.{table}")));
    let keys: Vec<_> = recs.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, vec![json!({"id": 1})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_skip_a_record_over_the_limit_is_counted_and_later_changes_flow() {
    let name = unique("oversize_skip");
    let http = "127.0.0.1:19183";
    let (mut bridge, args, table) =
        write_an_oversized_row(&name, &["--oversized-records", "skip", "--http", http]).await;
    let topic = args.topic(&format!("public.{table}"));
    let recs = wait_for_records(&args.kafka, &topic, 2, Duration::from_secs(60)).await;
    let keys: Vec<_> = recs.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, vec![json!({"id": 1}), json!({"id": 3})]);
    let label = format!("table=\"public.{table}\"");
    wait_for(
        Duration::from_secs(30),
        "the skipped record counted",
        || async {
            let (_, text) = http_get(http, "/metrics").await?;
            (metric_value(&text, "tidemark_skipped_records_total", &[&label]) == Some(1.0))
                .then_some(())
        },
    )
    .await;
    assert!(
        bridge.child.try_wait().unwrap().is_none(),
        "the bridge runs on"
    );
    let log = bridge.log_text();
    // Logged with the key (a field, so its quotes are escaped) and the size.
    assert!(
        log.contains("record skipped") && log.contains(r#"\"id\":2"#) && log.contains("size"),
        "{log}"
    );
    bridge.sigterm(Duration::from_secs(30));
}

/// A record the broker refuses (librdkafka's own limit raised above the topic's, so
/// the producer sends what the topic will not take) stops the bridge too: the
/// producer's gapless guarantee turns the refusal into a fatal error, and the refusal,
/// not that fatal error, decides that the session must not be retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_broker_refuses_stops_the_bridge() {
    let pg = pg().await;
    let name = unique("brokerrefuses");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text NOT NULL)"
    ))
    .await
    .unwrap();
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.extra = [
        "--topic-config",
        "max.message.bytes=20000",
        "--kafka-property",
        "message.max.bytes=1000000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (mut bridge, _) = start_bridge_with(args).await;
    // About 100 kB of hex digits: more than 20,000 bytes after compression.
    pg.batch_execute(&format!(
        "INSERT INTO {table} VALUES (1, 'small');
         INSERT INTO {table} SELECT 2, string_agg(md5(g::text || random()::text), '') FROM generate_series(1, 3200) g;"
    ))
    .await
    .unwrap();
    let status = bridge.wait_exit(Duration::from_secs(60));
    let log = bridge.log_text();
    assert!(
        !status.success(),
        "a refused record stops the bridge:\n{log}"
    );
    assert!(log.contains("Kafka refused a record for good"), "{log}");
    assert!(!log.contains("session failed; retrying"), "{log}");
}
