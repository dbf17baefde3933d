//! The bridge and a cache reach Kafka over SASL_SSL (SCRAM-SHA-512 over TLS, the
//! development CA) with nothing but librdkafka properties, through the shared broker's
//! second listener (`scripts/dev-stack.sh`, 127.0.0.1:9094); and wrong credentials
//! are reported, with librdkafka's reason, in a bounded time instead of a silent wait.

use std::time::{Duration, Instant};

use crate::support::*;

/// `--kafka-property key=value` flags for `properties`.
fn property_flags(properties: &[(String, String)]) -> Vec<String> {
    properties
        .iter()
        .flat_map(|(k, v)| ["--kafka-property".to_owned(), format!("{k}={v}")])
        .collect()
}

/// The listener's settings with another password.
fn with_wrong_password() -> Vec<(String, String)> {
    kafka_sasl_ssl_properties()
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "sasl.password" => (k, "not-the-password".to_owned()),
            _ => (k, v),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_and_cache_run_over_sasl_ssl_with_kafka_properties_only() {
    let pg = pg().await;
    let properties = kafka_sasl_ssl_properties();
    let name = unique("saslssl");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;

    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.kafka = kafka_sasl_ssl();
    args.extra = property_flags(&properties);
    let (mut bridge, args) = start_bridge_with(args).await;

    // Changes before the cache starts: in the topic and in its snapshot.
    pg.batch_execute(&format!(
        "UPDATE {table} SET v = 'before' WHERE id <= 100;
         DELETE FROM {table} WHERE id BETWEEN 400 AND 450;
         INSERT INTO {table} SELECT g, 'new' || g FROM generate_series(501, 600) g;"
    ))
    .await
    .unwrap();

    let mut builder = args.row_cache(&table);
    for (k, v) in &properties {
        builder = builder.kafka_property(k.clone(), v.clone());
    }
    let cache = builder
        .build()
        .await
        .expect("the cache starts over SASL_SSL");

    // Changes after: they reach the cache through the topic only.
    pg.batch_execute(&format!(
        "UPDATE {table} SET v = 'after' WHERE id BETWEEN 200 AND 300;
         DELETE FROM {table} WHERE id <= 10;
         INSERT INTO {table} SELECT g, 'later' || g FROM generate_series(601, 650) g;"
    ))
    .await
    .unwrap();
    let want = table_rows(&pg, &table).await;
    assert_eq!(want.len(), 500 - 51 + 100 - 10 + 50);
    wait_for_rows(&cache, &want, Duration::from_secs(60)).await;

    let log = bridge.log_text();
    assert!(
        !log.contains("ERROR") && !log.contains("session failed"),
        "the bridge failed over SASL_SSL:\n{log}"
    );
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_with_the_reason_in_bounded_time() {
    let pg = pg().await;
    let wrong = with_wrong_password();
    let name = unique("saslbad");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;

    // The bridge retries (the credentials may be fixed on the broker side), and its
    // log says why each attempt failed.
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.kafka = kafka_sasl_ssl();
    args.extra = property_flags(&wrong);
    let started = Instant::now();
    let mut bridge = Bridge::start(&args);
    bridge
        .wait_for_log("session failed", Duration::from_secs(60))
        .await;
    let log = bridge.log_text();
    assert!(
        log.contains("SASL authentication error") && log.contains("invalid credentials"),
        "the bridge's error names the refused authentication:\n{log}"
    );
    assert!(!log.contains("streaming"), "{log}");
    println!(
        "bridge: authentication failure reported after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        bridge.child.try_wait().unwrap().is_none(),
        "the bridge retries instead of exiting"
    );
    assert!(bridge.sigterm(Duration::from_secs(30)).success());

    // The cache does not start, and says why, in a bounded time (the bridge never
    // created the topic, but the cache cannot even ask).
    let topic = format!("{name}.public.{table}");
    let started = Instant::now();
    let mut builder =
        tidemark_client::Cache::<tidemark_client::Row, tidemark_client::Row>::builder()
            .postgres(pg_url())
            .kafka(kafka_sasl_ssl())
            .table(format!("public.{table}"))
            .topic(topic);
    for (k, v) in &wrong {
        builder = builder.kafka_property(k.clone(), v.clone());
    }
    let e = tokio::time::timeout(Duration::from_secs(180), builder.build())
        .await
        .expect("the cache reports the failure within 3 minutes")
        .expect_err("a wrong password must not start the cache");
    let text = e.to_string();
    println!(
        "cache: failed after {:.1} s: {text}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        text.contains("SASL authentication error"),
        "the cache's error names the refused authentication: {text}"
    );
}
