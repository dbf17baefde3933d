//! The race test: caches warm-start at random moments while writers hammer the table,
//! and must converge on it without a key ever going back (`docs/design.md`, the race).

use std::time::Duration;

use tidemark_client::Strategy;

use crate::support::race::{self, RaceConfig, RaceOutcome};
use crate::support::*;

async fn race(name: &str, cfg: RaceConfig) -> RaceOutcome {
    let pg = pg().await;
    let table = format!("{name}_t");
    race::create_tables(&pg, &table, cfg.keys).await;
    let mut args = BridgeArgs::new(name, &[&format!("public.{table}")]);
    args.partitions = 3;
    let (mut bridge, args) = start_bridge_with(args).await;
    let outcome = race::run(name, &table, &args, &mut bridge, cfg).await;
    assert!(bridge.sigterm(Duration::from_secs(60)).success());
    eprintln!(
        "race {name}: {} commits; caches applied {} changes, skipped {} already in their snapshot, dropped {} replays; \
         {} backwards steps, {} changes applied twice, {} of the caches diverged ({} rows)",
        outcome.commits,
        outcome.applied,
        outcome.skipped_in_snapshot,
        outcome.duplicates,
        outcome.backwards,
        outcome.repeated,
        outcome.diverged,
        outcome.differing_rows
    );
    for e in &outcome.examples {
        eprintln!("race {name}: {e}");
    }
    outcome
}

fn assert_exact(outcome: &RaceOutcome) {
    assert_eq!(
        outcome.backwards, 0,
        "a key went back or a change was applied twice: {:#?}",
        outcome.examples
    );
    assert_eq!(
        outcome.diverged, 0,
        "caches differ from the table: {:#?}",
        outcome.examples
    );
    assert!(
        outcome.skipped_in_snapshot > 0,
        "the race never put a change in both the load and the stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_caches_warm_starting_under_writers_converge_exactly() {
    let outcome = race(&unique("race"), RaceConfig::default()).await;
    assert_exact(&outcome);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caches_converge_when_the_bridge_crashes_during_the_race() {
    let outcome = race(
        &unique("racecrash"),
        RaceConfig {
            bridge_crashes: 2,
            ..Default::default()
        },
    )
    .await;
    assert_exact(&outcome);
    assert!(
        outcome.duplicates > 0,
        "the crashes replayed nothing, so de-duplication was not exercised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caches_converge_under_copy_key_changes_truncate_and_a_rewrite() {
    let outcome = race(
        &unique("racehostile"),
        RaceConfig {
            hostile: true,
            caches: 12,
            duration: Duration::from_secs(30),
            ..Default::default()
        },
    )
    .await;
    assert_exact(&outcome);
}

/// Checkpoints taken during the hostile race, by caches that follow it, and starts
/// from them while the race goes on: every cache shares one directory and writes a
/// checkpoint every second, so most caches after the first few start from a peer's
/// (those taken before the rewriting `ALTER TABLE` are refused for their shape).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caches_started_from_checkpoints_taken_during_the_hostile_race_are_exact() {
    let name = unique("racecheckpoint");
    let dir = std::env::temp_dir().join(format!("tidemark-checkpoints-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    let outcome = race(
        &name,
        RaceConfig {
            hostile: true,
            caches: 12,
            duration: Duration::from_secs(30),
            checkpoints: Some(dir.clone()),
            ..Default::default()
        },
    )
    .await;
    eprintln!(
        "race {name}: {} caches started from a checkpoint; {} checkpoints refused",
        outcome.from_checkpoint, outcome.checkpoint_refusals
    );
    assert_exact(&outcome);
    assert!(
        outcome.from_checkpoint > 0,
        "no cache started from a checkpoint, so the race did not test them"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every cache loads with 4 connections, each reading a range of the table's pages in
/// the snapshot the load's transaction exported, under the hostile race (whose
/// rewriting `ALTER TABLE` queues behind loads, so helpers also meet a waiting DDL).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caches_loading_with_parallel_readers_under_the_hostile_race_are_exact() {
    let name = unique("raceparallel");
    let outcome = race(
        &name,
        RaceConfig {
            hostile: true,
            caches: 12,
            parallel_load: Some(4),
            ..Default::default()
        },
    )
    .await;
    eprintln!(
        "race {name}: {} caches loaded with parallel readers",
        outcome.parallel_loads
    );
    assert_exact(&outcome);
    assert!(
        outcome.parallel_loads > 0,
        "no cache loaded with parallel readers, so the race did not test them"
    );
}

/// The test is only worth something if it fails when the xid filter is off: with
/// the filter disabled, changes already in a cache's snapshot are applied again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_race_test_catches_a_disabled_xid_filter() {
    let outcome = race(
        &unique("racenofilter"),
        RaceConfig {
            disable_xid_filter: true,
            ..Default::default()
        },
    )
    .await;
    assert!(
        outcome.backwards + outcome.repeated > 0 || outcome.diverged > 0,
        "with the xid filter disabled the race test saw nothing wrong"
    );
}

/// The watermark strategy under the same race. It has no transaction ids, so this
/// test reports what it gets right and wrong rather than requiring exactness; it
/// fails only if the caches cannot start or catch up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_watermark_strategy_under_the_race_is_reported() {
    let cfg = RaceConfig {
        strategy: Strategy::Watermark {
            ts_column: "ts".into(),
        },
        ..Default::default()
    };
    let outcome = race(&unique("racewm"), cfg).await;
    eprintln!(
        "watermark strategy: subscribers saw {} backwards steps and {} changes applied twice; {} of 20 caches \
         diverged from the table ({} rows)",
        outcome.backwards, outcome.repeated, outcome.diverged, outcome.differing_rows
    );
}
