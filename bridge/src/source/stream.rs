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
use tidemark_core::wire::SESSION_OPTIONS;

use crate::config::{Config, PgUrl};
use crate::error::BridgeError;

/// How often the library sends a status update while the applied LSN moves.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

fn bad_url(problem: impl Into<String>) -> BridgeError {
    BridgeError::Config {
        field: "postgres",
        problem: problem.into(),
    }
}

/// Translates a `postgres://` URL (with `sslmode` and `sslrootcert` query parameters)
/// into the replication client's settings.
pub fn replication_config(url: &PgUrl, config: &Config) -> Result<ReplicationConfig, BridgeError> {
    let u = url::Url::parse(url.expose()).map_err(|e| bad_url(format!("not a URL: {e}")))?;
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = if u.username().is_empty() {
        "postgres".to_owned()
    } else {
        decode(u.username())
    };
    let password = u.password().map(decode).unwrap_or_default();
    let database = match u.path().trim_start_matches('/') {
        "" => user.clone(),
        db => decode(db),
    };
    // libpq's defaults and meanings, as the SQL connections use them
    // (`tidemark_core::pg`): `prefer` when no sslmode is given, and `require`
    // with a root certificate checks the chain like `verify-ca`.
    let mut tls = TlsConfig {
        mode: SslMode::Prefer,
        ..TlsConfig::disabled()
    };
    for (key, value) in u.query_pairs() {
        match key.as_ref() {
            "sslmode" => {
                tls.mode = match value.as_ref() {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => return Err(bad_url(format!("unknown sslmode {other:?}"))),
                }
            }
            "sslrootcert" => tls.ca_pem_path = Some(value.as_ref().into()),
            "sslcert" => tls.client_cert_pem_path = Some(value.as_ref().into()),
            "sslkey" => tls.client_key_pem_path = Some(value.as_ref().into()),
            _ => {}
        }
    }
    if tls.mode == SslMode::Require && tls.ca_pem_path.is_some() {
        tls.mode = SslMode::VerifyCa;
    }
    let host = u
        .host_str()
        .unwrap_or("localhost")
        .trim_matches(['[', ']'])
        .to_owned();
    Ok(ReplicationConfig::new(
        host,
        user,
        password,
        database,
        config.slot.clone(),
        config.publication.clone(),
    )
    .with_port(u.port().unwrap_or(5432))
    .with_tls(tls)
    .with_options(SESSION_OPTIONS)
    .with_application_name("tidemark-bridge")
    .with_status_interval(STATUS_INTERVAL)
    .with_wakeup_interval(Duration::from_secs(1)))
}

/// Starts streaming from the slot's confirmed position.
pub async fn start(config: &Config) -> Result<ReplicationClient, BridgeError> {
    let cfg = replication_config(&config.postgres, config)?;
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
            http: None,
            kafka_properties: Default::default(),
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
    }
}
