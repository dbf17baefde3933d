//! Running the bridge: metrics move while it works, and readiness follows the broker.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_and_readiness_follows_the_broker() {
    let pg = pg().await;
    let mut broker = PrivateBroker::start(19094).await;
    let name = unique("ops");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text)"
    ))
    .await
    .unwrap();
    let http = "127.0.0.1:19187";
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.kafka = broker.address();
    args.extra = vec!["--http".into(), http.into()];
    let (mut bridge, args) = start_bridge_with(args).await;

    assert_eq!(http_get(http, "/healthz").await.map(|r| r.0), Some(200));
    wait_for(Duration::from_secs(30), "/readyz to answer 200", || async {
        (http_get(http, "/readyz").await?.0 == 200).then_some(())
    })
    .await;

    let label = format!("table=\"public.{table}\"");
    let inserts = |text: &str| metric_value(text, "tidemark_changes_total", &[&label, "op=\"c\""]);
    pg.batch_execute(&format!(
        "INSERT INTO {table} SELECT g, 'a' FROM generate_series(1, 50) g"
    ))
    .await
    .unwrap();
    let first = wait_for(
        Duration::from_secs(30),
        "50 inserts in /metrics",
        || async {
            let (_, text) = http_get(http, "/metrics").await?;
            inserts(&text).filter(|&n| n >= 50.0).map(|_| text)
        },
    )
    .await;
    pg.batch_execute(&format!(
        "INSERT INTO {table} SELECT g, 'b' FROM generate_series(51, 80) g"
    ))
    .await
    .unwrap();
    let latency_count =
        |t: &str| metric_value(t, "tidemark_ack_latency_seconds_count", &[]).unwrap_or(0.0);
    let second = wait_for(
        Duration::from_secs(30),
        "80 inserts and 80 acknowledgements in /metrics",
        || async {
            let (_, text) = http_get(http, "/metrics").await?;
            inserts(&text)
                .filter(|&n| n >= 80.0 && latency_count(&text) >= 80.0)
                .map(|_| text)
        },
    )
    .await;
    let bytes = |t: &str| metric_value(t, "tidemark_bytes_total", &[]).unwrap_or(0.0);
    assert!(bytes(&second) > bytes(&first), "bytes moved");
    wait_for(
        Duration::from_secs(30),
        "the confirmed LSN gauge to pass the inserts",
        || async {
            let lsn = current_lsn(&pg).await as f64;
            let (_, text) = http_get(http, "/metrics").await?;
            metric_value(&text, "tidemark_confirmed_lsn", &[])
                .filter(|&c| c >= lsn - 1e6)
                .map(|_| ())
        },
    )
    .await;
    for gauge in [
        "tidemark_slot_lag_bytes",
        "tidemark_slot_lag_seconds",
        "tidemark_in_flight_records",
    ] {
        assert!(
            metric_value(&second, gauge, &[]).is_some(),
            "{gauge} is exported:\n{second}"
        );
    }
    // Slot health: the WAL kept for the slot (from restart_lsn) and its wal_status.
    assert!(
        metric_value(&second, "tidemark_slot_retained_wal_bytes", &[]).is_some_and(|b| b >= 0.0),
        "retained WAL is exported:\n{second}"
    );
    assert_eq!(
        metric_value(
            &second,
            "tidemark_slot_wal_status",
            &["status=\"reserved\""]
        ),
        Some(1.0),
        "wal_status is reserved:\n{second}"
    );
    assert_eq!(
        metric_value(&second, "tidemark_slot_wal_status", &["status=\"lost\""]),
        Some(0.0)
    );

    broker.stop();
    wait_for(
        Duration::from_secs(30),
        "/readyz to answer 503 without the broker",
        || async { (http_get(http, "/readyz").await?.0 == 503).then_some(()) },
    )
    .await;
    assert_eq!(
        http_get(http, "/healthz").await.map(|r| r.0),
        Some(200),
        "alive while unready"
    );
    pg.batch_execute(&format!(
        "INSERT INTO {table} VALUES (1000, 'during the outage')"
    ))
    .await
    .unwrap();
    // Records never time out (no gaps): the session waits for the broker, and says so.
    bridge
        .wait_for_log("Kafka has acknowledged nothing", Duration::from_secs(90))
        .await;
    let (_, text) = http_get(http, "/metrics").await.unwrap();
    assert!(
        metric_value(&text, "tidemark_in_flight_records", &[]).unwrap_or(0.0) >= 1.0,
        "the record written during the outage waits in flight:\n{text}"
    );
    broker.resume().await;
    wait_for(
        Duration::from_secs(90),
        "/readyz to answer 200 again",
        || async { (http_get(http, "/readyz").await?.0 == 200).then_some(()) },
    )
    .await;
    wait_for_records(
        &broker.address(),
        &args.topic(&format!("public.{table}")),
        81,
        Duration::from_secs(60),
    )
    .await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}
