//! The ordinary SQL connections (the cache's and the bridge's) honour libpq's TLS
//! settings in the URL, against a scratch server that accepts TCP connections only
//! over TLS, with a certificate for `localhost` signed by a throwaway CA.

use std::time::Duration;

use tidemark_core::pg::{ConnectError, ConnectOptions};
use tokio_postgres::Client;

use crate::support::*;

/// Connects through the shared connect function with `query` appended to the URL.
async fn connect(host: &str, port: u16, query: &str) -> Result<Client, ConnectError> {
    ConnectOptions::parse(&format!(
        "postgres://postgres@{host}:{port}/postgres?{query}"
    ))
    .expect("valid settings")
    .with_session("tidemark-tls-test")
    .connect()
    .await
}

/// Whether the session runs over TLS, as the server sees it.
async fn encrypted(client: &Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_connections_negotiate_and_check_tls_as_libpq_does() {
    let port = 25434;
    let scratch = ScratchPostgres::start_tls(port);
    let ca = scratch.ca_pem();
    let other = scratch.other_ca_pem();
    let (ca, other) = (ca.display(), other.display());

    // verify-full with the right CA: the chain and the name `localhost` check out.
    let c = connect(
        "localhost",
        port,
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    )
    .await
    .expect("verify-full with the signing CA connects");
    assert!(encrypted(&c).await, "verify-full must run over TLS");
    let options: String = c
        .query_one("SELECT current_setting('bytea_output')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(options, "hex", "the session options still apply");

    // require: TLS without a certificate check.
    let c = connect("localhost", port, "sslmode=require")
        .await
        .expect("require connects");
    assert!(encrypted(&c).await, "require must run over TLS");

    // prefer (the default without sslmode): TLS, as the server offers it.
    let c = connect("127.0.0.1", port, "connect_timeout=10")
        .await
        .expect("prefer connects");
    assert!(encrypted(&c).await, "prefer must use TLS when offered");

    // disable: plain text, which this server refuses (hostssl only).
    let e = connect("127.0.0.1", port, "sslmode=disable")
        .await
        .expect_err("the server accepts TLS only");
    assert!(e.to_string().contains("no encryption"), "{e}");

    // verify-full with a CA that did not sign the certificate: refused, saying why.
    let e = connect(
        "localhost",
        port,
        &format!("sslmode=verify-full&sslrootcert={other}"),
    )
    .await
    .expect_err("verify-full with the wrong CA must fail");
    assert!(matches!(e, ConnectError::Postgres(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("TLS handshake") && text.contains("UnknownIssuer"),
        "{text}"
    );
    // require with sslrootcert checks the chain too, as libpq does.
    let e = connect(
        "localhost",
        port,
        &format!("sslmode=require&sslrootcert={other}"),
    )
    .await
    .expect_err("require with a root certificate checks the chain");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // A name the certificate does not carry (reached through hostaddr): verify-ca
    // checks only the chain and connects, verify-full refuses.
    let aliased = format!("hostaddr=127.0.0.1&sslrootcert={ca}");
    let c = connect("db.invalid", port, &format!("sslmode=verify-ca&{aliased}"))
        .await
        .expect("verify-ca ignores the host name");
    assert!(encrypted(&c).await);
    let e = connect(
        "db.invalid",
        port,
        &format!("sslmode=verify-full&{aliased}"),
    )
    .await
    .expect_err("verify-full checks the host name");
    assert!(e.to_string().contains("not valid for name"), "{e}");

    // An unreadable root certificate is a settings error naming the parameter.
    let e = connect(
        "localhost",
        port,
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    )
    .await
    .expect_err("missing sslrootcert");
    match e {
        ConnectError::Settings(s) => assert_eq!(s.parameter, "sslrootcert"),
        other => panic!("expected a settings error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_and_cache_run_over_verified_tls() {
    let port = 25435;
    let scratch = ScratchPostgres::start_tls(port);
    let url = format!(
        "postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
        scratch.ca_pem().display()
    );
    let db = connect(
        "localhost",
        port,
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            scratch.ca_pem().display()
        ),
    )
    .await
    .expect("connect to the scratch server");
    let name = unique("tls");
    let table = format!("{name}_t");
    db.batch_execute(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, v text);
         INSERT INTO {table} SELECT g, 'v' || g FROM generate_series(1, 10) g;"
    ))
    .await
    .unwrap();

    // The bridge's SQL connection (setup) and its replication connection both go
    // through the verify-full URL; it reaches streaming and publishes changes.
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.postgres = url.clone();
    let bridge = Bridge::start(&args);
    wait_for(
        Duration::from_secs(60),
        "the bridge to stream over TLS",
        || async {
            let log = bridge.log_text();
            assert!(!log.contains("ERROR"), "the bridge failed:\n{log}");
            log.contains("streaming").then_some(())
        },
    )
    .await;
    // Its SQL session and its walsender, both over TLS (the walsender may register
    // its application_name a moment after the log line).
    wait_for(
        Duration::from_secs(30),
        "two encrypted bridge sessions",
        || async {
            let row = db
                .query_one(
                    "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a
                     JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'tidemark-bridge'",
                    &[],
                )
                .await
                .unwrap();
            let (encrypted, sessions): (i64, i64) = (row.get(0), row.get(1));
            assert_eq!(
                encrypted, sessions,
                "every bridge session must be encrypted"
            );
            (sessions == 2).then_some(())
        },
    )
    .await;
    db.batch_execute(&format!("INSERT INTO {table} VALUES (11, 'eleven')"))
        .await
        .unwrap();
    let topic = args.topic(&format!("public.{table}"));
    wait_for_records(&args.kafka, &topic, 1, Duration::from_secs(60)).await;

    // The cache warm-starts from the same URL and follows the topic.
    let cache: tidemark_client::Cache<i32, serde_json::Value> = tidemark_client::Cache::builder()
        .postgres(url.clone())
        .kafka(kafka())
        .table(format!("public.{table}"))
        .topic(topic.clone())
        .build()
        .await
        .expect("the cache starts over verify-full TLS");
    assert_eq!(cache.len(), 11);
    // With a CA that did not sign the server's certificate the cache refuses to start.
    let wrong = format!(
        "postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
        scratch.other_ca_pem().display()
    );
    let e = tidemark_client::Cache::<i32, serde_json::Value>::builder()
        .postgres(wrong)
        .kafka(kafka())
        .table(format!("public.{table}"))
        .topic(topic)
        .build()
        .await
        .expect_err("the wrong CA must fail");
    let text = e.to_string();
    assert!(
        matches!(e, tidemark_client::Error::PostgresUnreachable { .. })
            && text.contains("UnknownIssuer"),
        "{text}"
    );
    drop(bridge);
}
