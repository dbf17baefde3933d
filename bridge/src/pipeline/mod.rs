//! One replication session: slot → records → Kafka, confirming only what Kafka has.
//!
//! A session sets up (publication, slot, topics), opens the replication stream from
//! the slot's confirmed position and loops: each change becomes records that the
//! [`Sink`] produces, each Commit closes a transaction in the [`Frontier`], and every
//! time the frontier moves the new position goes to the server as the applied LSN.
//! Any failure ends the session with an error; nothing the session read but did not
//! deliver is confirmed, so the next session (see [`crate::run`]) replays it.
//!
//! On shutdown the session stops reading, waits for Kafka to acknowledge what is in
//! flight, and confirms the frontier. The replication library reports the applied
//! LSN only on its status interval, so after closing the stream the session also
//! moves the slot with `pg_replication_slot_advance`: the last safe LSN is confirmed
//! before the process exits, not at the next start.
//!
//! With `--exactly-once` the records go out in Kafka transactions and the slot is
//! confirmed to the position the last committed one stored ([`exactly_once`]);
//! with `--heartbeat-interval` idle topics get [`heartbeat`] records; with
//! `--provide-transaction-metadata` each transaction gets [`transaction_metadata`]
//! events.

pub mod exactly_once;
pub mod frontier;
pub mod heartbeat;
pub mod records;
pub mod snapshot;
pub mod transaction_metadata;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pgwire_replication::{Lsn, ReplicationEvent};
use rdkafka::error::KafkaError;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{Config, TruncateMode};
use crate::error::{within_deadline, BridgeError};
use crate::sink::{state, topics, Acks, Record, Sink};
use crate::source::{pgoutput, setup, stream};
use crate::telemetry::{self, Health};
use frontier::Frontier;
use records::{Numbering, Output, Tables, TxnInfo};
use transaction_metadata::{TransactionTopic, TxnOrder};

/// How long a graceful stop waits for Kafka to acknowledge in-flight records.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// How often the session reads the slot's lag from the server and updates gauges.
const LAG_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// How often the session compares its topics' partition counts with Kafka's.
const PARTITION_PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// Ends the session when a topic's partition count is no longer the one the session
/// writes with. Records carry an explicit partition computed with the session's count
/// (`records.rs`), so a key moves to its new partition only at a session boundary,
/// a transaction boundary that readers can detect (see `docs/design.md`).
fn check_partitions(
    sink: &Sink,
    partitions: &std::collections::HashMap<String, i32>,
) -> Result<(), BridgeError> {
    for (topic, &from) in partitions {
        let md = tokio::task::block_in_place(|| {
            sink.client()
                .fetch_metadata(Some(topic), Duration::from_secs(5))
        });
        let to = match md {
            Ok(md) => md.topics().first().map_or(0, |t| t.partitions().len()) as i32,
            Err(e) => {
                debug!(error = %e, topic, "reading the partition count");
                continue;
            }
        };
        if to > 0 && to != from {
            return Err(BridgeError::PartitionsChanged {
                topic: topic.clone(),
                from,
                to,
            });
        }
    }
    Ok(())
}

/// How long Kafka may acknowledge nothing while records wait before the session
/// warns, and how often it repeats the warning.
const STALL_WARNING: Duration = Duration::from_secs(30);

/// Warns while records wait for Kafka and none is acknowledged. Records never time
/// out (see [`crate::sink::producer`]), so a broker that is away makes the bridge
/// wait, and this says so instead of waiting in silence.
async fn watch_stalls(frontier: Arc<Mutex<Frontier>>) {
    let mut last = lock(&frontier).acknowledged();
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(STALL_WARNING / 6).await;
        let (acknowledged, in_flight) = {
            let f = lock(&frontier);
            (f.acknowledged(), f.in_flight())
        };
        if acknowledged != last || in_flight == 0 {
            last = acknowledged;
            since = Instant::now();
        } else if since.elapsed() >= STALL_WARNING {
            tracing::warn!(
                in_flight,
                waiting_secs = since.elapsed().as_secs(),
                "Kafka has acknowledged nothing for a while; the records wait for it (they never time out, so no partition gets a gap) and the slot keeps the WAL. Check that the brokers are up and reachable"
            );
            since = Instant::now();
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes a slot marker on every partition of every topic, before the new slot's first
/// change: the changes between the old slot's last position and `lsn` never reached
/// the topics, and caches that loaded before `lsn` must warm-start again. The markers
/// form a transaction of their own in the frontier, ahead of every change, and the
/// session waits for Kafka to acknowledge them before it streams; if they fail, the
/// session drops the new slot, so the next one creates it and marks again. (Only a
/// crash of the process in that moment leaves a slot without markers.)
async fn mark_new_slot(
    sink: &Sink,
    frontier: &Mutex<Frontier>,
    slot: &str,
    lsn: u64,
    partitions: &std::collections::HashMap<String, i32>,
    start: u64,
    now_ms: i64,
) -> Result<(), BridgeError> {
    let marker = tidemark_core::wire::envelope::SlotMarker {
        slot: slot.to_owned(),
        lsn,
    };
    let value = serde_json::to_vec(&marker).map_err(|e| BridgeError::Decode(e.to_string()))?;
    // The server's time, as every record's: caches seek by the server's clock.
    let now = now_ms;
    let txn = lock(frontier).begin(now);
    for (topic, &count) in partitions {
        let topic: Arc<str> = topic.as_str().into();
        for p in 0..count {
            let record = Record {
                topic: topic.clone(),
                partition: Some(p),
                key: marker.key(),
                value: Some(value.clone()),
                timestamp_ms: now,
                table: topic.clone(),
                op: None,
                headers: vec![(
                    tidemark_core::wire::envelope::SLOT_MARKER_HEADER,
                    value.clone(),
                )],
                lsn,
            };
            sink.send(txn, &record).await?;
        }
    }
    lock(frontier).commit(txn, start);
    info!(slot, lsn = %Lsn(lsn), "new slot: markers written so that caches loaded before it warm-start again");
    Ok(())
}

/// Produces `record` as part of frontier transaction `txn`, and counts it in the
/// open Kafka transaction with `--exactly-once`.
async fn send_counted(
    sink: &Sink,
    txn: u64,
    record: &Record,
    eos: Option<&mut exactly_once::Transactions>,
) -> Result<(), BridgeError> {
    sink.send(txn, record).await?;
    if let Some(eos) = eos {
        eos.produced();
    }
    Ok(())
}

/// Marks the bridge not streaming when the session ends, however it ends.
struct NotStreamingOnDrop<'a>(&'a Health);

impl Drop for NotStreamingOnDrop<'_> {
    fn drop(&mut self) {
        self.0.set_streaming(false);
        self.0.set_postgres_silent(false);
    }
}

fn count_record(record: &Record) {
    let bytes = record.key.len() + record.value.as_ref().map_or(0, Vec::len);
    metrics::counter!(telemetry::BYTES).increment(bytes as u64);
    if let Some(op) = record.op {
        metrics::counter!(telemetry::CHANGES, "table" => record.table.clone(), "op" => op)
            .increment(1);
    }
}

/// The pipeline owns the frontier; the sink reports acknowledgements to it.
impl Acks for Mutex<Frontier> {
    fn produced(&self, txn: u64) {
        lock(self).produced(txn);
    }

    fn delivered(&self, txn: u64, result: Result<(), KafkaError>) {
        lock(self).delivered(txn, result);
    }

    fn in_flight(&self) -> u64 {
        lock(self).in_flight()
    }

    fn failure(&self) -> Option<KafkaError> {
        lock(self).failure().cloned()
    }
}

/// The frontier, also after a panic elsewhere left its lock poisoned (its state is
/// updated in single steps, so it stays consistent).
fn lock(frontier: &Mutex<Frontier>) -> MutexGuard<'_, Frontier> {
    frontier
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Updates the progress gauges and the slot's health; the slot's figures come from the
/// server, with a deadline so that a half-open connection cannot stall the stream.
/// A slot whose WAL is gone (`wal_status = lost`) cannot stream again: readiness turns
/// false and the session ends with the fix.
async fn report_progress(
    client: &tokio_postgres::Client,
    slot: &str,
    frontier: &Mutex<Frontier>,
    health: &Health,
) -> Result<(), BridgeError> {
    let (in_flight, confirmed, lag_seconds) = {
        let f = lock(frontier);
        (
            f.in_flight(),
            f.confirmed(),
            f.lag_seconds(telemetry::now_ms()),
        )
    };
    metrics::gauge!(telemetry::IN_FLIGHT).set(in_flight as f64);
    metrics::gauge!(telemetry::CONFIRMED_LSN).set(confirmed as f64);
    metrics::gauge!(telemetry::SLOT_LAG_SECONDS).set(lag_seconds);
    let sql = "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8, \
               (pg_current_wal_lsn() - restart_lsn)::int8, wal_status, safe_wal_size \
               FROM pg_replication_slots WHERE slot_name = $1";
    let answer = tokio::time::timeout(SLOT_QUERY_TIMEOUT, client.query_opt(sql, &[&slot])).await;
    health.set_postgres_silent(answer.is_err());
    let row = match answer {
        Ok(Ok(Some(row))) => row,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) if client.is_closed() => {
            return Err(BridgeError::postgres(
                "reading the slot's figures (the connection closed)",
            )(e));
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "reading the slot's figures");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(timeout = ?SLOT_QUERY_TIMEOUT, "PostgreSQL did not answer the slot query in time");
            return Ok(());
        }
    };
    let gauge = |name: &'static str, v: Option<i64>| {
        if let Some(v) = v {
            metrics::gauge!(name).set(v as f64);
        }
    };
    gauge(telemetry::SLOT_LAG_BYTES, row.get(0));
    gauge(telemetry::SLOT_RETAINED_WAL_BYTES, row.get(1));
    gauge(telemetry::SLOT_SAFE_WAL_SIZE_BYTES, row.get(3));
    let status: Option<String> = row.get(2);
    let status = status.unwrap_or_default();
    for s in ["reserved", "extended", "unreserved", "lost"] {
        metrics::gauge!(telemetry::SLOT_WAL_STATUS, "status" => s)
            .set(f64::from(u8::from(s == status)));
    }
    health.set_slot_lost(status == "lost");
    if status == "lost" {
        return Err(setup::slot_lost(slot));
    }
    if status == "unreserved" {
        tracing::warn!(slot, "the slot's WAL is about to be removed (wal_status=unreserved): the bridge is behind by more than max_slot_wal_keep_size");
    }
    Ok(())
}

/// How long the slot query may take.
const SLOT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes the heartbeats of every idle topic (see [`heartbeat`]), stamped with the
/// server's time and `confirmed`, the LSN confirmed to the slot. When the server does
/// not tell its time within [`SLOT_QUERY_TIMEOUT`], they wait for the next round.
async fn write_heartbeats(
    client: &tokio_postgres::Client,
    sink: &Sink,
    frontier: &Mutex<Frontier>,
    heartbeats: &mut heartbeat::Heartbeats,
    eos: Option<&mut exactly_once::Transactions>,
    slot: &str,
    confirmed: u64,
) -> Result<(), BridgeError> {
    let sql = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8";
    let now_ms: i64 = match tokio::time::timeout(SLOT_QUERY_TIMEOUT, client.query_one(sql, &[]))
        .await
    {
        Ok(Ok(row)) => row.get(0),
        Ok(Err(e)) => return Err(BridgeError::postgres("reading the server's time")(e)),
        Err(_) => {
            tracing::warn!(timeout = ?SLOT_QUERY_TIMEOUT, "PostgreSQL did not tell its time in time; heartbeats wait");
            return Ok(());
        }
    };
    let records = heartbeats.due(slot, confirmed, now_ms)?;
    if records.is_empty() {
        return Ok(());
    }
    let mut eos = eos;
    if let Some(eos) = eos.as_deref_mut() {
        eos.ensure_open(sink)?;
    }
    let id = lock(frontier).begin(now_ms);
    for record in &records {
        send_counted(sink, id, record, eos.as_deref_mut()).await?;
    }
    let at = lock(frontier).confirmed();
    lock(frontier).commit(id, at);
    metrics::counter!(telemetry::HEARTBEATS).increment(records.len() as u64);
    debug!(records = records.len(), "heartbeats");
    Ok(())
}

/// Drops the slot this session created and could not mark, through the session's
/// connection or, when that one is broken (a failed step may have been the
/// connection's), through a new one.
async fn drop_new_slot(client: &tokio_postgres::Client, config: &Config) {
    let first = within_deadline(
        "dropping the new slot",
        setup::drop_slot(client, &config.slot),
    )
    .await;
    let result = match first {
        Ok(()) => Ok(()),
        Err(_) => {
            within_deadline("dropping the new slot", async {
                let fresh = setup::connect(&config.postgres).await?;
                setup::drop_slot(&fresh, &config.slot).await
            })
            .await
        }
    };
    match result {
        Ok(()) => {
            info!(slot = %config.slot, "dropped the new slot, which has no markers: the next session creates it again and writes them")
        }
        Err(e) => tracing::error!(
            slot = %config.slot,
            error = %e,
            "the new slot has no markers and could not be dropped: drop it (SELECT pg_drop_replication_slot('{}')) before the bridge streams from it, or caches will not learn of the changes lost before it",
            config.slot
        ),
    }
}

/// Runs one session until `shutdown` turns true (returns `Ok`) or something fails.
pub async fn run_session(
    config: &Config,
    health: &Health,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), BridgeError> {
    let client =
        within_deadline("connecting to PostgreSQL", setup::connect(&config.postgres)).await?;
    setup::prepare(&client, config).await?;
    let partitions = topics::ensure_topics(config).await?;
    let transaction_topic = match config.records.transaction_metadata {
        true => Some(TransactionTopic::ensure(config).await?),
        false => None,
    };
    let row = client
        .query_one(
            "SELECT current_database()::text, current_setting('server_encoding') = 'SQL_ASCII'",
            &[],
        )
        .await
        .map_err(BridgeError::postgres("reading the database name"))?;
    let (db, sql_ascii): (String, bool) = (row.get(0), row.get(1));
    // The slot comes after the topics, so that a new slot's markers can be written
    // at once (see `mark_new_slot`).
    let created_slot = setup::ensure_slot(&client, &config.slot).await?;
    // Every step from here to the new slot's markers runs under one rule: if one
    // fails, a slot this session created is dropped again, and the next session
    // creates it anew, plans its snapshot and writes its markers. A slot left behind
    // would look like an old one to the next session, which would write neither.
    // (Only a crash of the process in this stretch leaves a slot without markers.)
    let prepared = async {
        let start = setup::confirmed_flush_lsn(&client, &config.slot)
            .await?
            .unwrap_or(0);
        let frontier = Arc::new(Mutex::new(Frontier::new(start)));
        let limits = topics::record_limits(config, partitions.keys()).await;
        let sink = Sink::new(config, frontier.clone(), limits)?;
        let eos = match config.exactly_once {
            true => {
                sink.init_transactions()?;
                let stored = exactly_once::load(config).await?;
                let position = exactly_once::applicable(stored, start, created_slot);
                info!(position = %Lsn(position.lsn), slot_created = %Lsn(position.slot_lsn), transactional_id = %config.transactional_id, "exactly once: transactions up to the stored position are in Kafka already");
                Some(exactly_once::Transactions::new(config, position))
            }
            false => None,
        };
        // The snapshot's tables are decided before the markers make every topic non-empty.
        let mut progress = None;
        if config.snapshot != crate::config::SnapshotMode::Never {
            state::ensure_topic(config).await?;
            progress = match created_slot {
                Some(lsn) => snapshot::plan(&client, config, &partitions, lsn).await?,
                None => tokio::task::block_in_place(|| snapshot::load(config, start))?,
            };
        }
        if let Some(lsn) = created_slot {
            let now_ms: i64 = client
                .query_one("SELECT (extract(epoch FROM now()) * 1000)::int8", &[])
                .await
                .map_err(BridgeError::postgres("reading the server's time"))?
                .get(0);
            if eos.is_some() {
                sink.begin_transaction()?;
            }
            mark_new_slot(&sink, &frontier, &config.slot, lsn, &partitions, start, now_ms).await?;
            if let Some(progress) = &progress {
                // Saved with the markers: a slot without its snapshot plan is dropped too.
                let txn = lock(&frontier).begin(now_ms);
                sink.send(txn, &snapshot::save_record(config, progress, now_ms)?)
                    .await?;
                lock(&frontier).commit(txn, start);
            }
            if let Some(eos) = &eos {
                // The new slot's position goes with its markers (and its snapshot
                // plan), in one transaction.
                let record = eos.new_slot_record(config, now_ms)?;
                let id = lock(&frontier).begin(now_ms);
                sink.send(id, &record).await?;
                lock(&frontier).commit(id, lsn);
                sink.commit_transaction()?;
            }
            sink.drain(DRAIN_TIMEOUT).await?;
            let unacknowledged = lock(&frontier).in_flight();
            if unacknowledged > 0 {
                return Err(BridgeError::Kafka {
                    context: format!("writing the new slot's markers: {unacknowledged} not acknowledged within {DRAIN_TIMEOUT:?}"),
                    source: KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut),
                });
            }
        }
        Ok((start, frontier, sink, eos, progress))
    }
    .await;
    let (start, frontier, sink, mut eos, mut progress) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            if created_slot.is_some() {
                drop_new_slot(&client, config).await;
            }
            return Err(e);
        }
    };
    let _stall_watch = AbortOnDrop(tokio::spawn(watch_stalls(frontier.clone())));
    if config.records.truncate == TruncateMode::Skip {
        warn!("--truncate skip: TRUNCATEs are left out of the topics, so caches following them keep the truncated rows");
    }
    let mut tables = Tables::new(
        config.tables.clone(),
        partitions.clone(),
        Output {
            prefix: config.topic_prefix.clone(),
            db,
            truncate: config.records.truncate,
            format: config.records.format,
        },
    );
    if let Some(progress) = &mut progress {
        if !progress.finished() {
            info!(tables = progress.tables.len() - progress.done.len(), "initial snapshot: writing every row of the tables as op r records before the changes");
            let writer = snapshot::Writer {
                sink: &sink,
                frontier: &frontier,
                start,
            };
            snapshot::run(&client, config, &writer, &mut tables, progress).await?;
            info!("initial snapshot written");
        }
        progress.install_filters(&mut tables)?;
    }
    let mut repl = within_deadline(
        "starting the replication connection",
        stream::start(config, sql_ascii),
    )
    .await?;
    info!(slot = %config.slot, start_lsn = %Lsn(start), "streaming");
    health.set_streaming(true);
    let _not_streaming = NotStreamingOnDrop(health);

    let mut txn: Option<(u64, TxnInfo)> = None;
    // The open transaction's numbering, with transaction metadata.
    let mut order: Option<TxnOrder> = None;
    // Inside a transaction that a committed Kafka transaction holds already.
    let mut skipping = false;
    let mut heartbeats = config
        .heartbeat_interval
        .map(|interval| heartbeat::Heartbeats::new(interval, &partitions));
    // The commit LSN of the last transaction seen (Debezium's `source.sequence`).
    let mut previous_commit_lsn: Option<u64> = None;
    let mut numbering = Numbering::default();
    let mut reported = start;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut lag_probe = Instant::now() - LAG_PROBE_INTERVAL;
    let mut partition_probe = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            _ = tick.tick() => {}
            event = repl.recv() => {
                let Some(event) = event? else {
                    return Err(BridgeError::Replication(pgwire_replication::PgWireError::Protocol(
                        "the server closed the replication stream".into(),
                    )));
                };
                match event {
                    ReplicationEvent::Begin { final_lsn, xid, commit_time_micros } => {
                        if eos.as_mut().is_some_and(|e| e.skip(final_lsn.as_u64())) {
                            skipping = true;
                            previous_commit_lsn = Some(final_lsn.as_u64());
                        } else {
                            if let Some(eos) = eos.as_mut() {
                                eos.ensure_open(&sink)?;
                                eos.pg_begin(final_lsn.as_u64(), xid);
                            }
                            let commit_us = commit_time_micros + PG_EPOCH_MICROS;
                            let info = TxnInfo {
                                xid,
                                commit_lsn: final_lsn.as_u64(),
                                commit_ms: commit_us / 1000,
                                commit_us,
                                previous_commit_lsn,
                            };
                            previous_commit_lsn = Some(info.commit_lsn);
                            order = transaction_topic
                                .is_some()
                                .then(|| TxnOrder::new(xid, info.commit_lsn, info.commit_ms));
                            txn = Some((lock(&frontier).begin(info.commit_ms), info));
                            numbering = Numbering::default();
                        }
                    }
                    ReplicationEvent::XLogData { wal_start, data, .. } => {
                        match pgoutput::decode(data).map_err(|e| BridgeError::Decode(e.to_string()))? {
                            pgoutput::Message::Relation(rel) => within_deadline("reading a table's key columns", tables.learn(&client, rel)).await?,
                            // Committed in Kafka already (`--exactly-once`).
                            _ if skipping => {}
                            msg => {
                                let Some((id, info)) = &txn else {
                                    return Err(BridgeError::Decode("change outside a transaction".into()));
                                };
                                let lsn = wal_start.as_u64();
                                // With --exactly-once, false for a change an earlier session
                                // committed in part of this transaction; it is still numbered.
                                let write = match eos.as_mut() {
                                    Some(eos) if !matches!(msg, pgoutput::Message::Ignored(_)) => eos.change(),
                                    _ => true,
                                };
                                let records = tables.records(msg, lsn, numbering.at(lsn), info, order.as_ref())?;
                                if let (Some(o), Some(topic)) = (order.as_mut(), &transaction_topic) {
                                    if o.take_begin() && write {
                                        send_counted(&sink, *id, &topic.begin(o)?, eos.as_mut()).await?;
                                    }
                                }
                                for record in records.into_iter().filter(|_| write) {
                                    count_record(&record);
                                    send_counted(&sink, *id, &record, eos.as_mut()).await?;
                                    if let Some(h) = heartbeats.as_mut() {
                                        h.wrote(&record.topic);
                                    }
                                }
                            }
                        }
                    }
                    ReplicationEvent::Commit { end_lsn, .. } => {
                        if std::mem::take(&mut skipping) {
                            // Its records are committed in Kafka already.
                        } else if let Some((id, _)) = txn.take() {
                            if let (Some(o), Some(topic)) = (order.take(), &transaction_topic) {
                                if o.begun() {
                                    send_counted(&sink, id, &topic.end(&o)?, eos.as_mut()).await?;
                                }
                            }
                            lock(&frontier).commit(id, end_lsn.as_u64());
                            if let Some(eos) = eos.as_mut() {
                                eos.pg_committed(end_lsn.as_u64());
                            }
                        }
                    }
                    ReplicationEvent::KeepAlive { wal_end, .. } => {
                        if txn.is_none() && !skipping {
                            match eos.as_mut() {
                                Some(eos) => eos.idle(wal_end.as_u64()),
                                None => lock(&frontier).confirm_idle(wal_end.as_u64()),
                            }
                        }
                    }
                    ReplicationEvent::Message { .. } => {}
                    ReplicationEvent::StoppedAt { .. } => break,
                }
            }
        }
        if let Some(e) = sink.failure() {
            return Err(e);
        }
        // Between two changes of a PostgreSQL transaction that takes too long to
        // produce: commit what it wrote so far (exactly_once's module doc). Checked on
        // the tick too, for a transaction whose next change is slow to come.
        if txn.is_some() {
            if let Some(eos) = eos.as_mut().filter(|e| e.split_due()) {
                eos.split(config, &sink, &frontier, telemetry::now_ms())
                    .await?;
            }
        }
        if txn.is_none() && !skipping {
            if let Some(h) = heartbeats.as_mut().filter(|h| h.any_due()) {
                write_heartbeats(
                    &client,
                    &sink,
                    &frontier,
                    h,
                    eos.as_mut(),
                    &config.slot,
                    reported,
                )
                .await?;
            }
            if let Some(eos) = eos.as_mut().filter(|e| e.due(false)) {
                eos.commit(config, &sink, &frontier, telemetry::now_ms())
                    .await?;
            }
        }
        let confirmed = match &eos {
            Some(eos) => eos.committed(),
            None => lock(&frontier).confirmed(),
        };
        if lag_probe.elapsed() >= LAG_PROBE_INTERVAL {
            lag_probe = Instant::now();
            report_progress(&client, &config.slot, &frontier, health).await?;
            if eos.is_some() {
                // The slot follows the committed position, not the acknowledged records.
                metrics::gauge!(telemetry::CONFIRMED_LSN).set(confirmed as f64);
            }
        }
        if partition_probe.elapsed() >= PARTITION_PROBE_INTERVAL {
            partition_probe = Instant::now();
            check_partitions(&sink, &partitions)?;
        }
        if confirmed > reported {
            debug!(lsn = %Lsn(confirmed), "confirm");
            repl.update_applied_lsn(Lsn(confirmed));
            reported = confirmed;
        }
    }

    info!(
        in_flight = lock(&frontier).in_flight(),
        "stopping: draining in-flight records"
    );
    let (drained, confirmed) = match eos.as_mut() {
        None => (sink.drain(DRAIN_TIMEOUT).await, lock(&frontier).confirmed()),
        Some(eos) => {
            // A Kafka transaction commits only between PostgreSQL transactions.
            let finished = if txn.is_some() {
                eos.abort(&sink)
            } else if eos.due(true) {
                eos.commit(config, &sink, &frontier, telemetry::now_ms())
                    .await
                    .map(|_| ())
            } else {
                Ok(())
            };
            if eos.skipped() > 0 {
                info!(
                    skipped = eos.skipped(),
                    "transactions skipped because Kafka held them already"
                );
            }
            (finished, eos.committed())
        }
    };
    repl.update_applied_lsn(Lsn(confirmed));
    repl.stop();
    while let Ok(Some(_)) = repl.recv().await {}
    drained?;
    setup::advance_slot(&client, &config.slot, confirmed).await?;
    info!(confirmed_lsn = %Lsn(confirmed), "stopped cleanly");
    Ok(())
}
