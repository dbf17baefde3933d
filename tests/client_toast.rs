//! Unchanged TOAST on the client side: an update that leaves a large out-of-line value
//! out of its record still leaves the full value in the cache, taken from the copy
//! the cache kept, whether the row came from the bulk load or from the stream.

use std::time::Duration;

use serde_json::Value;
use tidemark_client::Cache;
use tidemark_client::Row;

use crate::support::*;

/// `(id, counter, big, note)` of every row, from either side.
type Summary = Vec<(i64, i64, String, String)>;

fn summary_of_cache(cache: &Cache<Row, Row>) -> Summary {
    let mut rows: Summary = cache
        .entries()
        .into_iter()
        .map(|(_, r)| {
            let text = |c: &str| r.get_str(c).unwrap_or_default().to_owned();
            (
                r.get_i64("id").unwrap_or_default(),
                r.get_i64("counter").unwrap_or_default(),
                text("big"),
                text("note"),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// How many of the table's first `records` records name `big` as unchanged TOAST.
async fn records_leaving_big_out(args: &BridgeArgs, table: &str, records: usize) -> usize {
    wait_for_records(
        &args.kafka,
        &args.topic(&format!("public.{table}")),
        records,
        Duration::from_secs(30),
    )
    .await
    .iter()
    .filter_map(|r| r.value.as_ref())
    .filter(|v| v["unchanged_toast"] == Value::from(vec!["big"]))
    .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_come_from_the_cached_copy() {
    let pg = pg().await;
    let name = unique("ctoast");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, counter int NOT NULL, big text, note text);
         ALTER TABLE {table} ALTER COLUMN big SET STORAGE EXTERNAL;"
    ))
    .await
    .unwrap();
    // 200 kB per row, stored out of line without compression.
    let big = |seed: u32| -> String {
        (0..200_000u32)
            .map(|i| char::from(b'a' + ((i * 7 + seed) % 26) as u8))
            .collect()
    };
    pg.execute(
        &format!("INSERT INTO {table} VALUES (1, 0, $1, 'loaded in bulk')"),
        &[&big(1)],
    )
    .await
    .unwrap();
    let (mut bridge, args) = start_bridge(&name, &[&format!("public.{table}")]).await;
    let cache: Cache<Row, Row> = args.row_cache(&table).build().await.expect("cache");
    pg.execute(
        &format!("INSERT INTO {table} VALUES (2, 0, $1, 'arrived on the stream')"),
        &[&big(2)],
    )
    .await
    .unwrap();
    for _ in 0..3 {
        pg.batch_execute(&format!("UPDATE {table} SET counter = counter + 1"))
            .await
            .unwrap();
    }
    let expected: Summary = pg
        .query(
            &format!("SELECT id, counter, big, note FROM {table} ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                i64::from(r.get::<_, i32>(0)),
                i64::from(r.get::<_, i32>(1)),
                r.get(2),
                r.get(3),
            )
        })
        .collect();
    assert_eq!(expected.len(), 2);
    wait_for(
        Duration::from_secs(60),
        "the cache to hold both rows after their updates",
        || async { (summary_of_cache(&cache) == expected).then_some(()) },
    )
    .await;
    // The updates really left the value out: the topic names it as unchanged TOAST.
    let left_out = records_leaving_big_out(&args, &table, 7).await;
    assert_eq!(left_out, 6, "every update leaves the large value out");
    let stats = cache.stats();
    assert_eq!(
        stats.toast_rereads, 0,
        "every merge used the cached copy, none re-read the row"
    );
    assert_eq!(stats.bad_records, 0);
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

/// A table whose TOAST table is empty loads without asking PostgreSQL which values
/// are out of line (none can be); a value that goes out of line later arrives in
/// full on the stream, and the updates after it that leave it out still merge from
/// the copy the cache kept then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_moved_out_of_line_after_the_load_merges_from_its_copy() {
    let pg = pg().await;
    let name = unique("ctoastlate");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, counter int NOT NULL, big text, note text);
         ALTER TABLE {table} ALTER COLUMN big SET STORAGE EXTERNAL;
         INSERT INTO {table} VALUES (1, 0, 'short for now', 'loaded in bulk');"
    ))
    .await
    .unwrap();
    let toast_pages: i64 = pg
        .query_one(
            &format!("SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = '{table}'::regclass"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        toast_pages, 0,
        "the TOAST table is empty when the cache loads"
    );
    let (mut bridge, args) = start_bridge(&name, &[&format!("public.{table}")]).await;
    let cache: Cache<Row, Row> = args.row_cache(&table).build().await.expect("cache");
    let big: String = (0..200_000u32)
        .map(|i| char::from(b'a' + ((i * 11) % 26) as u8))
        .collect();
    pg.execute(&format!("UPDATE {table} SET big = $1"), &[&big])
        .await
        .unwrap();
    for _ in 0..2 {
        pg.batch_execute(&format!("UPDATE {table} SET counter = counter + 1"))
            .await
            .unwrap();
    }
    let expected: Summary = vec![(1, 2, big, "loaded in bulk".to_owned())];
    wait_for(
        Duration::from_secs(60),
        "the cache to hold the row after its updates",
        || async { (summary_of_cache(&cache) == expected).then_some(()) },
    )
    .await;
    let left_out = records_leaving_big_out(&args, &table, 3).await;
    assert_eq!(
        left_out, 2,
        "the two updates after the first leave the value out"
    );
    let stats = cache.stats();
    assert_eq!(stats.toast_rereads, 0, "both merges used the cached copy");
    assert_eq!(stats.bad_records, 0);
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}
