//! Checks the database and creates what the bridge needs, idempotently: the
//! publication for the configured tables and the logical replication slot.
//!
//! Every check that can fail for a reason the operator must fix (wal_level, a missing
//! table, a table without a primary key, a slot with another plugin) fails with a
//! [`BridgeError::Setup`] that names the problem and the fix. The catalog queries
//! the stream needs later (primary-key order, array element types) live here too.

use std::collections::HashMap;

use tidemark_core::pg::catalog::{PRIMARY_KEY_SQL, TYPE_INFO_SQL};
use tidemark_core::pg::{ConnectError, SettingsError};
use tidemark_core::wire::envelope::quote_ident;
use tidemark_core::wire::{TableName, ValueFormat, ValueKind};
use tokio_postgres::Client;
use tracing::info;

use crate::config::{Config, PgUrl};
use crate::error::BridgeError;

/// Opens an ordinary SQL connection with the URL's TLS settings (libpq's `sslmode`,
/// `sslrootcert`, `sslcert`, `sslkey`, as the replication connection reads them) and
/// the codec's session settings.
pub async fn connect(url: &PgUrl) -> Result<Client, BridgeError> {
    let options = url
        .options()
        .map_err(|e| bad_url(&e))?
        .with_session("tidemark-bridge");
    options.connect().await.map_err(|e| match e {
        ConnectError::Settings(e) => bad_url(&e),
        ConnectError::Postgres(source) => {
            BridgeError::postgres(format!("cannot connect to {url}"))(source)
        }
    })
}

/// A bad PostgreSQL setting: definite, the operator must change the URL or a file.
fn bad_url(e: &SettingsError) -> BridgeError {
    BridgeError::Config {
        field: "postgres",
        problem: e.to_string(),
    }
}

fn setup(problem: impl Into<String>, fix: impl Into<String>) -> BridgeError {
    BridgeError::Setup {
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Verifies the server and tables, then creates or extends the publication.
pub async fn prepare(client: &Client, config: &Config) -> Result<(), BridgeError> {
    let level: String = client
        .query_one("SELECT current_setting('wal_level')", &[])
        .await
        .map_err(BridgeError::postgres("reading wal_level"))?
        .get(0);
    if level != "logical" {
        return Err(setup(
            format!("PostgreSQL runs with wal_level={level}, and logical replication needs wal_level=logical"),
            "run ALTER SYSTEM SET wal_level = 'logical' and restart PostgreSQL",
        ));
    }
    for table in &config.tables {
        check_table(client, table).await?;
    }
    ensure_publication(client, config).await
}

async fn check_table(client: &Client, table: &TableName) -> Result<(), BridgeError> {
    let row = client
        .query_one("SELECT to_regclass($1)::oid", &[&table.quoted()])
        .await
        .map_err(BridgeError::postgres(format!("looking up table {table}")))?;
    let Some(oid) = row.get::<_, Option<u32>>(0) else {
        return Err(setup(
            format!("table {table} does not exist"),
            "create it, or correct --tables (names are schema.table, case-sensitive as in the catalog)",
        ));
    };
    if primary_key(client, oid).await?.is_empty() {
        return Err(setup(
            format!("table {table} has no primary key, so its changes cannot be keyed"),
            format!(
                "add one: ALTER TABLE {} ADD PRIMARY KEY (...)",
                table.quoted()
            ),
        ));
    }
    check_shape(client, table, oid).await
}

/// Refuses tables whose changes the bridge and the caches cannot mirror exactly.
///
/// * A partitioned table: its rows live in the partitions, and pgoutput sends their
///   changes under the partitions' names unless the publication publishes via the
///   root. Each partition can be followed as a table of its own.
/// * Replica identity `NOTHING`: adding the table to a publication that publishes
///   updates and deletes would make the application's UPDATE and DELETE fail.
/// * Replica identity `USING INDEX` on an index other than the primary key: records are
///   keyed by the primary key, and the old tuple would carry the index's columns.
async fn check_shape(client: &Client, table: &TableName, oid: u32) -> Result<(), BridgeError> {
    let row = client
        .query_one(
            "SELECT c.relkind::text, c.relreplident::text, \
                    COALESCE((SELECT i.indisprimary FROM pg_catalog.pg_index i \
                              WHERE i.indrelid = c.oid AND i.indisreplident), false) \
             FROM pg_catalog.pg_class c WHERE c.oid = $1",
            &[&oid],
        )
        .await
        .map_err(BridgeError::postgres(format!(
            "reading the shape of {table}"
        )))?;
    let (kind, identity, index_is_pk): (String, String, bool) =
        (row.get(0), row.get(1), row.get(2));
    let quoted = table.quoted();
    if kind == "p" {
        return Err(setup(
            format!("table {table} is partitioned; its rows and changes belong to its partitions"),
            "list the partitions in --tables (each gets its own topic and can be cached as a table)",
        ));
    }
    match identity.as_str() {
        "n" => Err(setup(
            format!("table {table} has REPLICA IDENTITY NOTHING; publishing it would make every UPDATE and DELETE on it fail"),
            format!("ALTER TABLE {quoted} REPLICA IDENTITY DEFAULT"),
        )),
        "i" if !index_is_pk => Err(setup(
            format!("table {table} has a replica identity index that is not its primary key; records are keyed by the primary key"),
            format!("ALTER TABLE {quoted} REPLICA IDENTITY DEFAULT"),
        )),
        _ => Ok(()),
    }
}

/// Refuses an existing publication that would hide changes of `tables`: one that does
/// not publish every operation, or (PostgreSQL 15 and later) publishes a table with a
/// row filter or a column list.
async fn check_publication(
    client: &Client,
    name: &str,
    tables: &[TableName],
) -> Result<(), BridgeError> {
    let row = client
        .query_one(
            "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate, \
                    current_setting('server_version_num')::int >= 150000, pubviaroot \
             FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(BridgeError::postgres("reading the publication's settings"))?;
    let (all_ops, has_filters, via_root): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if via_root {
        for t in tables {
            let partition: Option<bool> = client
                .query_one(
                    "SELECT relispartition FROM pg_catalog.pg_class WHERE oid = to_regclass($1)",
                    &[&t.quoted()],
                )
                .await
                .map_err(BridgeError::postgres(
                    "reading whether a table is a partition",
                ))?
                .get(0);
            if partition == Some(true) {
                return Err(setup(
                    format!("publication {name} publishes via the partition root, so the changes of partition {t} would arrive under its root's name"),
                    format!("ALTER PUBLICATION {} SET (publish_via_partition_root = false), or use another --publication", quote_ident(name)),
                ));
            }
        }
    }
    if !all_ops {
        return Err(setup(
            format!("publication {name} does not publish every operation, so some changes would never reach Kafka"),
            format!("ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate'), or use another --publication", quote_ident(name)),
        ));
    }
    if !has_filters {
        return Ok(());
    }
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_publication_rel pr \
             JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid \
             JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE p.pubname = $1 AND (pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL)",
            &[&name],
        )
        .await
        .map_err(BridgeError::postgres(
            "reading the publication's row filters and column lists",
        ))?;
    for r in rows {
        let t = TableName {
            schema: r.get(0),
            table: r.get(1),
        };
        if tables.contains(&t) {
            return Err(setup(
                format!("publication {name} publishes {t} with a row filter or a column list, so the topic would not mirror the table"),
                format!("publish the whole table (ALTER PUBLICATION {} SET TABLE ...), or use another --publication", quote_ident(name)),
            ));
        }
    }
    Ok(())
}

async fn ensure_publication(client: &Client, config: &Config) -> Result<(), BridgeError> {
    let name = &config.publication;
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[name])
        .await
        .map_err(BridgeError::postgres("looking up the publication"))?
        .is_some();
    // ONLY: without it, a table's inheritance children join the publication too, and
    // an UPDATE or DELETE on a child without a replica identity starts to fail.
    let list = |tables: &[&TableName]| {
        tables
            .iter()
            .map(|t| format!("ONLY {}", t.quoted()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !exists {
        let tables: Vec<&TableName> = config.tables.iter().collect();
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            quote_ident(name),
            list(&tables)
        );
        client
            .batch_execute(&sql)
            .await
            .map_err(BridgeError::postgres(format!(
                "creating publication {name}"
            )))?;
        info!(publication = %name, tables = %list(&tables), "created publication");
        return Ok(());
    }
    check_publication(client, name, &config.tables).await?;
    let rows = client
        .query(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1",
            &[name],
        )
        .await
        .map_err(BridgeError::postgres("listing the publication's tables"))?;
    let published: Vec<TableName> = rows
        .iter()
        .map(|r| TableName {
            schema: r.get(0),
            table: r.get(1),
        })
        .collect();
    let missing: Vec<&TableName> = config
        .tables
        .iter()
        .filter(|t| !published.contains(t))
        .collect();
    if !missing.is_empty() {
        let sql = format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            quote_ident(name),
            list(&missing)
        );
        client.batch_execute(&sql).await.map_err(|e| match e.as_db_error() {
            Some(db) => setup(
                format!("publication {name} lacks {} and cannot be extended: {}", list(&missing), db.message()),
                format!("add the tables yourself (ALTER PUBLICATION {name} ADD TABLE ...) or use another --publication"),
            ),
            None => BridgeError::postgres("extending the publication")(e),
        })?;
        info!(publication = %name, tables = %list(&missing), "added tables to publication");
    }
    Ok(())
}

/// The error for a slot whose WAL PostgreSQL removed (`wal_status = lost`), with the fix.
pub fn slot_lost(slot: &str) -> BridgeError {
    setup(
        format!("replication slot {slot} was invalidated (wal_status = lost): PostgreSQL removed WAL it still needed, so changes since its last position can no longer be read"),
        format!("drop it (SELECT pg_drop_replication_slot('{slot}')) and start the bridge again: it creates a new slot and marks the topics, so caches warm-start again; consider a larger max_slot_wal_keep_size"),
    )
}

/// Checks the slot, or creates it; returns the new slot's start LSN when it created it.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<Option<u64>, BridgeError> {
    let row = client
        .query_opt(
            "SELECT plugin, slot_type, wal_status = 'lost' FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(BridgeError::postgres("looking up the replication slot"))?;
    match row {
        Some(r) => {
            let (plugin, kind): (Option<String>, String) = (r.get(0), r.get(1));
            if r.get::<_, Option<bool>>(2) == Some(true) {
                return Err(slot_lost(slot));
            }
            if kind != "logical" || plugin.as_deref() != Some("pgoutput") {
                return Err(setup(
                    format!("replication slot {slot} exists but is {kind} with plugin {plugin:?}, not logical pgoutput"),
                    "use another --slot, or drop that slot if nothing else uses it",
                ));
            }
        }
        None => {
            let lsn: i64 = client
                .query_one(
                    "SELECT (lsn - '0/0')::int8 FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&slot],
                )
                .await
                .map_err(BridgeError::postgres(format!(
                    "creating replication slot {slot}"
                )))?
                .get(0);
            info!(slot, "created replication slot");
            return Ok(Some(lsn as u64));
        }
    }
    Ok(None)
}

/// Drops `slot` (a slot this session created and could not mark).
pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), BridgeError> {
    // A slot already gone counts as dropped (an earlier attempt that timed out may
    // have completed).
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(BridgeError::postgres(format!(
            "dropping replication slot {slot}"
        )))?;
    Ok(())
}

/// The slot's confirmed flush LSN.
pub async fn confirmed_flush_lsn(client: &Client, slot: &str) -> Result<Option<u64>, BridgeError> {
    let row = client
        .query_opt(
            "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(BridgeError::postgres("reading the slot's confirmed_flush_lsn"))?;
    Ok(row
        .and_then(|r| r.get::<_, Option<i64>>(0))
        .map(|v| v as u64))
}

/// Moves the slot's confirmed flush LSN forward to `lsn` once the stream has let go of
/// the slot; used on shutdown so the last confirmation does not wait for a status
/// update. Retries while the walsender still holds the slot.
pub async fn advance_slot(client: &Client, slot: &str, lsn: u64) -> Result<(), BridgeError> {
    if confirmed_flush_lsn(client, slot)
        .await?
        .is_some_and(|c| c >= lsn)
    {
        return Ok(());
    }
    let target = format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff);
    let mut attempt = 0;
    loop {
        match client
            .execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&slot, &target],
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e)
                if attempt < 50
                    && e.as_db_error()
                        .is_some_and(|d| d.message().contains("is active")) =>
            {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(BridgeError::postgres(format!(
                    "advancing slot {slot} to {target}"
                ))(e))
            }
        }
    }
}

/// The primary-key column names of a table, in key order.
pub async fn primary_key(client: &Client, rel: u32) -> Result<Vec<String>, BridgeError> {
    let rows = client
        .query(PRIMARY_KEY_SQL, &[&rel])
        .await
        .map_err(BridgeError::postgres("reading the primary key"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Resolves type OIDs to codec kinds, caching what the catalog said of each type.
#[derive(Default)]
pub struct TypeCache(HashMap<u32, (u32, u32, String)>);

impl TypeCache {
    /// The kinds in `format` of columns of the given `(type oid, typmod)`, querying
    /// the catalog for the types not seen yet.
    pub async fn kinds(
        &mut self,
        client: &Client,
        types: &[(u32, i32)],
        format: &ValueFormat,
    ) -> Result<Vec<ValueKind>, BridgeError> {
        let unknown: Vec<u32> = types
            .iter()
            .map(|&(oid, _)| oid)
            .filter(|o| !self.0.contains_key(o))
            .collect();
        if !unknown.is_empty() {
            for row in client
                .query(TYPE_INFO_SQL, &[&unknown])
                .await
                .map_err(BridgeError::postgres("resolving column types"))?
            {
                let (oid, base, elem, name): (u32, Option<u32>, u32, Option<String>) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                self.0
                    .insert(oid, (base.unwrap_or(oid), elem, name.unwrap_or_default()));
            }
        }
        Ok(types
            .iter()
            .map(|&(oid, typmod)| match self.0.get(&oid) {
                Some((base, elem, name)) => {
                    ValueKind::for_format(format, *base, *elem, typmod, name)
                }
                None => ValueKind::Text,
            })
            .collect())
    }
}
