//! `COPY` into a table a cache follows. PostgreSQL writes a `COPY` as one WAL record
//! per heap page, so hundreds of rows reach the bridge with one LSN; the bridge numbers
//! them (`source.seq`) and a running cache applies every one, on one partition and on
//! several, with updates of the same rows in between.

use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use tokio_postgres::Client;

use crate::support::*;

/// Loads ids `from..to` into `table` with `COPY ... FROM STDIN`.
async fn copy_rows(pg: &Client, table: &str, from: i64, to: i64, tag: &str) {
    let mut data = String::new();
    for id in from..to {
        data += &format!("{id}\t{tag} {id}\n");
    }
    let sink = pg
        .copy_in::<_, Bytes>(&format!("COPY {table} (id, v) FROM STDIN"))
        .await
        .unwrap();
    futures::pin_mut!(sink);
    sink.send(Bytes::from(data)).await.unwrap();
    let rows = sink.finish().await.unwrap();
    assert_eq!(rows, (to - from) as u64);
}

async fn follows_copy_batches(partitions: u32) {
    let pg = pg().await;
    let name = unique("copy");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.partitions = partitions;
    let (mut bridge, args) = start_bridge_with(args).await;
    let cache = args.row_cache(&table).build().await.expect("cache");

    // Three COPY batches of 20,000 rows, each followed by updates of copied rows, a
    // delete, and (in the last round) a COPY inside a transaction with an update.
    for round in 0..3i64 {
        let from = 1_000 + round * 20_000;
        copy_rows(&pg, &table, from, from + 20_000, &format!("copy {round}")).await;
        pg.batch_execute(&format!(
            "UPDATE {table} SET v = 'updated {round} ' || id WHERE id % 97 = {round};
             DELETE FROM {table} WHERE id % 101 = {round};"
        ))
        .await
        .unwrap();
    }
    pg.batch_execute("BEGIN").await.unwrap();
    copy_rows(&pg, &table, 100_000, 110_000, "in a transaction").await;
    pg.batch_execute(&format!(
        "UPDATE {table} SET v = 'same transaction ' || id WHERE id % 3 = 0 AND id >= 100000;
         COMMIT;"
    ))
    .await
    .unwrap();

    let expected = table_rows(&pg, &table).await;
    assert!(expected.len() > 65_000, "{} rows", expected.len());
    wait_for_rows(&cache, &expected, Duration::from_secs(120)).await;
    let stats = cache.stats();
    assert_eq!(stats.bad_records, 0, "{stats:?}");
    assert_eq!(stats.duplicates, 0, "the bridge did not restart: {stats:?}");
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_cache_follows_copy_batches_on_one_partition() {
    follows_copy_batches(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_cache_follows_copy_batches_on_three_partitions() {
    follows_copy_batches(3).await;
}
