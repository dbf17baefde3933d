//! A commit's time is fixed before the commit becomes visible. A transaction that
//! waits for a synchronous standby has its commit record in the WAL (the bridge
//! writes its record, stamped with the commit time) while snapshots still see it as
//! running. A cache that starts meanwhile does not load the change, so its seek must
//! start at or before that record, however long the wait was.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// Names a synchronous standby that never connects, so every commit waits; undone
/// when dropped (also when the test fails).
struct WaitingCommits;

impl WaitingCommits {
    fn on() -> Self {
        psql("ALTER SYSTEM SET synchronous_standby_names = 'tidemark_absent_standby'");
        psql("SELECT pg_reload_conf()");
        WaitingCommits
    }
}

impl Drop for WaitingCommits {
    fn drop(&mut self) {
        psql("ALTER SYSTEM RESET synchronous_standby_names");
        psql("SELECT pg_reload_conf()");
    }
}

fn psql(sql: &str) {
    let ok = Command::new("psql")
        .args([&pg_url(), "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdout(Stdio::null())
        .status()
        .expect("psql")
        .success();
    assert!(ok, "psql -c {sql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_becomes_visible_late_is_not_missed() {
    let pg = pg().await;
    let name = unique("visibility");
    let table = format!("{name}_t");
    create_table(&pg, &table).await;
    // No initial snapshot: the topic's first record is to be the late commit.
    let mut args = BridgeArgs::new(&name, &[&format!("public.{table}")]);
    args.extra = vec!["--snapshot".into(), "never".into()];
    let (mut bridge, args) = start_bridge_with(args).await;
    let topic = args.topic(&format!("public.{table}"));

    let waiting = WaitingCommits::on();
    let writer = pg_at(&pg_url()).await;
    let writer_pid: i32 = writer
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let update = format!("UPDATE {table} SET v = 'late' WHERE id = 1");
    let write = tokio::spawn(async move { writer.batch_execute(&update).await });
    // The commit is in the WAL, so the bridge writes its record...
    let records = wait_for_records(&args.kafka, &topic, 1, Duration::from_secs(60)).await;
    assert_eq!(records[0].value.as_ref().unwrap()["after"]["v"], "late");
    // ...while the transaction stays invisible, for longer than the safety window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !write.is_finished(),
        "the commit did not wait for the standby"
    );
    let invisible = || async { table_rows(&pg, &table).await[&1] == "v1" };
    assert!(
        invisible().await,
        "the change is visible before the cache starts"
    );
    let cache = args
        .row_cache(&table)
        .safety_window(Duration::from_secs(1))
        .build()
        .await
        .expect("cache");
    // Still invisible, so the cache's snapshot (taken in between) did not hold it.
    assert!(
        invisible().await,
        "the change became visible while the cache loaded"
    );
    // Cancelling the wait makes the commit visible.
    pg.execute("SELECT pg_cancel_backend($1)", &[&writer_pid])
        .await
        .unwrap();
    write.await.unwrap().expect("the update commits");
    drop(waiting);
    assert_eq!(table_rows(&pg, &table).await[&1], "late");
    wait_for(
        Duration::from_secs(30),
        "the cache to apply the change that became visible after its snapshot",
        || async { (cache_rows(&cache)[&1] == "late").then_some(()) },
    )
    .await;
    cache.shutdown().await;
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}
