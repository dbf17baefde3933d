//! No value PostgreSQL accepts stops the stream, and every value reads the same on
//! both paths into a cache (the bridge's stream and the warm start's `COPY`), whatever
//! the connecting role's own settings say.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tidemark_client::Cache;
use tidemark_core::wire::Row;

use crate::support::*;

/// Waits until the cache holds `ids` and returns its rows.
async fn wait_for_ids(
    cache: &Cache<tidemark_client::Row, tidemark_client::Row>,
    ids: &[i64],
) -> BTreeMap<i64, Row> {
    wait_for(
        Duration::from_secs(60),
        "the cache to hold every row",
        || {
            let rows = rows_by_id(cache);
            let done = ids.iter().all(|id| rows.contains_key(id));
            async move { done.then_some(rows) }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_postgres_accepts_reach_kafka_and_read_alike_on_both_paths() {
    let pg = pg().await;
    ensure_password_role(&pg).await;
    let name = unique("values");
    let table = format!("{name}_t");
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    pg.batch_execute(&format!(
        "DO $$ BEGIN CREATE DOMAIN tidemark_int AS int4 CHECK (VALUE >= 0);
         EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         DO $$ BEGIN CREATE DOMAIN tidemark_small AS tidemark_int CHECK (VALUE < 1000);
         EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         CREATE TABLE {table} (id int8 PRIMARY KEY, big jsonb, deep json, surrogate json,
             boxes box[], i2v int2vector, oidv oidvector, dom tidemark_small,
             doms tidemark_small[], m money, iv interval, f8 float8, f4 float4,
             far timestamptz, tz timestamptz, d date, by bytea);"
    ))
    .await
    .unwrap();
    let insert = |id: i64| {
        format!(
            r#"INSERT INTO {table} VALUES ({id}, '{{"a": 1e400, "b": [1]}}', '{deep}', '"\ud800"',
                 ARRAY['((1,1),(0,0))'::box, '((3,3),(2,2))'], '1 2 3', '26 23', 5, '{{1,2}}',
                 '-1234.56', '1 year 2 months 3 days 04:05:06.5', 0.1::float8 + 0.2, 1.1,
                 '294276-12-31 23:59:59+00', '2026-01-02 03:04:05.678+00', '2026-01-02', '\x0001ff')"#
        )
    };
    // Row 1 reaches the cache through the warm start's COPY, row 2 through the stream.
    pg.batch_execute(&insert(1)).await.unwrap();

    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.postgres = as_password_role(&args.postgres);
    let (mut bridge, args) = start_bridge_with(args).await;
    let cache = args
        .row_cache(&table)
        .postgres(as_password_role(&pg_url()))
        .build()
        .await
        .expect("cache");
    pg.batch_execute(&insert(2)).await.unwrap();
    // A plain change after the odd values: the stream goes on.
    pg.batch_execute(&format!("INSERT INTO {table} (id) VALUES (3)"))
        .await
        .unwrap();

    let big_text: String = pg
        .query_one(&format!("SELECT big::text FROM {table} WHERE id = 1"), &[])
        .await
        .unwrap()
        .get(0);
    let expected = json!({
        "big": big_text,
        "deep": deep,
        "surrogate": r#""\ud800""#,
        "boxes": ["(1,1),(0,0)", "(3,3),(2,2)"],
        "i2v": [1, 2, 3],
        "oidv": [26, 23],
        "dom": 5,
        "doms": [1, 2],
        "m": "-1234.56",
        "iv": "P1Y2M3DT4H5M6.5S",
        "f8": 0.30000000000000004,
        "f4": 1.1,
        "far": "294276-12-31 23:59:59+00",
        "tz": "2026-01-02T03:04:05.678Z",
        "d": "2026-01-02",
        "by": "AAH/",
    });
    let rows = wait_for_ids(&cache, &[1, 2, 3]).await;
    for id in [1, 2] {
        let mut want = expected.as_object().unwrap().clone();
        want.insert("id".into(), json!(id));
        let got = &rows[&id];
        for (column, value) in &want {
            assert_eq!(got.get(column), Some(value), "row {id}, column {column}");
        }
    }

    // On the topic: row 2's change carries the same values.
    let topic = args.topic(&format!("public.{table}"));
    let recs = wait_for_records(&args.kafka, &topic, 2, Duration::from_secs(60)).await;
    let after = recs
        .iter()
        .find(|r| r.key == json!({"id": 2}))
        .and_then(|r| r.value.as_ref())
        .map(|v| v["after"].clone())
        .expect("row 2 on the topic");
    for (column, value) in expected.as_object().unwrap() {
        assert_eq!(&after[column], value, "topic, column {column}");
    }
    assert!(
        !bridge.log_text().contains("cannot read"),
        "no value fell back to its text: {}",
        bridge.log_text()
    );
    assert!(
        bridge.child.try_wait().unwrap().is_none(),
        "the bridge runs"
    );
    cache.shutdown().await;
    bridge.sigterm(Duration::from_secs(30));
}

/// A `SQL_ASCII` database stores whatever bytes it is given. Text that is not UTF-8
/// reaches Kafka and the cache with each such byte as its Latin-1 character, on both
/// paths alike, and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_in_a_sql_ascii_database_does_not_stop_the_stream() {
    let pg = pg().await;
    const DB: &str = "tidemark_sql_ascii";
    let exists = pg
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DB])
        .await
        .unwrap()
        .is_some();
    if !exists {
        pg.batch_execute(&format!(
            "CREATE DATABASE {DB} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ))
        .await
        .unwrap();
    }
    let mut url = url::Url::parse(&pg_url()).unwrap();
    url.set_path(&format!("/{DB}"));
    let url = url.to_string();
    let db = pg_at(&url).await;
    let name = unique("ascii");
    let table = format!("{name}_t");
    db.batch_execute(&format!(
        r"CREATE TABLE {table} (id int8 PRIMARY KEY, v text, vs text[]);
          INSERT INTO {table} VALUES (1, E'caf\351 \303\251', ARRAY[E'\377', 'ok']);"
    ))
    .await
    .unwrap();

    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.postgres = url.clone();
    let (mut bridge, args) = start_bridge_with(args).await;
    let cache = args
        .row_cache(&table)
        .postgres(url.clone())
        .build()
        .await
        .expect("cache");
    db.batch_execute(&format!(
        r"INSERT INTO {table} VALUES (2, E'caf\351 \303\251', ARRAY[E'\377', 'ok']);
          INSERT INTO {table} VALUES (3, 'plain', NULL);"
    ))
    .await
    .unwrap();
    let rows = wait_for_ids(&cache, &[1, 2, 3]).await;
    for id in [1, 2] {
        assert_eq!(rows[&id]["v"], json!("caf\u{e9} \u{e9}"), "row {id}");
        assert_eq!(rows[&id]["vs"], json!(["\u{ff}", "ok"]), "row {id}");
    }
    let topic = args.topic(&format!("public.{table}"));
    let recs = wait_for_records(&args.kafka, &topic, 2, Duration::from_secs(60)).await;
    let after: Value = recs
        .iter()
        .find(|r| r.key == json!({"id": 2}))
        .and_then(|r| r.value.as_ref())
        .map(|v| v["after"].clone())
        .expect("row 2 on the topic");
    assert_eq!(after["v"], json!("caf\u{e9} \u{e9}"));
    assert!(
        bridge.child.try_wait().unwrap().is_none(),
        "the bridge runs"
    );
    cache.shutdown().await;
    bridge.sigterm(Duration::from_secs(30));
    drop_slot_and_publication(&db, &args.slot, &args.publication).await;
}
