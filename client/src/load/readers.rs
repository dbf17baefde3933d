//! The parallel readers of a load: more connections that read the table in the load
//! transaction's own snapshot, each one range of its pages.
//!
//! The load transaction exports its snapshot (`pg_export_snapshot()`); each helper
//! connection begins a `REPEATABLE READ READ ONLY` transaction and imports it (`SET
//! TRANSACTION SNAPSHOT`), so every reader sees exactly the rows the load's snapshot
//! shows, and the snapshot, the insert LSN and everything the follower does with them
//! stay those of the load transaction. The table's pages are cut into equal ranges,
//! one per reader, read with `ctid` bounds, which PostgreSQL 14 and later execute as
//! TID range scans (each reader reads only its pages); the last range is open-ended,
//! so pages added while the load runs are covered (their rows are not in the snapshot
//! anyway). The load transaction's `ACCESS SHARE` lock keeps a rewriting `ALTER TABLE`
//! out until it ends, after every helper. A helper takes the same lock with `NOWAIT`
//! before reading, and its indexes' locks (by planning a query of the table, under a
//! 1 s `lock_timeout`): if a DDL statement is already queued for the table or an
//! index, a helper that waited for the lock would wait behind it, while the DDL waits
//! for the load transaction, which waits for the helper — a deadlock PostgreSQL
//! cannot see. Such a helper gives up instead, before any reading, and the others,
//! the load transaction included, read its pages.
//!
//! The load transaction takes its index locks (the same way) before any helper, so a
//! DDL statement that arrives during the load queues behind it: the helpers meet it
//! while joining and give up, and the load transaction's COPY never waits for it.
//!
//! One reader is used on a server older than 14, for a table that is not a plain one
//! (a partitioned parent has no pages of its own), and for a table too small to be
//! worth it. A helper that cannot connect or join leaves its pages to the others;
//! once joined, a helper's failure (its connection lost mid-COPY) fails the load, as
//! the load transaction's own would.

use tokio_postgres::{Client, Transaction};
use tracing::{info, warn};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::postgres::connect;
use crate::table::TableInfo;

/// With the reader count left to the cache, one reader per this many pages (64 MiB
/// of 8 KiB pages).
const PAGES_PER_READER: i64 = 8192;

/// At most this many readers, whatever the count asked for.
const MAX_READERS: usize = 8;

/// Whether the server and the table allow a parallel load, and the table's pages.
const PROBE_SQL: &str = "SELECT current_setting('server_version_num')::int >= 140000, \
    c.relkind::text, pg_relation_size(c.oid) / current_setting('block_size')::int8 \
    FROM pg_catalog.pg_class c WHERE c.oid = $1::text::regclass";

/// The helper connections of one load, each inside a transaction that imported the
/// load's snapshot.
pub(super) struct Helpers {
    clients: Vec<Client>,
    pages: i64,
}

impl Helpers {
    /// How many read: the load transaction and the helpers.
    pub fn readers(&self) -> usize {
        self.clients.len() + 1
    }

    /// The helper connections, in the order of [`Helpers::filters`] after the first.
    pub fn clients(&self) -> impl Iterator<Item = &Client> {
        self.clients.iter()
    }

    /// One `WHERE` clause per reader, the load transaction's first.
    pub fn filters(&self) -> Vec<String> {
        page_filters(self.pages, self.readers())
    }

    /// Ends the helpers' transactions.
    pub async fn close(self) {
        for client in self.clients {
            let _ = client.batch_execute("COMMIT").await;
        }
    }
}

/// Opens the helpers of the load transaction `txn` for `table`: as many as the
/// settings ask for and the server and table allow, minus those that cannot join.
pub(super) async fn open(
    txn: &Transaction<'_>,
    config: &Config,
    table: &TableInfo,
) -> Result<Helpers> {
    let single = |pages| Helpers {
        clients: Vec::new(),
        pages,
    };
    if config.parallel_load == Some(1) {
        return Ok(single(0));
    }
    let row = txn
        .query_one(PROBE_SQL, &[&table.name.quoted()])
        .await
        .map_err(Error::postgres("reading the table's size"))?;
    let (tid_ranges, kind, pages): (bool, String, i64) = (row.get(0), row.get(1), row.get(2));
    let wanted = match config.parallel_load {
        Some(n) if n > MAX_READERS => {
            warn!(table = %table.name, asked = n, readers = MAX_READERS, "parallel_load asks for more readers than the most a load uses");
            MAX_READERS
        }
        Some(n) => n,
        None => {
            // Every reader's rows are decoded here: half the cores read, half decode.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            ((pages / PAGES_PER_READER) as usize).clamp(1, (cores / 2).clamp(1, MAX_READERS))
        }
    };
    // No more readers than pages.
    let wanted = wanted.min(pages.max(1) as usize);
    if wanted <= 1 {
        return Ok(single(pages));
    }
    let cannot = if !tid_ranges {
        Some("the server is older than PostgreSQL 14, which has no TID range scans")
    } else if kind != "r" {
        Some("the table is not a plain table")
    } else {
        None
    };
    if let Some(why) = cannot {
        if config.parallel_load.is_some() {
            warn!(table = %table.name, readers = wanted, reason = why, "the load reads with one connection");
        } else {
            info!(table = %table.name, reason = why, "the load reads with one connection");
        }
        return Ok(single(pages));
    }
    // The load transaction locks the indexes first (as planning its COPY would), so a
    // DDL statement that comes later queues behind it, and a helper meets that DDL in
    // its own lock requests, which give up (below), never the load transaction.
    txn.batch_execute(&plan_sql(table))
        .await
        .map_err(Error::postgres("locking the table's indexes for the load"))?;
    let snapshot: String = txn
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(Error::postgres("exporting the load's snapshot"))?
        .get(0);
    // The EXPLAIN plans a query of the table, which locks its indexes as the COPY's
    // planning will, under a short lock_timeout: every lock the helper's COPY needs
    // is held before the load counts on it.
    let join = format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
         SET TRANSACTION SNAPSHOT '{snapshot}'; \
         LOCK TABLE ONLY {table} IN ACCESS SHARE MODE NOWAIT; \
         SET LOCAL lock_timeout = '1s'; {plan}; \
         SET LOCAL lock_timeout TO DEFAULT",
        snapshot = snapshot.replace('\'', "''"),
        table = table.name.quoted(),
        plan = plan_sql(table),
    );
    let joined = futures::future::join_all((1..wanted).map(|_| async {
        let client = connect(config).await?;
        client
            .batch_execute(&join)
            .await
            .map_err(Error::postgres("joining the load's snapshot"))?;
        Ok::<Client, Error>(client)
    }))
    .await;
    let mut clients = Vec::with_capacity(wanted - 1);
    for helper in joined {
        match helper {
            Ok(client) => clients.push(client),
            Err(e) => {
                warn!(table = %table.name, error = %e, "a parallel reader could not join the load; the others read its pages")
            }
        }
    }
    Ok(Helpers { clients, pages })
}

/// Plans (without running) a query of the table, which takes the locks on its
/// indexes that planning the load's COPY takes, until the transaction ends.
fn plan_sql(table: &TableInfo) -> String {
    format!(
        "EXPLAIN SELECT 1 FROM ONLY {} WHERE ctid >= '(0,0)'::tid",
        table.name.quoted()
    )
}

/// `readers` `WHERE` clauses that split a table of `pages` pages into ranges of
/// (nearly) equal page counts: the first without a lower bound, the last without an
/// upper one, so together they cover every row wherever it lies.
fn page_filters(pages: i64, readers: usize) -> Vec<String> {
    let k = readers.max(1) as i64;
    let bound = |i: i64| pages * i / k;
    (0..k)
        .map(|i| {
            let lower = (i > 0).then(|| format!("ctid >= '({},0)'::tid", bound(i)));
            let upper = (i < k - 1).then(|| format!("ctid < '({},0)'::tid", bound(i + 1)));
            match (lower, upper) {
                (None, None) => String::new(),
                (Some(l), None) => format!(" WHERE {l}"),
                (None, Some(u)) => format!(" WHERE {u}"),
                (Some(l), Some(u)) => format!(" WHERE {l} AND {u}"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::page_filters;

    #[test]
    fn ranges_cover_every_page_once() {
        assert_eq!(page_filters(100, 1), [""]);
        assert_eq!(
            page_filters(100, 3),
            [
                " WHERE ctid < '(33,0)'::tid",
                " WHERE ctid >= '(33,0)'::tid AND ctid < '(66,0)'::tid",
                " WHERE ctid >= '(66,0)'::tid",
            ]
        );
        // Fewer pages than readers: empty ranges, still covering everything.
        assert_eq!(
            page_filters(1, 2),
            [" WHERE ctid < '(0,0)'::tid", " WHERE ctid >= '(0,0)'::tid"]
        );
    }
}
