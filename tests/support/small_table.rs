//! The small `(id int PRIMARY KEY, v text)` table that the cache tests use, read from
//! PostgreSQL and from a schema-agnostic cache for comparison.

use std::collections::BTreeMap;

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
                row["id"].as_i64().unwrap(),
                row["v"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}
