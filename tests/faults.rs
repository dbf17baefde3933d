//! Faults, injected under a writer's load: the bridge's PostgreSQL connections cut
//! and blackholed, PostgreSQL restarted mid-stream, and a cache's Kafka connection
//! cut, blackholed, slowed to a drip and delayed. After each, every committed change
//! is in Kafka and every cache equals the table; readiness said so meanwhile.
//! (A broker restarted, and stopped for longer than any timeout, under load:
//! `bridge_crash`.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// A writer that updates and inserts rows of `table` about 50 times a second until
/// stopped, reconnecting when PostgreSQL goes away; counts committed changes.
struct Writer {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(table: &str) -> Writer {
        let (stop, committed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let task = tokio::spawn({
            let (stop, committed, table) = (stop.clone(), committed.clone(), table.to_owned());
            async move {
                let mut next_id = 100_000i64;
                'connect: while !stop.load(Ordering::Relaxed) {
                    let Ok((client, conn)) =
                        tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await
                    else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    tokio::spawn(conn);
                    while !stop.load(Ordering::Relaxed) {
                        next_id += 1;
                        let sql = if next_id % 3 == 0 {
                            format!("INSERT INTO {table} VALUES ({next_id}, 'new {next_id}')")
                        } else {
                            format!(
                                "UPDATE {table} SET v = 'w{next_id}' WHERE id = {}",
                                next_id % 500 + 1
                            )
                        };
                        if client.batch_execute(&sql).await.is_err() {
                            continue 'connect;
                        }
                        committed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        });
        Writer {
            stop,
            committed,
            task,
        }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.committed.load(Ordering::Relaxed)
    }
}

/// Waits until `/readyz` on `http` answers `status`.
async fn readiness(http: &str, status: u16, within: Duration, what: &str) -> Duration {
    let started = Instant::now();
    wait_for(within, what, || async {
        (http_get(http, "/readyz").await?.0 == status).then_some(())
    })
    .await;
    started.elapsed()
}

/// The latest value of every key in `topic`, tombstones removing the key.
fn topic_rows(brokers: &str, topic: &str) -> BTreeMap<i64, String> {
    let mut rows = BTreeMap::new();
    for rec in read_topic(brokers, topic) {
        let Some(id) = rec.key["id"].as_i64() else {
            continue;
        };
        match rec.value.as_ref().map(|v| &v["after"]) {
            Some(Value::Object(after)) => {
                rows.insert(id, after["v"].as_str().unwrap_or_default().to_owned());
            }
            Some(_) => {}
            None => {
                rows.remove(&id);
            }
        }
    }
    rows
}

/// Waits until the topic and the cache both equal the table.
async fn everything_arrives(
    pg: &tokio_postgres::Client,
    table: &str,
    brokers: &str,
    topic: &str,
    cache: &tidemark_client::Cache<tidemark_client::Row, tidemark_client::Row>,
) {
    let want = table_rows(pg, table).await;
    wait_for(
        Duration::from_secs(180),
        "the topic and the cache to equal the table",
        || {
            let (b, t) = (brokers.to_owned(), topic.to_owned());
            let want = want.clone();
            let cached = cache_rows(cache);
            async move {
                let in_topic = tokio::task::spawn_blocking(move || topic_rows(&b, &t))
                    .await
                    .ok()?;
                (in_topic == want && cached == want).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_outlives_its_postgres_connections_cut_blackholed_and_restarted() {
    let pg = pg().await;
    let name = unique("pgfault");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let mut url = url::Url::parse(&pg_url()).unwrap();
    let pg_port = url.port().unwrap_or(5432);
    let proxy = Proxy::start(19200, pg_port).await;
    url.set_port(Some(19200)).unwrap();
    let http = "127.0.0.1:19184";
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.postgres = url.to_string();
    args.extra = vec!["--http".into(), http.into()];
    let (mut bridge, args) = start_bridge_with(args).await;
    let topic = args.topic(&format!("public.{table}"));
    let cache = args.row_cache(&table).build().await.expect("cache");
    let writer = Writer::start(&table);
    readiness(http, 200, Duration::from_secs(30), "ready").await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Cut: every connection closed, new ones refused for 10 s.
    proxy.set(Fault::Cut);
    let t = readiness(http, 503, Duration::from_secs(30), "not ready while cut").await;
    eprintln!("faults: PostgreSQL cut: not ready after {t:?}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.set(Fault::None);
    let t = readiness(http, 200, Duration::from_secs(90), "ready after the cut").await;
    eprintln!("faults: PostgreSQL cut: ready again {t:?} after it ended");

    // Blackhole for 70 s: longer than wal_sender_timeout (60 s), so the server ends
    // the walsender while the bridge sees nothing.
    proxy.set(Fault::Blackhole);
    let t = readiness(
        http,
        503,
        Duration::from_secs(60),
        "not ready while blackholed",
    )
    .await;
    eprintln!("faults: PostgreSQL blackholed: not ready after {t:?}");
    tokio::time::sleep(Duration::from_secs(70).saturating_sub(t)).await;
    proxy.set(Fault::None);
    let t = readiness(
        http,
        200,
        Duration::from_secs(90),
        "ready after the blackhole",
    )
    .await;
    eprintln!("faults: PostgreSQL blackholed: ready again {t:?} after it ended");

    // PostgreSQL itself restarted mid-stream.
    let restart = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/dev-stack.sh"
        ))
        .arg("postgres-restart")
        .status()
        .expect("run dev-stack.sh postgres-restart");
    assert!(restart.success(), "PostgreSQL restarts");
    let t = readiness(
        http,
        200,
        Duration::from_secs(90),
        "ready after the restart",
    )
    .await;
    eprintln!("faults: PostgreSQL restarted: ready {t:?} after it was up");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let committed = writer.stop().await;
    assert!(committed > 100, "the writer kept writing: {committed}");
    let pg = crate::support::pg().await;
    everything_arrives(&pg, &table, &args.kafka, &topic, &cache).await;
    assert!(
        bridge.child.try_wait().unwrap().is_none(),
        "the bridge runs"
    );
    cache.shutdown().await;
    bridge.sigterm(Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_outlives_its_kafka_connection_cut_blackholed_dripping_and_slow() {
    const BROKER_PORT: u16 = 19099;
    const PROXY_PORT: u16 = 19201;
    let pg = pg().await;
    let name = unique("kfault");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    let broker = PrivateBroker::start_with(
        BROKER_PORT,
        &[("TIDEMARK_NODE_PROXY_PORT", &PROXY_PORT.to_string())],
    )
    .await;
    let proxy = Proxy::start(PROXY_PORT, broker.proxied_listener_port()).await;
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.kafka = broker.address();
    let (mut bridge, args) = start_bridge_with(args).await;
    let topic = args.topic(&format!("public.{table}"));
    let cache = args
        .row_cache(&table)
        .kafka(format!("127.0.0.1:{PROXY_PORT}"))
        .build()
        .await
        .expect("cache");
    let writer = Writer::start(&table);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (fault, secs) in [
        (Fault::Cut, 10),
        // Longer than librdkafka's socket.timeout.ms (60 s).
        (Fault::Blackhole, 70),
        (
            Fault::Drip {
                bytes_per_second: 2_000,
            },
            10,
        ),
        (Fault::Latency(Duration::from_millis(500)), 10),
    ] {
        proxy.set(fault);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let stats = cache.stats();
        eprintln!(
            "faults: cache's Kafka {fault:?} for {secs} s: ready {}, {} rows, lag {:?} records, Kafka silent for {:?}",
            cache.is_ready(),
            stats.rows,
            stats.lag_records,
            stats.kafka_silent_for,
        );
        if fault == Fault::Blackhole {
            // The figures do not pretend: the cache says Kafka has not answered.
            assert!(
                stats
                    .kafka_silent_for
                    .is_some_and(|d| d >= Duration::from_secs(30)),
                "a blackholed broker shows in the stats: {stats:?}"
            );
        }
        proxy.set(Fault::None);
        if fault == Fault::Blackhole {
            wait_for(
                Duration::from_secs(120),
                "Kafka answering the cache again",
                || {
                    let silent = cache.stats().kafka_silent_for;
                    async move { silent.is_none().then_some(()) }
                },
            )
            .await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let committed = writer.stop().await;
    assert!(committed > 100, "the writer kept writing: {committed}");
    everything_arrives(&pg, &table, &args.kafka, &topic, &cache).await;
    assert!(cache.is_ready(), "the cache is ready again");
    cache.shutdown().await;
    bridge.sigterm(Duration::from_secs(30));
    drop(broker);
}
