//! Connections to PostgreSQL, each with the session settings the cache's reads need.

use tokio_postgres::Client;

use crate::config::Config;
use crate::error::{Error, Result};
use tidemark_core::pg::ConnectError;

/// Connects to PostgreSQL with the URL's TLS settings and the codec's session options.
///
/// In a `SQL_ASCII` database the session's client encoding becomes `SQL_ASCII` too:
/// PostgreSQL checks text it sends from such a database against a UTF-8 client's
/// encoding and fails the whole `COPY` on the first byte that is not UTF-8, while with
/// no conversion it sends the bytes as stored, which the codec reads losslessly
/// (`tidemark_core::wire::codec::text_of`).
pub(crate) async fn connect(config: &Config) -> Result<Client> {
    let client = config.postgres.connect().await.map_err(|e| match e {
        ConnectError::Settings(e) => Error::Config {
            field: "postgres",
            problem: e.to_string(),
        },
        ConnectError::Postgres(source) => Error::PostgresUnreachable {
            target: config.postgres_target.clone(),
            source,
        },
    })?;
    client
        .batch_execute(tidemark_core::pg::MATCH_SQL_ASCII_SQL)
        .await
        .map_err(Error::postgres(
            "matching the client encoding to a SQL_ASCII database",
        ))?;
    Ok(client)
}
