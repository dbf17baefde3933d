//! Table shapes the load and the stream cannot mirror: each is handled exactly
//! (inheritance, through `FROM ONLY`) or refused at start with an error that names
//! the fix (partitioned tables, replica identity `NOTHING` or a non-key index, a
//! publication that hides operations, rows or columns, row-level security).

use std::time::Duration;

use tidemark_client::Error;

use crate::support::*;

/// Runs a bridge for `public.<table>` that must refuse to start; returns its log.
async fn bridge_refuses(name: &str, table: &str) -> String {
    let args = BridgeArgs::new(name, &[&format!("public.{table}")]);
    let mut bridge = Bridge::start(&args);
    let status = bridge.wait_exit(Duration::from_secs(60));
    let log = bridge.log_text();
    assert!(!status.success(), "the bridge must refuse {table}:\n{log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_refuses_tables_and_publications_it_cannot_mirror() {
    let pg = pg().await;
    let cases: [(&str, &str, &str, &str); 5] = [
        (
            "partitioned",
            "CREATE TABLE {t} (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
             CREATE TABLE {t}_p1 PARTITION OF {t} FOR VALUES FROM (0) TO (1000);",
            "is partitioned",
            "list the partitions in --tables",
        ),
        (
            "identity_nothing",
            "CREATE TABLE {t} (id int PRIMARY KEY, v text); ALTER TABLE {t} REPLICA IDENTITY NOTHING;",
            "REPLICA IDENTITY NOTHING",
            "REPLICA IDENTITY DEFAULT",
        ),
        (
            "identity_index",
            "CREATE TABLE {t} (id int PRIMARY KEY, v text NOT NULL);
             CREATE UNIQUE INDEX {t}_v ON {t} (v);
             ALTER TABLE {t} REPLICA IDENTITY USING INDEX {t}_v;",
            "replica identity index that is not its primary key",
            "REPLICA IDENTITY DEFAULT",
        ),
        (
            "no_deletes",
            "CREATE TABLE {t} (id int PRIMARY KEY, v text);
             CREATE PUBLICATION {n}_pub FOR TABLE {t} WITH (publish = 'insert, update');",
            "does not publish every operation",
            "SET (publish = 'insert, update, delete, truncate')",
        ),
        (
            "row_filter",
            "CREATE TABLE {t} (id int PRIMARY KEY, v text);
             CREATE PUBLICATION {n}_pub FOR TABLE {t} WHERE (id > 10);",
            "with a row filter or a column list",
            "publish the whole table",
        ),
    ];
    for (base, sql, problem, fix) in cases {
        let name = unique(base);
        let table = format!("{name}_t");
        pg.batch_execute(&sql.replace("{t}", &table).replace("{n}", &name))
            .await
            .unwrap();
        let log = bridge_refuses(&name, &table).await;
        assert!(log.contains(problem), "{base}: no '{problem}' in\n{log}");
        assert!(log.contains(fix), "{base}: no '{fix}' in\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_replica_identity_nothing_keeps_its_updates_working() {
    let pg = pg().await;
    let name = unique("nothing");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    pg.batch_execute(&format!("ALTER TABLE {table} REPLICA IDENTITY NOTHING"))
        .await
        .unwrap();
    bridge_refuses(&name, &table).await;
    // Had the bridge published the table, UPDATE and DELETE would now fail.
    pg.batch_execute(&format!(
        "UPDATE {table} SET v = 'still works' WHERE id = 1; DELETE FROM {table} WHERE id = 2"
    ))
    .await
    .expect("the application's writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_of_an_inheritance_parent_holds_only_the_parents_rows() {
    let pg = pg().await;
    let name = unique("parent");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    pg.batch_execute(&format!(
        "CREATE TABLE {table}_child () INHERITS ({table});
         INSERT INTO {table}_child SELECT g, 'child' FROM generate_series(1001, 1100) g;"
    ))
    .await
    .unwrap();
    let (mut bridge, args) = start_bridge(&name, &[&format!("public.{table}")]).await;
    let cache = args.row_cache(&table).build().await.expect("cache");
    pg.batch_execute(&format!(
        "UPDATE {table}_child SET v = 'child changed'; UPDATE ONLY {table} SET v = 'parent changed' WHERE id <= 5;"
    ))
    .await
    .unwrap();
    let parent_only: std::collections::BTreeMap<i64, String> = pg
        .query(&format!("SELECT id, v FROM ONLY {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i32>(0) as i64, r.get(1)))
        .collect();
    wait_for(Duration::from_secs(60), "the parent's rows", || async {
        (cache_rows(&cache) == parent_only).then_some(())
    })
    .await;
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_refuses_partitioned_tables_and_rows_hidden_by_row_security() {
    let pg = pg().await;
    let name = unique("shape");
    let table = format!("{name}_t");
    let role = format!("{name}_reader");
    pg.batch_execute(&format!(
        "CREATE TABLE {table}_part (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE {table} (id int PRIMARY KEY, v text);
         ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
         CREATE POLICY {name}_some ON {table} USING (id % 2 = 0);
         CREATE ROLE {role} LOGIN PASSWORD 'reader';
         GRANT SELECT ON {table} TO {role};"
    ))
    .await
    .unwrap();
    // The caches check the topic first: give them one.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka())
            .create()
            .unwrap();
    let topic = format!("{name}.unused");
    let created = admin
        .create_topics(
            &[rdkafka::admin::NewTopic::new(
                &topic,
                1,
                rdkafka::admin::TopicReplication::Fixed(1),
            )],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let build = |url: String, table: String| {
        let topic = topic.clone();
        async move {
            tidemark_client::Cache::<tidemark_client::Row, tidemark_client::Row>::builder()
                .postgres(url)
                .kafka(kafka())
                .table(format!("public.{table}"))
                .topic(topic)
                .build()
                .await
        }
    };
    let expect_table_error = |r: Result<_, Error>, what: &str| match r {
        Err(e @ Error::Table { .. }) => assert!(e.to_string().contains(what), "{e}"),
        Err(e) => panic!("the wrong error: {e}"),
        Ok(_) => panic!("the cache started"),
    };
    expect_table_error(
        build(pg_url(), format!("{table}_part")).await,
        "partitioned",
    );
    let reader_url = pg_url().replacen("postgres@", &format!("{role}:reader@"), 1);
    expect_table_error(build(reader_url, table.clone()).await, "row-level security");
    pg.batch_execute(&format!("DROP TABLE {table}; DROP ROLE {role}"))
        .await
        .unwrap();
}
