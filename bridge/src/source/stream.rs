//! The replication connection: `START_REPLICATION` on the slot with pgoutput.
//!
//! `pgwire-replication` runs the CopyBoth protocol (which `tokio-postgres` cannot)
//! and sends the standby status updates. The bridge tells it one LSN, the *applied*
//! LSN, which the library reports as written, flushed and applied. The bridge only
//! ever raises it to a position Kafka has acknowledged everything before (see
//! [`crate::pipeline`]), so the slot's `confirmed_flush_lsn` is a durable position.
//! Streaming starts from the slot's own confirmed position (start LSN 0).

use std::time::Duration;

use pgwire_replication::{ReplicationClient, ReplicationConfig, SslMode, TlsConfig};
use tidemark_core::pg::{SslMode as PgSslMode, Verification};
use tidemark_core::wire::SESSION_OPTIONS;
use tokio_postgres::config::Host;

use crate::config::{Config, PgUrl};
use crate::error::BridgeError;

/// Events the library reads ahead of the pipeline. The pipeline's own memory is
/// bounded in bytes by librdkafka's queue (`queue.buffering.max.kbytes`, see
/// `sink::producer`, 64 MiB); this channel adds at most this many rows, instead of the
/// library's default of 8192, which with rows of a megabyte would be gigabytes.
const REPLICATION_BUFFER_EVENTS: usize = 64;

/// How often the library sends a status update while the applied LSN moves.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

fn bad_url(problem: impl Into<String>) -> BridgeError {
    BridgeError::Config {
        field: "postgres",
        problem: problem.into(),
    }
}

/// The replication client's settings for the URL: host, port, user, password,
/// database and TLS as `tidemark_core::pg` reads them for the SQL connections (one
/// parser, so both connections reach the same server with the same checks).
pub fn replication_config(url: &PgUrl, config: &Config) -> Result<ReplicationConfig, BridgeError> {
    let options = url.options().map_err(|e| bad_url(e.to_string()))?;
    let pg = options.config();
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(name)) => name.trim_matches(['[', ']']).to_owned(),
        #[cfg(unix)]
        Some(Host::Unix(path)) => {
            return Err(bad_url(format!(
                "the replication connection needs a TCP host, not the socket {}; \
                 give the server's address instead (host=127.0.0.1 for a local server)",
                path.display()
            )))
        }
        None => "localhost".to_owned(),
    };
    // An empty user name in the URL (`postgres://@h/db`) counts as none, as before.
    let user = options.user().to_owned();
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = pg
        .get_dbname()
        .filter(|d| !d.is_empty())
        .unwrap_or(&user)
        .to_owned();
    let settings = options.tls();
    let tls = TlsConfig {
        mode: match settings.mode {
            PgSslMode::Disable => SslMode::Disable,
            PgSslMode::Allow | PgSslMode::Prefer => SslMode::Prefer,
            // libpq: `require` with a root certificate checks the chain like `verify-ca`.
            PgSslMode::Require => match settings.verification() {
                Verification::None => SslMode::Require,
                _ => SslMode::VerifyCa,
            },
            PgSslMode::VerifyCa => SslMode::VerifyCa,
            PgSslMode::VerifyFull => SslMode::VerifyFull,
        },
        ca_pem_path: settings.root_cert.clone(),
        client_cert_pem_path: settings.cert.clone(),
        client_key_pem_path: settings.key.clone(),
        ..TlsConfig::disabled()
    };
    Ok(ReplicationConfig::new(
        host,
        user,
        password,
        database,
        config.slot.clone(),
        config.publication.clone(),
    )
    .with_port(pg.get_ports().first().copied().unwrap_or(5432))
    .with_tls(tls)
    .with_options(SESSION_OPTIONS)
    .with_application_name(APPLICATION_NAME)
    .with_status_interval(STATUS_INTERVAL)
    .with_buffer_size(REPLICATION_BUFFER_EVENTS)
    .with_wakeup_interval(Duration::from_secs(1)))
}

/// The replication connection's `application_name`.
const APPLICATION_NAME: &str = "tidemark-bridge";

/// The `application_name` startup value that also sets `client_encoding=SQL_ASCII`.
///
/// In a `SQL_ASCII` database PostgreSQL checks the text it sends a UTF-8 client and the
/// walsender fails on the first value that is not UTF-8 (SQLSTATE 22021), on every
/// retry, so no later change of any table would reach Kafka. With a `SQL_ASCII`
/// client nothing is converted or checked, and the codec reads the bytes losslessly
/// (`tidemark_core::wire::codec::text_of`). `pgwire-replication` always sends
/// `client_encoding=UTF8` in the startup packet, after the `options` (where PostgreSQL
/// would let `-c client_encoding` be overridden) and before `application_name`, and
/// writes each value between NUL terminators as given: a value with an embedded
/// `client_encoding` pair is therefore read by the server as one more parameter, the
/// last `client_encoding`, which wins. The end-to-end test
/// `text_that_is_not_utf8_in_a_sql_ascii_database_does_not_stop_the_stream`
/// test pins this against the library's framing.
fn application_name(sql_ascii: bool) -> String {
    if sql_ascii {
        format!("{APPLICATION_NAME}\0client_encoding\0SQL_ASCII")
    } else {
        APPLICATION_NAME.to_owned()
    }
}

/// Starts streaming from the slot's confirmed position; `sql_ascii` when the database's
/// encoding is `SQL_ASCII` (see [`application_name`]).
pub async fn start(config: &Config, sql_ascii: bool) -> Result<ReplicationClient, BridgeError> {
    let cfg = replication_config(&config.postgres, config)?
        .with_application_name(application_name(sql_ascii));
    Ok(ReplicationClient::connect(cfg).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_translation() {
        let config = crate::config::Config {
            postgres: PgUrl::new("postgres://app:p%40ss@db.example:6432/shop?sslmode=verify-full&sslrootcert=/ca.pem"),
            kafka: "k".into(),
            tables: vec![],
            slot: "s".into(),
            publication: "p".into(),
            topic_prefix: "t".into(),
            partitions: 1,
            replication_factor: 1,
            min_compaction_lag_ms: 0,
            http: None,
            kafka_properties: Default::default(),
            topic_config: Default::default(),
            oversized_records: Default::default(),
            exactly_once: false,
            transaction_interval: std::time::Duration::from_millis(100),
            transactional_id: String::new(),
            heartbeat_interval: None,
            snapshot: Default::default(),
            snapshot_rows_per_second: 0,
            records: Default::default(),
        };
        let c = replication_config(&config.postgres, &config).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.user.as_str()),
            ("db.example", 6432, "app")
        );
        assert_eq!((c.password.as_str(), c.database.as_str()), ("p@ss", "shop"));
        assert_eq!(c.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            c.tls.ca_pem_path.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        let plain = replication_config(&PgUrl::new("postgres://h/db"), &config).unwrap();
        assert_eq!(plain.tls.mode, SslMode::Prefer, "libpq's default");
        let pinned = replication_config(
            &PgUrl::new("postgres://h/db?sslmode=require&sslrootcert=/ca.pem"),
            &config,
        )
        .unwrap();
        assert_eq!(
            pinned.tls.mode,
            SslMode::VerifyCa,
            "require with a root certificate checks the chain"
        );
        let require = replication_config(&PgUrl::new("postgres://h/db?sslmode=require"), &config);
        assert_eq!(require.unwrap().tls.mode, SslMode::Require);
        let defaults = replication_config(&PgUrl::new("postgres://@h"), &config).unwrap();
        assert_eq!(
            (
                defaults.user.as_str(),
                defaults.database.as_str(),
                defaults.port
            ),
            ("postgres", "postgres", 5432),
            "libpq's defaults: the database is named after the user"
        );
        let params = replication_config(
            &PgUrl::new("postgres:///shop?host=db.example&port=6432&user=app"),
            &config,
        )
        .unwrap();
        assert_eq!(
            (
                params.host.as_str(),
                params.port,
                params.user.as_str(),
                params.database.as_str()
            ),
            ("db.example", 6432, "app", "shop"),
            "the same query parameters as the SQL connection"
        );
        let socket =
            replication_config(&PgUrl::new("postgres:///db?host=/run/postgresql"), &config);
        assert!(socket.unwrap_err().to_string().contains("host=127.0.0.1"));
    }
}
