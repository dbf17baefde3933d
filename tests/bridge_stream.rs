//! Streaming behaviour: idle slots do not pin WAL, unchanged TOAST is named and never
//! faked, schema changes show up, and one huge transaction streams in bounded memory.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_published_table_does_not_pin_wal() {
    let pg = pg().await;
    let name = unique("idle");
    let (idle, busy) = (format!("{name}_idle"), format!("{name}_busy"));
    pg.batch_execute(&format!(
        "CREATE TABLE {idle} (id int PRIMARY KEY); CREATE TABLE {busy} (id serial PRIMARY KEY, pad text)"
    ))
    .await
    .unwrap();
    let (mut bridge, args) = start_bridge(&name, &[&format!("public.{idle}")]).await;
    let start = wait_for(Duration::from_secs(30), "a confirmed LSN", || async {
        confirmed_flush(&pg, &args.slot).await
    })
    .await;
    // Only the unpublished table is written; the slot must follow the WAL anyway.
    let mut last = start;
    for round in 0..3 {
        for _ in 0..20 {
            pg.batch_execute(&format!(
                "INSERT INTO {busy} (pad) SELECT repeat('z', 500) FROM generate_series(1, 200)"
            ))
            .await
            .unwrap();
        }
        let written = current_lsn(&pg).await;
        let confirmed = wait_for(
            Duration::from_secs(60),
            "confirmed_flush_lsn to pass the written WAL",
            || async {
                confirmed_flush(&pg, &args.slot)
                    .await
                    .filter(|&c| c >= written)
            },
        )
        .await;
        assert!(
            confirmed > last,
            "round {round}: confirmed_flush_lsn did not advance"
        );
        last = confirmed;
    }
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_is_named_never_faked() {
    let pg = pg().await;
    let name = unique("toast");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, counter int, big text);
         ALTER TABLE {table} ALTER COLUMN big SET STORAGE EXTERNAL;"
    ))
    .await
    .unwrap();
    let (mut bridge, args) = start_bridge(&name, &[&format!("public.{table}")]).await;
    // 200 kB of text, stored out of line (EXTERNAL: no compression), so it is TOASTed.
    let big: String = (0..200_000)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    pg.execute(&format!("INSERT INTO {table} VALUES (1, 0, $1)"), &[&big])
        .await
        .unwrap();
    pg.batch_execute(&format!("UPDATE {table} SET counter = 1 WHERE id = 1"))
        .await
        .unwrap();
    pg.batch_execute(&format!(
        "UPDATE {table} SET big = 'small now', counter = 2 WHERE id = 1"
    ))
    .await
    .unwrap();

    let recs = wait_for_records(
        &kafka(),
        &args.topic(&format!("public.{table}")),
        3,
        Duration::from_secs(60),
    )
    .await;
    let values: Vec<&serde_json::Value> = recs.iter().map(|r| r.value.as_ref().unwrap()).collect();
    assert_eq!(
        values[0]["after"]["big"].as_str().map(str::len),
        Some(200_000)
    );
    let update = values[1];
    assert_eq!(
        update["after"],
        json!({"id": 1, "counter": 1}),
        "the unchanged TOAST column is left out"
    );
    assert_eq!(update["unchanged_toast"], json!(["big"]));
    assert_eq!(
        values[2]["after"],
        json!({"id": 1, "counter": 2, "big": "small now"})
    );
    assert!(values[2].get("unchanged_toast").is_none());
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_columns_appear_in_later_changes() {
    let pg = pg().await;
    let name = unique("alter");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, a text)"
    ))
    .await
    .unwrap();
    let (mut bridge, args) = start_bridge(&name, &[&format!("public.{table}")]).await;
    pg.batch_execute(&format!(
        "INSERT INTO {table} VALUES (1, 'before');
         ALTER TABLE {table} ADD COLUMN score numeric DEFAULT 0, ADD COLUMN tags text[];
         INSERT INTO {table} VALUES (2, 'after', 9.5, '{{x}}');
         UPDATE {table} SET a = 'touched' WHERE id = 1;"
    ))
    .await
    .unwrap();
    let recs = wait_for_records(
        &kafka(),
        &args.topic(&format!("public.{table}")),
        3,
        Duration::from_secs(60),
    )
    .await;
    let afters: Vec<&serde_json::Value> = recs
        .iter()
        .map(|r| &r.value.as_ref().unwrap()["after"])
        .collect();
    assert_eq!(afters[0], &json!({"id": 1, "a": "before"}));
    assert_eq!(
        afters[1],
        &json!({"id": 2, "a": "after", "score": "9.5", "tags": ["x"]})
    );
    assert_eq!(
        afters[2],
        &json!({"id": 1, "a": "touched", "score": "0", "tags": null})
    );
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_500k_changes_streams_in_bounded_memory() {
    let pg = pg().await;
    let name = unique("huge");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int8 PRIMARY KEY, v int8, pad text)"
    ))
    .await
    .unwrap();
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.partitions = 3;
    let (mut bridge, args) = start_bridge_with(args).await;
    let idle_rss = bridge.peak_rss_kib().unwrap_or(0);
    pg.batch_execute(&format!(
        "INSERT INTO {table} SELECT g, g, repeat('p', 100) FROM generate_series(1, 500000) g"
    ))
    .await
    .unwrap();
    let topic = args.topic(&format!("public.{table}"));
    let slot = args.slot.clone();
    let end = current_lsn(&pg).await;
    wait_for(
        Duration::from_secs(600),
        "the slot to confirm the 500k-row transaction",
        || async { confirmed_flush(&pg, &slot).await.filter(|&c| c >= end) },
    )
    .await;
    let peak = bridge.peak_rss_kib().expect("peak RSS from /proc");
    let recs = tokio::task::spawn_blocking(move || read_topic(&kafka(), &topic))
        .await
        .unwrap();
    let ids: std::collections::HashSet<i64> = recs
        .iter()
        .filter_map(|r| r.value.as_ref()?["after"]["id"].as_i64())
        .collect();
    assert_eq!(
        ids.len(),
        500_000,
        "every row of the transaction is in Kafka"
    );
    // The JSON alone is well over 100 MiB; a bridge that buffered the transaction
    // would need more than that. The bound leaves room for librdkafka's queue (64 MiB).
    let json_mib = recs
        .iter()
        .map(|r| r.value.as_ref().map_or(0, |v| v.to_string().len()))
        .sum::<usize>()
        >> 20;
    eprintln!(
        "500k-row transaction: {json_mib} MiB of JSON; bridge peak RSS {} MiB (idle {} MiB)",
        peak >> 10,
        idle_rss >> 10
    );
    assert!(
        peak < 200 * 1024,
        "peak RSS {} MiB is not bounded",
        peak >> 10
    );
    assert!(bridge.sigterm(Duration::from_secs(60)).success());
}
