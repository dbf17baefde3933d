//! The small `(id int PRIMARY KEY, v text)` table that the cache tests use, read from
//! PostgreSQL and from a schema-agnostic cache for comparison.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tidemark_client::{Cache, Row};
use tokio_postgres::Client;

/// Creates `table` with 500 rows `(id, v)`.
pub async fn create_table(pg: &Client, table: &str) {
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, 500) g;"
    ))
    .await
    .unwrap();
}

/// The table's rows, `id` → `v`.
pub async fn table_rows(pg: &Client, table: &str) -> BTreeMap<i64, String> {
    pg.query(&format!("SELECT id, v FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i32>(0) as i64, r.get(1)))
        .collect()
}

/// The cache's rows, `id` → `v`.
pub fn cache_rows(cache: &Cache<Row, Row>) -> BTreeMap<i64, String> {
    cache
        .entries()
        .into_iter()
        .map(|(_, row)| {
            (
                row.get_i64("id").unwrap(),
                row.get_str("v").unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A schema-agnostic cache's rows by their `id`, as JSON objects.
pub fn rows_by_id(cache: &Cache<Row, Row>) -> BTreeMap<i64, Map<String, Value>> {
    cache
        .entries()
        .into_iter()
        .map(|(k, v)| (k.get_i64("id").expect("id"), v.to_map()))
        .collect()
}

/// Waits up to `timeout` for `cache` to hold exactly `expected` (the table's rows,
/// read beforehand so that waiting does not scan the table). On timeout it fails
/// naming the rows that differ and the cache's statistics.
pub async fn wait_for_rows(
    cache: &Cache<Row, Row>,
    expected: &BTreeMap<i64, String>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = cache_rows(cache);
        if &got == expected {
            return;
        }
        if Instant::now() >= deadline {
            let missing: Vec<_> = expected.keys().filter(|k| !got.contains_key(k)).collect();
            let extra: Vec<_> = got.keys().filter(|k| !expected.contains_key(k)).collect();
            let differ: Vec<_> = got
                .iter()
                .filter(|(k, v)| expected.get(k).is_some_and(|e| e != *v))
                .collect();
            panic!(
                "after {timeout:?} the cache of {} does not equal the table: {} rows missing {:?}, {} extra {:?}, {} differ {:?}; the cache: {:?}",
                cache.table(),
                missing.len(),
                &missing[..missing.len().min(10)],
                extra.len(),
                &extra[..extra.len().min(10)],
                differ.len(),
                &differ[..differ.len().min(10)],
                cache.stats()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
