//! Keys come from the schema the WAL was written with: changes written before a
//! primary-key column was renamed, or before the table was dropped and created again,
//! are still keyed, and the stream goes on.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// Writes five updates while the bridge is stopped, then `ddl`, then starts the
/// bridge again and writes `after`; returns the records.
async fn replay_across(ddl: &str, after: &str) -> Vec<Rec> {
    let pg = pg().await;
    let name = unique("keys");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text);
         INSERT INTO {table} SELECT g, 'loaded' FROM generate_series(1, 10) g;"
    ))
    .await
    .unwrap();
    let (mut bridge, args) = start_bridge(&name, &[&format!("public.{table}")]).await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
    pg.batch_execute(&format!(
        "UPDATE {table} SET v = 'before' WHERE id <= 5;
         {}",
        ddl.replace("{table}", &table)
    ))
    .await
    .unwrap();
    let mut bridge = Bridge::start(&args);
    bridge
        .wait_for_log("streaming", Duration::from_secs(60))
        .await;
    pg.batch_execute(&after.replace("{table}", &table))
        .await
        .unwrap();
    let topic = args.topic(&format!("public.{table}"));
    let recs = wait_for(Duration::from_secs(60), "the change after the DDL", || {
        let (kafka, topic) = (args.kafka.clone(), topic.clone());
        async move {
            let recs = tokio::task::spawn_blocking(move || read_topic(&kafka, &topic))
                .await
                .unwrap();
            recs.iter()
                .any(|r| r.value.as_ref().is_some_and(|v| v["after"]["v"] == "after"))
                .then_some(recs)
        }
    })
    .await;
    assert!(
        bridge.child.try_wait().unwrap().is_none(),
        "the bridge stopped:\n{}",
        bridge.log_text()
    );
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
    recs
}

fn keys_with(recs: &[Rec], v: &str) -> Vec<serde_json::Value> {
    recs.iter()
        .filter(|r| r.value.as_ref().is_some_and(|x| x["after"]["v"] == v))
        .map(|r| r.key.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_written_before_a_key_column_rename_keep_their_key() {
    let recs = replay_across(
        "ALTER TABLE {table} RENAME COLUMN id TO key_id;",
        "UPDATE {table} SET v = 'after' WHERE key_id = 1",
    )
    .await;
    let before: Vec<_> = (1..=5).map(|id| json!({ "id": id })).collect();
    assert_eq!(keys_with(&recs, "before"), before);
    assert_eq!(keys_with(&recs, "after"), [json!({ "key_id": 1 })]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_a_table_dropped_and_created_again_keep_their_key() {
    let recs = replay_across(
        "DROP TABLE {table}; CREATE TABLE {table} (code text PRIMARY KEY, v text);",
        "INSERT INTO {table} VALUES ('a', 'after')",
    )
    .await;
    let before: Vec<_> = (1..=5).map(|id| json!({ "id": id })).collect();
    assert_eq!(keys_with(&recs, "before"), before);
    assert_eq!(keys_with(&recs, "after"), [json!({ "code": "a" })]);
}
