//! The acknowledgement frontier: the one LSN the bridge may confirm to the slot.
//!
//! Transactions enter in commit order, each with the records produced for it. Kafka
//! acknowledges records in any order across partitions. The frontier moves to a
//! transaction's end LSN only when that transaction is complete (its Commit was seen)
//! and every record of it *and of every earlier transaction* has been acknowledged:
//! the confirmed position covers a gap-free run of delivered changes. It never moves
//! backwards. When nothing is in flight, a server keepalive's WAL position may be
//! confirmed too ([`Frontier::confirm_idle`]), so a slot whose tables are idle does
//! not hold WAL.

use std::collections::VecDeque;

use rdkafka::error::KafkaError;

/// A transaction in flight.
#[derive(Debug)]
struct Txn {
    /// Records produced but not yet acknowledged.
    pending: u64,
    /// The end LSN of the commit record; `None` while the transaction is still arriving.
    end_lsn: Option<u64>,
    /// Commit time, milliseconds since the epoch.
    commit_ms: i64,
}

/// In-flight transactions and the confirmed LSN; see the module doc.
#[derive(Debug, Default)]
pub struct Frontier {
    /// Id of `txns[0]`; ids are assigned in commit order and never reused.
    base: u64,
    txns: VecDeque<Txn>,
    confirmed: u64,
    /// Commit time of the last transaction the frontier moved over.
    confirmed_commit_ms: i64,
    in_flight: u64,
    /// Records acknowledged since the session began.
    acknowledged: u64,
    failed: Option<KafkaError>,
}

impl Frontier {
    /// A frontier that starts at `confirmed`.
    pub fn new(confirmed: u64) -> Self {
        Frontier {
            confirmed,
            ..Default::default()
        }
    }

    /// Opens the next transaction, committed at `commit_ms`, and returns its id.
    pub fn begin(&mut self, commit_ms: i64) -> u64 {
        self.txns.push_back(Txn {
            pending: 0,
            end_lsn: None,
            commit_ms,
        });
        self.base + self.txns.len() as u64 - 1
    }

    fn txn(&mut self, id: u64) -> Option<&mut Txn> {
        let index = id.checked_sub(self.base)?;
        self.txns.get_mut(usize::try_from(index).ok()?)
    }

    /// Counts one more record of transaction `id` as produced.
    pub fn produced(&mut self, id: u64) {
        if let Some(t) = self.txn(id) {
            t.pending += 1;
            self.in_flight += 1;
        }
    }

    /// Marks transaction `id` complete, ending at `end_lsn`.
    pub fn commit(&mut self, id: u64, end_lsn: u64) {
        if let Some(t) = self.txn(id) {
            t.end_lsn = Some(end_lsn);
        }
        self.advance();
    }

    /// Records Kafka's answer for one record of transaction `id`. A failure is kept
    /// (see [`Frontier::failure`]) and the frontier stops moving for good.
    pub fn delivered(&mut self, id: u64, result: Result<(), KafkaError>) {
        if let Err(e) = result {
            self.failed.get_or_insert(e);
            return;
        }
        if let Some(t) = self.txn(id) {
            debug_assert!(t.pending > 0, "more acknowledgements than records");
            t.pending = t.pending.saturating_sub(1);
            self.in_flight = self.in_flight.saturating_sub(1);
            self.acknowledged += 1;
        }
        self.advance();
    }

    fn advance(&mut self) {
        if self.failed.is_some() {
            return;
        }
        while let Some(Txn {
            pending: 0,
            end_lsn: Some(end),
            commit_ms,
        }) = self.txns.front()
        {
            self.confirmed = self.confirmed.max(*end);
            self.confirmed_commit_ms = *commit_ms;
            self.txns.pop_front();
            self.base += 1;
        }
    }

    /// Confirms a server WAL position when nothing is in flight; ignored otherwise.
    pub fn confirm_idle(&mut self, wal_end: u64) {
        if self.txns.is_empty() && self.failed.is_none() {
            self.confirmed = self.confirmed.max(wal_end);
        }
    }

    /// The LSN that is safe to confirm to the slot.
    pub fn confirmed(&self) -> u64 {
        self.confirmed
    }

    /// Seconds between `now_ms` and the commit of the last acknowledged transaction
    /// (or of the oldest pending one, before any); 0 when nothing is in flight.
    pub fn lag_seconds(&self, now_ms: i64) -> f64 {
        let Some(oldest) = self.txns.front() else {
            return 0.0;
        };
        let since = if self.confirmed_commit_ms > 0 {
            self.confirmed_commit_ms
        } else {
            oldest.commit_ms
        };
        (now_ms - since).max(0) as f64 / 1000.0
    }

    /// Records produced and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Records acknowledged since the session began.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged
    }

    /// Whether no transaction is open or unacknowledged.
    pub fn is_idle(&self) -> bool {
        self.txns.is_empty()
    }

    /// The first delivery failure, if any.
    pub fn failure(&self) -> Option<&KafkaError> {
        self.failed.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_only_over_a_gap_free_run() {
        let mut f = Frontier::new(10);
        let a = f.begin(0);
        f.produced(a);
        f.produced(a);
        f.commit(a, 100);
        let b = f.begin(0);
        f.produced(b);
        f.commit(b, 200);
        // b is acknowledged first: nothing moves, a is still out.
        f.delivered(b, Ok(()));
        assert_eq!(f.confirmed(), 10);
        f.delivered(a, Ok(()));
        assert_eq!(f.confirmed(), 10);
        f.delivered(a, Ok(()));
        assert_eq!(f.confirmed(), 200);
        assert!(f.is_idle());
        assert_eq!(f.in_flight(), 0);
    }

    #[test]
    fn open_transaction_holds_the_frontier_and_idle_keepalives() {
        let mut f = Frontier::new(0);
        let a = f.begin(0);
        f.produced(a);
        f.delivered(a, Ok(()));
        f.confirm_idle(500);
        assert_eq!(f.confirmed(), 0, "the transaction has not committed yet");
        f.commit(a, 300);
        assert_eq!(f.confirmed(), 300);
        f.confirm_idle(500);
        assert_eq!(f.confirmed(), 500);
        f.confirm_idle(400);
        assert_eq!(f.confirmed(), 500, "never backwards");
    }

    #[test]
    fn a_failed_delivery_stops_the_frontier() {
        let mut f = Frontier::new(0);
        let a = f.begin(0);
        f.produced(a);
        f.produced(a);
        f.commit(a, 100);
        f.delivered(
            a,
            Err(KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::MessageTimedOut,
            )),
        );
        f.delivered(a, Ok(()));
        assert_eq!(f.confirmed(), 0);
        assert!(matches!(
            f.failure(),
            Some(KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::MessageTimedOut
            ))
        ));
        f.confirm_idle(900);
        assert_eq!(f.confirmed(), 0);
    }

    #[test]
    fn empty_transactions_confirm_at_once() {
        let mut f = Frontier::new(0);
        let a = f.begin(0);
        f.commit(a, 42);
        assert_eq!(f.confirmed(), 42);
    }
}
