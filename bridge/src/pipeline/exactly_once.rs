//! Exactly-once delivery (`--exactly-once`): Kafka transactions over PostgreSQL ones.
//!
//! The producer is transactional. The records of whole PostgreSQL transactions are
//! grouped into one Kafka transaction, which commits once it is
//! `--transaction-interval-ms` old, holds [`MAX_RECORDS`] records, or the session
//! stops, and only between PostgreSQL transactions. Each Kafka transaction also
//! writes the bridge's [`Position`] to the state topic (`sink::state`, kind
//! [`KIND`]): the end LSN of the last PostgreSQL transaction inside it. The position
//! and the records become visible to `read_committed` readers together, or neither
//! does.
//!
//! **Long PostgreSQL transactions.** The broker aborts a Kafka transaction that stays
//! open longer than `transaction.timeout.ms`, so a PostgreSQL transaction whose
//! records take longer than that to produce (a large `COPY`, a bulk `UPDATE`) could
//! never be written whole: every session would fail on it again. Once the open Kafka
//! transaction's first record is [`split_after`] old (a third of the timeout, leaving
//! the rest for delivery and the commit), it is committed at the next boundary
//! between two changes, even inside a PostgreSQL transaction, and the position then
//! also names that transaction and how many of its changes are in Kafka
//! ([`Partial`]). Logical decoding sends a committed transaction's changes in the
//! same order every time (the replication connection does not ask for in-progress
//! transactions to be streamed: `pgwire-replication` starts pgoutput with
//! `proto_version '1'` and no `streaming` option), so a session that starts from such
//! a position decodes the transaction again and skips that many changes, still
//! numbering them, so `source.sequence` and the transaction metadata come out as in
//! one pass. A `read_committed` reader then sees such a transaction in parts, but
//! every change of it exactly once. Transactions that take less than a third of the
//! timeout stay whole as long as `--transaction-interval-ms` is well below that too.
//! The initial snapshot commits a long table's rows in parts the same way, but it
//! does not resume inside a table (`pipeline::snapshot`).
//!
//! Only after the commit succeeds may the slot be confirmed to that position, so the
//! slot's confirmed LSN never passes the stored one. A session starts from the slot,
//! reads the stored position (read_committed, after `init_transactions` has ended any
//! transaction a previous producer left open) and skips every PostgreSQL transaction
//! whose commit ends at or below it: its records are committed already. So a crash
//! anywhere, before, during or after a Kafka commit, writes nothing twice that a
//! `read_committed` reader sees, and an aborted transaction leaves no gap: its
//! records are invisible and the next session writes them again.
//!
//! **Slot incarnations.** The position counts only for the slot it was written
//! for. It stores the LSN at which that slot was created (its consistent point);
//! when the bridge creates the slot, the new slot's markers and a fresh position go
//! in one transaction. A position is ignored when the slot cannot be the one it
//! belongs to: when the slot's confirmed LSN is below the stored creation LSN (a slot
//! created again, e.g. on a restored server with an older WAL history) or above the
//! position (something other than this mode moved the slot; every transaction the
//! slot still sends is then above the position anyway).
//!
//! **Idle slot.** Keepalives carry the server's WAL end; while no change arrives, a
//! transaction holding only a new position moves the stored position there, at
//! most every [`IDLE_POSITION_INTERVAL`], so the slot can be confirmed and release
//! WAL without ever passing the stored position.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgwire_replication::Lsn;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::frontier::Frontier;
use super::lock;
use crate::config::Config;
use crate::error::BridgeError;
use crate::sink::{state, Sink};

/// The state kind of the position document.
pub const KIND: &str = "position";

/// The most records one Kafka transaction collects before it commits (at the next
/// boundary between PostgreSQL transactions).
pub const MAX_RECORDS: u64 = 50_000;

/// How often, at most, an idle bridge stores a keepalive's WAL position.
pub const IDLE_POSITION_INTERVAL: Duration = Duration::from_secs(10);

/// How long a Kafka transaction may stay open before it is committed even in the
/// middle of a PostgreSQL transaction or a table's snapshot: a third of
/// `transaction.timeout.ms`, leaving the rest for delivering its records and
/// committing.
pub fn split_after(config: &Config) -> Duration {
    crate::sink::producer::transaction_timeout(config) / 3
}

/// The stored position: everything up to `lsn` is committed in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The end LSN of the last PostgreSQL transaction whose records are committed
    /// (or a WAL position that no change of the published tables lies below).
    pub lsn: u64,
    /// The LSN at which the slot this position belongs to was created (its
    /// consistent point), or the lowest LSN it was seen at.
    pub slot_lsn: u64,
    /// The first changes of the PostgreSQL transaction after `lsn`, when a Kafka
    /// transaction committed in the middle of it (see the module doc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Partial>,
}

/// How far a PostgreSQL transaction is committed in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// The LSN of the transaction's commit record (pgoutput's `final_lsn` of BEGIN).
    pub final_lsn: u64,
    /// The transaction's id.
    pub xid: u32,
    /// How many of its changes (inserts, updates, deletes, truncates, in the order
    /// decoding sends them) are committed.
    pub changes: u64,
}

/// The position that applies to the slot found at session start: `stored` when it
/// can belong to this slot, whose confirmed LSN is `slot_confirmed` and which this
/// session created at `created`, if it did; see the module doc.
pub fn applicable(stored: Option<Position>, slot_confirmed: u64, created: Option<u64>) -> Position {
    if let Some(lsn) = created {
        return Position {
            lsn,
            slot_lsn: lsn,
            partial: None,
        };
    }
    match stored {
        Some(p) if p.slot_lsn <= slot_confirmed && p.lsn >= slot_confirmed => p,
        Some(p) => {
            warn!(
                stored = %Lsn(p.lsn),
                stored_slot_created = %Lsn(p.slot_lsn),
                slot_confirmed = %Lsn(slot_confirmed),
                "the stored exactly-once position does not belong to this slot (created again, or moved by a bridge without --exactly-once); starting from the slot's position"
            );
            Position {
                lsn: slot_confirmed,
                slot_lsn: if p.slot_lsn <= slot_confirmed {
                    p.slot_lsn
                } else {
                    slot_confirmed
                },
                partial: None,
            }
        }
        None => Position {
            lsn: slot_confirmed,
            slot_lsn: slot_confirmed,
            partial: None,
        },
    }
}

/// Reads the stored position of `config.slot` (read_committed). Call after
/// [`Sink::init_transactions`], which settles what a previous producer left open.
pub async fn load(config: &Config) -> Result<Option<Position>, BridgeError> {
    state::ensure_topic(config).await?;
    let key = state::key(&config.slot, KIND);
    tokio::task::block_in_place(|| state::load::<Position>(config, &key))
}

/// The Kafka transaction in progress and the committed position; see the module doc.
#[derive(Debug)]
pub struct Transactions {
    interval: Duration,
    split_after: Duration,
    committed: Position,
    /// The PostgreSQL transaction being read, with its changes read so far.
    current: Option<Partial>,
    /// The position the open transaction will store.
    pending: u64,
    /// The stored position's partial transaction until this session has decoded it
    /// again and skipped its committed changes: while `current` is that transaction,
    /// its changes up to `resume_at.changes` are skipped.
    resume_at: Option<Partial>,
    /// When the open Kafka transaction began, and its records so far.
    open: Option<(Instant, u64)>,
    /// When the open Kafka transaction got its first record.
    first_record: Option<Instant>,
    last_commit: Instant,
    /// PostgreSQL transactions skipped because they were committed already.
    skipped: u64,
}

impl Transactions {
    /// Starts from the stored `position`.
    pub fn new(config: &Config, position: Position) -> Self {
        Transactions {
            interval: config.transaction_interval,
            split_after: split_after(config),
            committed: position,
            current: None,
            resume_at: position.partial,
            pending: position.lsn,
            open: None,
            first_record: None,
            last_commit: Instant::now(),
            skipped: 0,
        }
    }

    /// The committed position: the LSN the slot may be confirmed to.
    pub fn committed(&self) -> u64 {
        self.committed.lsn
    }

    /// Whether the PostgreSQL transaction whose commit record starts at `final_lsn`
    /// is committed in Kafka already: its commit then ends at or below the position.
    pub fn skip(&mut self, final_lsn: u64) -> bool {
        let skip = final_lsn < self.committed.lsn;
        if skip {
            self.skipped += 1;
            metrics::counter!(crate::telemetry::SKIPPED_TRANSACTIONS).increment(1);
        }
        skip
    }

    /// PostgreSQL transactions skipped so far in this session.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Opens a Kafka transaction unless one is open.
    pub fn ensure_open(&mut self, sink: &Sink) -> Result<(), BridgeError> {
        if self.open.is_none() {
            sink.begin_transaction()?;
            self.open = Some((Instant::now(), 0));
        }
        Ok(())
    }

    /// Counts one record produced in the open transaction.
    pub fn produced(&mut self) {
        if let Some((_, n)) = &mut self.open {
            *n += 1;
            self.first_record.get_or_insert_with(Instant::now);
        }
    }

    /// The PostgreSQL transaction `xid` whose commit record is at `final_lsn` begins
    /// (one that [`Transactions::skip`] did not skip).
    pub fn pg_begin(&mut self, final_lsn: u64, xid: u32) {
        match self.resume_at {
            Some(p) if p.final_lsn == final_lsn && p.xid == xid && p.changes > 0 => {
                info!(commit = %Lsn(final_lsn), xid, changes = p.changes, "resuming inside PostgreSQL transaction: its first changes are committed in Kafka already");
            }
            Some(p) if final_lsn >= p.final_lsn => self.resume_at = None,
            _ => {}
        }
        self.current = Some(Partial {
            final_lsn,
            xid,
            changes: 0,
        });
    }

    /// Counts one change of the PostgreSQL transaction being read; false when its
    /// records are committed in Kafka already and must not be written again.
    pub fn change(&mut self) -> bool {
        let Some(current) = &mut self.current else {
            return true;
        };
        current.changes += 1;
        match self.resume_at {
            Some(p) if p.final_lsn == current.final_lsn && p.xid == current.xid => {
                if current.changes == p.changes {
                    self.resume_at = None;
                }
                false
            }
            _ => true,
        }
    }

    /// A PostgreSQL transaction whose records are all in the open Kafka transaction
    /// ended at `end_lsn`.
    pub fn pg_committed(&mut self, end_lsn: u64) {
        self.pending = self.pending.max(end_lsn);
        self.current = None;
        if self.resume_at.is_some_and(|p| end_lsn > p.final_lsn) {
            self.resume_at = None;
        }
    }

    /// Whether the open Kafka transaction's first record is old enough for it to be
    /// committed in the middle of a PostgreSQL transaction ([`split_after`]).
    pub fn split_due(&self) -> bool {
        self.first_record
            .is_some_and(|first| first.elapsed() >= self.split_after)
    }

    /// Commits the open Kafka transaction between two changes of a PostgreSQL
    /// transaction (see the module doc) and opens the next.
    pub async fn split(
        &mut self,
        config: &Config,
        sink: &Sink,
        frontier: &Mutex<Frontier>,
        now_ms: i64,
    ) -> Result<(), BridgeError> {
        self.commit(config, sink, frontier, now_ms).await?;
        if let Some(p) = self.committed.partial {
            info!(commit = %Lsn(p.final_lsn), changes = p.changes, after = ?self.split_after, "committed part of a PostgreSQL transaction in Kafka: its records take longer to produce than a third of transaction.timeout.ms");
        }
        self.ensure_open(sink)
    }

    /// A keepalive while no PostgreSQL transaction is open: every change of the
    /// published tables below `wal_end` has been read.
    pub fn idle(&mut self, wal_end: u64) {
        // Never past a partial transaction still to be decoded again: it would be
        // skipped whole.
        let wal_end = self.resume_at.map_or(wal_end, |p| wal_end.min(p.final_lsn));
        self.pending = self.pending.max(wal_end);
    }

    /// Whether [`Transactions::commit`] has something to do now; `stopping` commits
    /// whatever is open.
    pub fn due(&self, stopping: bool) -> bool {
        match self.open {
            Some((since, records)) => {
                stopping || since.elapsed() >= self.interval || records >= MAX_RECORDS
            }
            None => {
                self.pending > self.committed.lsn
                    && (stopping || self.last_commit.elapsed() >= IDLE_POSITION_INTERVAL)
            }
        }
    }

    /// Writes the pending position into the open transaction (opening one if needed)
    /// and commits it. Call between PostgreSQL transactions, or between two changes of
    /// one through [`Transactions::split`]. Returns the new committed position.
    pub async fn commit(
        &mut self,
        config: &Config,
        sink: &Sink,
        frontier: &Mutex<Frontier>,
        now_ms: i64,
    ) -> Result<u64, BridgeError> {
        self.ensure_open(sink)?;
        let position = Position {
            lsn: self.pending,
            slot_lsn: self.committed.slot_lsn,
            // A partial transaction not yet decoded again stays stored as it is.
            partial: self.resume_at.or(self.current.filter(|c| c.changes > 0)),
        };
        let record = state::record(config, state::key(&config.slot, KIND), &position, now_ms)?;
        let id = lock(frontier).begin(now_ms);
        sink.send(id, &record).await?;
        lock(frontier).commit(id, position.lsn);
        sink.commit_transaction()?;
        if let Some(e) = sink.failure() {
            return Err(e);
        }
        self.open = None;
        self.first_record = None;
        self.last_commit = Instant::now();
        debug_assert!(
            position.lsn >= self.committed.lsn,
            "the position moves forward"
        );
        self.committed = position;
        metrics::counter!(crate::telemetry::KAFKA_TRANSACTIONS).increment(1);
        Ok(position.lsn)
    }

    /// Aborts the open transaction, if any (a stop in the middle of a PostgreSQL
    /// transaction): its records never become visible, and the next session writes
    /// them again from the committed position.
    pub fn abort(&mut self, sink: &Sink) -> Result<(), BridgeError> {
        self.first_record = None;
        if self.open.take().is_some() {
            info!(committed = %Lsn(self.committed.lsn), "aborting the open Kafka transaction: it holds part of a PostgreSQL transaction");
            sink.abort_transaction()?;
        }
        self.pending = self.committed.lsn;
        Ok(())
    }

    /// The position record written with a new slot's markers (the session then
    /// commits that transaction itself).
    pub fn new_slot_record(
        &self,
        config: &Config,
        now_ms: i64,
    ) -> Result<crate::sink::Record, BridgeError> {
        state::record(
            config,
            state::key(&config.slot, KIND),
            &self.committed,
            now_ms,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_counts_only_for_its_slot() {
        let p = Position {
            lsn: 500,
            slot_lsn: 100,
            partial: None,
        };
        assert_eq!(
            applicable(Some(p), 400, None),
            p,
            "the slot lags the position"
        );
        assert_eq!(applicable(Some(p), 500, None), p);
        assert_eq!(
            applicable(Some(p), 50, None),
            Position {
                lsn: 50,
                slot_lsn: 50,
                partial: None,
            },
            "a slot below the position's creation LSN is another slot"
        );
        assert_eq!(
            applicable(Some(p), 600, None),
            Position {
                lsn: 600,
                slot_lsn: 100,
                partial: None,
            },
            "a slot beyond the position: nothing it sends lies below it"
        );
        assert_eq!(
            applicable(Some(p), 400, Some(700)),
            Position {
                lsn: 700,
                slot_lsn: 700,
                partial: None,
            },
            "a slot created now starts a new history"
        );
        assert_eq!(
            applicable(None, 400, None),
            Position {
                lsn: 400,
                slot_lsn: 400,
                partial: None,
            }
        );
    }

    fn eos_config() -> Config {
        use clap::Parser;
        let cli = crate::config::Cli::parse_from([
            "tidemark-bridge",
            "--postgres",
            "postgres://h/db",
            "--tables",
            "public.t",
            "--exactly-once",
        ]);
        Config::from_cli(cli).expect("valid settings")
    }

    #[test]
    fn a_partial_position_skips_the_committed_changes_of_its_transaction_only() {
        let config = eos_config();
        let partial = Partial {
            final_lsn: 300,
            xid: 7,
            changes: 2,
        };
        let stored = Position {
            lsn: 100,
            slot_lsn: 50,
            partial: Some(partial),
        };
        let mut t = Transactions::new(&config, applicable(Some(stored), 100, None));
        // An idle keepalive before the transaction is decoded again does not move the
        // position past it.
        t.idle(400);
        assert_eq!(t.pending, 300);
        assert!(!t.skip(200), "a later transaction is not committed");
        t.pg_begin(200, 6);
        assert!(t.change(), "another transaction resumes nothing");
        t.pg_committed(250);
        assert_eq!(
            t.resume_at,
            Some(partial),
            "an earlier transaction leaves the partial one to resume"
        );
        assert!(!t.skip(300));
        t.pg_begin(300, 7);
        assert!(!t.change());
        assert_eq!(
            t.resume_at,
            Some(partial),
            "kept while its changes are skipped"
        );
        let written: Vec<bool> = (0..3).map(|_| t.change()).collect();
        assert_eq!(written, [false, true, true]);
        assert_eq!(t.resume_at, None);
        assert_eq!(
            t.current,
            Some(Partial {
                final_lsn: 300,
                xid: 7,
                changes: 4
            }),
            "skipped changes count toward the next partial position"
        );
        t.pg_committed(350);
        assert_eq!(t.current, None);
    }

    #[test]
    fn a_partial_position_of_another_transaction_id_resumes_nothing() {
        let config = eos_config();
        let stored = Position {
            lsn: 100,
            slot_lsn: 50,
            partial: Some(Partial {
                final_lsn: 300,
                xid: 7,
                changes: 2,
            }),
        };
        let mut t = Transactions::new(&config, applicable(Some(stored), 100, None));
        t.pg_begin(300, 8);
        assert!(t.change());
        assert_eq!(t.resume_at, None);
    }
}
