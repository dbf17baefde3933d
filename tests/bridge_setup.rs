//! A bad setup stops the bridge with an error that names the problem and the fix; an
//! unreachable broker is waited out (with a warning) and nothing unsent is confirmed.

use std::time::Duration;

use crate::support::*;

/// Runs a bridge that must refuse to start; returns its log.
async fn refused(args: BridgeArgs) -> String {
    let pg = pg().await;
    drop_slot_and_publication(&pg, &args.slot, &args.publication).await;
    let mut bridge = Bridge::start(&args);
    let status = bridge.wait_exit(Duration::from_secs(60));
    assert!(
        !status.success(),
        "the bridge must fail, it exited with {status:?}"
    );
    bridge.log_text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_primary_key_is_refused_with_the_fix() {
    let pg = pg().await;
    let name = unique("nopk");
    let table = format!("{name}_t");
    pg.batch_execute(&format!("CREATE TABLE {table} (a int, b text)"))
        .await
        .unwrap();
    let log = refused(BridgeArgs::new(&name, &[&format!("public.{table}")])).await;
    assert!(
        log.contains(&format!("table public.{table} has no primary key")),
        "{log}"
    );
    assert!(log.contains("ADD PRIMARY KEY"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_table_is_refused_with_the_fix() {
    let name = unique("unknown");
    let log = refused(BridgeArgs::new(&name, &["public.no_such_table_here"])).await;
    assert!(
        log.contains("table public.no_such_table_here does not exist"),
        "{log}"
    );
    assert!(log.contains("correct --tables"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_refused_with_the_fix() {
    let scratch = ScratchPostgres::start(25433, "replica");
    let name = unique("wal");
    let mut args = BridgeArgs::new(&name, &["public.t"]);
    args.postgres = scratch.url.clone();
    pg_at(&scratch.url)
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut bridge = Bridge::start(&args);
    let status = bridge.wait_exit(Duration::from_secs(60));
    assert!(!status.success());
    let log = bridge.log_text();
    assert!(log.contains("wal_level=replica"), "{log}");
    assert!(
        log.contains("ALTER SYSTEM SET wal_level = 'logical'"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_waited_out_and_nothing_unsent_is_confirmed() {
    let pg = pg().await;
    let mut broker = PrivateBroker::start(19093).await;
    let name = unique("outage");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text)"
    ))
    .await
    .unwrap();
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.kafka = broker.address();
    let (mut bridge, args) = start_bridge_with(args).await;
    let topic = args.topic(&format!("public.{table}"));

    pg.batch_execute(&format!(
        "INSERT INTO {table} SELECT g, 'before' FROM generate_series(1, 100) g"
    ))
    .await
    .unwrap();
    wait_for_records(&broker.address(), &topic, 100, Duration::from_secs(60)).await;

    broker.stop();
    let before_outage = current_lsn(&pg).await;
    pg.batch_execute(&format!(
        "INSERT INTO {table} SELECT g, 'during' FROM generate_series(101, 200) g"
    ))
    .await
    .unwrap();
    let after_writes = current_lsn(&pg).await;
    // Records never time out (no gaps): the bridge waits, and says so.
    bridge
        .wait_for_log("Kafka has acknowledged nothing", Duration::from_secs(90))
        .await;
    let confirmed = confirmed_flush(&pg, &args.slot).await.expect("slot");
    assert!(
        confirmed < after_writes,
        "the slot confirmed {confirmed} although changes up to {after_writes} never reached Kafka (outage began at {before_outage})"
    );
    assert!(
        bridge.child.try_wait().unwrap().is_none(),
        "the bridge waits instead of exiting"
    );

    broker.resume().await;
    let recs = wait_for_records(&broker.address(), &topic, 200, Duration::from_secs(120)).await;
    let ids: std::collections::HashSet<i64> = recs
        .iter()
        .filter_map(|r| r.value.as_ref()?["after"]["id"].as_i64())
        .collect();
    assert_eq!(
        ids.len(),
        200,
        "the changes made during the outage arrive after it"
    );
    wait_for(
        Duration::from_secs(60),
        "the slot to confirm past the outage",
        || async {
            confirmed_flush(&pg, &args.slot)
                .await
                .filter(|&c| c >= after_writes)
        },
    )
    .await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_reach_logs_or_errors() {
    let secret = "S3cret-pw-in-url";
    // Unreachable server: the connection error is retried and logged.
    let name = unique("secret");
    let mut args = BridgeArgs::new(&name, &["public.t"]);
    args.postgres = format!("postgres://postgres:{secret}@127.0.0.1:1/test");
    let mut bridge = Bridge::start(&args);
    wait_for(
        Duration::from_secs(30),
        "a retried connection error",
        || async { bridge.log_text().contains("retrying").then_some(()) },
    )
    .await;
    bridge.kill9();
    let log = bridge.log_text();
    assert!(
        log.contains("postgres://postgres:***@127.0.0.1:1/test"),
        "{log}"
    );
    assert!(!log.contains(secret), "the password leaked:\n{log}");

    // A reachable server (trust auth ignores the password) and a definite error.
    let mut args = BridgeArgs::new(&unique("secret"), &["public.no_such_table_here"]);
    args.postgres = pg_url().replacen("postgres@", &format!("postgres:{secret}@"), 1);
    assert!(
        args.postgres.contains(secret),
        "the test URL carries the password"
    );
    let log = refused(args).await;
    assert!(!log.contains(secret), "the password leaked:\n{log}");
}

/// The bridge creates its topics with the partition count it is given and
/// `cleanup.policy=compact`, on a broker that creates topics by itself on first use
/// (Apache Kafka's default `auto.create.topics.enable=true`): looking a topic up must
/// not let the broker create it first with its own defaults (one partition, delete).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_are_created_compacted_with_their_partitions_on_an_auto_creating_broker() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::Consumer;
    use rdkafka::ClientConfig;

    let pg = pg().await;
    let name = unique("topics");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text)"
    ))
    .await
    .unwrap();
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.partitions = 3;
    let (mut bridge, args) = start_bridge_with(args).await;
    let topic = args.topic(&format!("public.{table}"));
    let md = consumer(&args.kafka)
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(
        md.topics().first().map(|t| t.partitions().len()),
        Some(3),
        "partitions of {topic}"
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka)
        .create()
        .unwrap();
    let configs = admin
        .describe_configs(&[ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
        .await
        .expect("DescribeConfigs");
    let config = configs
        .into_iter()
        .next()
        .expect("one resource")
        .expect("the topic's configuration");
    assert_eq!(
        config
            .get("cleanup.policy")
            .and_then(|e| e.value.as_deref()),
        Some("compact"),
        "cleanup.policy of {topic}"
    );
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_stops_the_bridge_with_the_fix() {
    // A server of its own that keeps at most 1 MB of WAL for a slot.
    let scratch = ScratchPostgres::start_with(
        25434,
        "-c wal_level=logical -c max_replication_slots=4 -c max_wal_senders=4 \
         -c max_slot_wal_keep_size=1MB",
    );
    let pg = pg_at(&scratch.url).await;
    let name = unique("lost");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.postgres = scratch.url.clone();
    let mut bridge = Bridge::start(&args);
    bridge
        .wait_for_log("streaming", Duration::from_secs(60))
        .await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
    // WAL beyond what the slot may keep, then a checkpoint: PostgreSQL invalidates it.
    wait_for(
        Duration::from_secs(60),
        "the slot to be invalidated",
        || async {
            pg.batch_execute(&format!(
                "INSERT INTO {table} SELECT g, repeat('x', 500) FROM generate_series(1000, 5000) g
               ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v;
             SELECT pg_switch_wal(); CHECKPOINT;"
            ))
            .await
            .unwrap();
            let status: Option<String> = pg
                .query_one(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                    &[&args.slot],
                )
                .await
                .unwrap()
                .get(0);
            (status.as_deref() == Some("lost")).then_some(())
        },
    )
    .await;
    let mut bridge = Bridge::start(&args);
    let status = bridge.wait_exit(Duration::from_secs(60));
    let log = bridge.log_text();
    assert!(!status.success(), "{log}");
    assert!(log.contains("was invalidated"), "{log}");
    assert!(log.contains("pg_drop_replication_slot"), "{log}");
}
