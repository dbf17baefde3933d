//! The shared services: where the tests find PostgreSQL and Kafka, connections, and
//! the replication slot's position.

use tokio_postgres::{Client, NoTls};

/// Where the tests find PostgreSQL.
pub fn pg_url() -> String {
    std::env::var("TIDEMARK_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Where the tests find the broker.
pub fn kafka() -> String {
    std::env::var("TIDEMARK_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub const START_STACK: &str = "start the development stack with: scripts/dev-stack.sh up";

/// A connection to the test database. Also starts the tests' log output (once):
/// `RUST_LOG` selects it, warnings by default.
pub async fn pg() -> Client {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    pg_at(&pg_url()).await
}

/// A connection to `url`.
pub async fn pg_at(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url} ({e}); {START_STACK}"));
    tokio::spawn(conn);
    client
}

/// The slot's confirmed flush LSN as a number.
pub async fn confirmed_flush(pg: &Client, slot: &str) -> Option<u64> {
    pg.query_opt(
        "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .expect("query pg_replication_slots")
    .and_then(|r| r.get::<_, Option<i64>>(0))
    .map(|v| v as u64)
}

/// The server's current WAL LSN as a number.
pub async fn current_lsn(pg: &Client) -> u64 {
    pg.query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await
        .expect("pg_current_wal_lsn")
        .get::<_, i64>(0) as u64
}

/// Drops a replication slot and publication left by an earlier run.
pub async fn drop_slot_and_publication(pg: &Client, slot: &str, publication: &str) {
    let _ = pg
        .execute(
            "SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await;
    let _ = pg
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS \"{publication}\""))
        .await;
}

/// A login role that authenticates with a password (scram, from 127.0.0.1), and whose
/// settings change how values print: a bridge and a cache that connect as it must
/// find the password and pin every such setting themselves.
pub const PASSWORD_ROLE: &str = "tidemark_values";
pub const PASSWORD_ROLE_SECRET: &str = "values-pw";

pub async fn ensure_password_role(pg: &Client) {
    pg.batch_execute(&format!(
        "DO $$ BEGIN CREATE ROLE {PASSWORD_ROLE} LOGIN SUPERUSER PASSWORD '{PASSWORD_ROLE_SECRET}';
         EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         ALTER ROLE {PASSWORD_ROLE} SET IntervalStyle = 'sql_standard';
         ALTER ROLE {PASSWORD_ROLE} SET extra_float_digits = -15;
         ALTER ROLE {PASSWORD_ROLE} SET DateStyle = 'SQL, DMY';
         ALTER ROLE {PASSWORD_ROLE} SET TimeZone = 'Asia/Kolkata';
         ALTER ROLE {PASSWORD_ROLE} SET bytea_output = 'escape';"
    ))
    .await
    .unwrap();
}

/// `url` with the role's user name and password.
pub fn as_password_role(url: &str) -> String {
    let mut u = url::Url::parse(url).expect("test URL");
    u.set_username(PASSWORD_ROLE).unwrap();
    u.set_password(Some(PASSWORD_ROLE_SECRET)).unwrap();
    u.to_string()
}

/// Where the tests find the shared broker's SASL_SSL listener (SCRAM-SHA-512 over
/// TLS; `scripts/dev-stack.sh` opens it on 9094).
pub fn kafka_sasl_ssl() -> String {
    std::env::var("TIDEMARK_TEST_KAFKA_SASL_SSL").unwrap_or_else(|_| "127.0.0.1:9094".into())
}

/// The librdkafka settings of a client of [`kafka_sasl_ssl`]: security protocol, SASL
/// mechanism, user, password and the development CA, as
/// `scripts/dev-stack.sh kafka-sasl-ssl-properties` prints them.
pub fn kafka_sasl_ssl_properties() -> Vec<(String, String)> {
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/dev-stack.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("kafka-sasl-ssl-properties")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e})", script.display()));
    assert!(
        out.status.success(),
        "{} kafka-sasl-ssl-properties failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let properties: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert!(
        properties.iter().any(|(k, _)| k == "sasl.password"),
        "no SASL settings from {} kafka-sasl-ssl-properties: {properties:?}",
        script.display()
    );
    properties
}
