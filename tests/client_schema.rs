//! The table's shape during a warm start: a schema change queued behind a reader
//! while a cache starts, and generated columns, which the stream does not carry.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio_postgres::Client;

use crate::support::*;

/// Lock requests on `table` that wait.
async fn waiting_locks(pg: &Client, table: &str) -> i64 {
    pg.query_one(
        &format!(
            "SELECT count(*) FROM pg_locks WHERE relation = '{table}'::regclass AND NOT granted"
        ),
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// A reader holds `table`; `ddl` queues behind it; a cache starts and queues behind
/// the DDL; the reader ends, the DDL commits, and the cache must load the table as
/// the DDL left it.
async fn start_behind_queued_ddl(ddl: &str) {
    let pg = pg().await;
    let name = unique("ddl");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    pg.batch_execute(&format!(
        "ALTER TABLE {table} ADD COLUMN extra int DEFAULT 7"
    ))
    .await
    .unwrap();
    let (mut bridge, args) = start_bridge(&name, &[&format!("public.{table}")]).await;

    let reader = pg_at(&pg_url()).await;
    reader
        .batch_execute(&format!("BEGIN; SELECT count(*) FROM {table}"))
        .await
        .unwrap();
    let ddl_conn = pg_at(&pg_url()).await;
    let ddl_sql = ddl.replace("{table}", &table);
    let ddl_task = tokio::spawn(async move { ddl_conn.batch_execute(&ddl_sql).await });
    wait_for(Duration::from_secs(30), "the DDL to queue", || async {
        (waiting_locks(&pg, &table).await >= 1).then_some(())
    })
    .await;
    let cache = args.row_cache(&table).start().expect("cache settings");
    wait_for(
        Duration::from_secs(30),
        "the cache's load to queue behind the DDL",
        || async { (waiting_locks(&pg, &table).await >= 2).then_some(()) },
    )
    .await;
    reader.batch_execute("COMMIT").await.unwrap();
    ddl_task.await.unwrap().expect("the DDL");
    cache
        .ready()
        .await
        .expect("the cache starts after the DDL commits");
    let stats = cache.stats();
    assert_eq!(stats.loaded_rows, 500, "{stats:?}");
    assert_eq!(cache_rows(&cache), table_rows(&pg, &table).await);

    pg.batch_execute(&format!("UPDATE {table} SET v = 'after' WHERE id % 4 = 0"))
        .await
        .unwrap();
    let expected = table_rows(&pg, &table).await;
    wait_for(Duration::from_secs(60), "the cache to follow", || async {
        (cache_rows(&cache) == expected).then_some(())
    })
    .await;
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_rewrite_queued_during_a_warm_start_is_loaded_after_it_commits() {
    // USING forces a rewrite: a snapshot older than the rewrite sees an empty table.
    start_behind_queued_ddl("ALTER TABLE {table} ALTER COLUMN v TYPE text USING v || ''").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_dropped_during_a_warm_start_does_not_fail_it() {
    start_behind_queued_ddl("ALTER TABLE {table} DROP COLUMN extra").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_columns_are_left_out_of_the_load_as_the_stream_leaves_them_out() {
    let pg = pg().await;
    let name = unique("generated");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    pg.batch_execute(&format!(
        "ALTER TABLE {table} ADD COLUMN g text GENERATED ALWAYS AS (v || '!') STORED"
    ))
    .await
    .unwrap();
    let (mut bridge, args) = start_bridge(&name, &[&format!("public.{table}")]).await;
    let cache = args.row_cache(&table).build().await.expect("cache");
    pg.batch_execute(&format!(
        "UPDATE {table} SET v = 'streamed' WHERE id % 2 = 0"
    ))
    .await
    .unwrap();
    let expected = table_rows(&pg, &table).await;
    wait_for(Duration::from_secs(60), "the cache to follow", || async {
        (cache_rows(&cache) == expected).then_some(())
    })
    .await;
    let shapes: BTreeSet<Vec<String>> = cache
        .entries()
        .iter()
        .map(|(_, row)| row.columns().map(String::from).collect())
        .collect();
    assert_eq!(
        shapes,
        BTreeSet::from([vec!["id".to_owned(), "v".to_owned()]]),
        "loaded and streamed rows must have the same columns"
    );
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

/// The value type of the typed cache below.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
struct Item {
    id: i64,
    v: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_that_stops_fitting_the_value_type_is_removed_not_left_stale() {
    let pg = pg().await;
    let name = unique("unfit");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let (mut bridge, args) = start_bridge(&name, &[&format!("public.{table}")]).await;
    let cache = tidemark_client::Cache::<i64, Item>::builder()
        .postgres(pg_url())
        .kafka(args.kafka.clone())
        .table(format!("public.{table}"))
        .topic_prefix(args.prefix.clone())
        .build()
        .await
        .expect("cache");
    let mut changes = cache.subscribe();
    // `v` becomes a number, which no longer fits `Item::v: String`.
    pg.batch_execute(&format!(
        "ALTER TABLE {table} ALTER COLUMN v TYPE int USING length(v);
         UPDATE {table} SET v = v + 1 WHERE id <= 3;"
    ))
    .await
    .unwrap();
    wait_for(Duration::from_secs(60), "the unfit rows to go", || async {
        (cache.stats().unfit_rows == 3).then_some(())
    })
    .await;
    for id in 1..=3 {
        assert!(cache.get(&id).is_none(), "key {id} kept a stale value");
    }
    assert_eq!(cache.get(&4).map(|i| i.v.clone()).as_deref(), Some("v4"));
    let stats = cache.stats();
    assert!(stats.degraded, "{stats:?}");
    assert_eq!(cache.len(), 497);
    let mut removed = Vec::new();
    while let Ok(change) = changes.try_recv() {
        assert!(change.value.is_none());
        assert_eq!(change.origin, tidemark_client::Origin::Unfit);
        removed.push(change.key);
    }
    removed.sort();
    assert_eq!(removed, [1, 2, 3]);
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}
