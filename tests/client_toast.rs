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
    let recs = wait_for_records(
        &args.kafka,
        &args.topic(&format!("public.{table}")),
        7,
        Duration::from_secs(30),
    )
    .await;
    let left_out = recs
        .iter()
        .filter_map(|r| r.value.as_ref())
        .filter(|v| v["unchanged_toast"] == Value::from(vec!["big"]))
        .count();
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
