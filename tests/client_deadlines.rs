//! Nothing waits without a deadline: a cache whose broker never answers (a blackhole
//! that accepts connections and sends nothing) is not ready within its startup
//! timeout, and `Cache::build` and `dump` say so, naming the step that did not finish.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tidemark_client::{Cache, Error, Row};

use crate::support::*;

/// Port of the paused proxy in front of the shared broker.
const BLACKHOLE_PORT: u16 = 19199;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_cannot_finish_ends_at_its_deadline_naming_the_step() {
    let pg = pg().await;
    let table = format!("{}_t", unique("deadline"));
    create_table(&pg, &table).await;
    let broker_port: u16 = kafka()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("broker port");
    let blackhole = Proxy::start(BLACKHOLE_PORT, broker_port).await;
    blackhole.pause(true);
    let brokers = format!("127.0.0.1:{BLACKHOLE_PORT}");

    // The library: build() returns StartupTimeout with the step.
    let built = Cache::<Row, Row>::builder()
        .postgres(pg_url())
        .kafka(brokers.clone())
        .table(format!("public.{table}"))
        .startup_timeout(Duration::from_secs(5))
        .build()
        .await;
    let Err(err) = built else {
        panic!("a cache without a broker is not ready");
    };
    match &err {
        Error::StartupTimeout { step, after, .. } => {
            assert_eq!(*after, Duration::from_secs(5));
            assert!(step.contains("Kafka"), "the step names Kafka: {step}");
        }
        other => panic!("expected StartupTimeout, got {other}"),
    }
    assert!(err.to_string().contains("startup_timeout"), "{err}");

    // dump --follow 3 --startup-timeout 5: exits non-zero, bounded by a generous
    // deadline (a liveness check, not a timing), and says why.
    let mut child = Command::new(dump_bin())
        .args(["--postgres", &pg_url(), "--kafka", &brokers])
        .args(["--table", &format!("public.{table}")])
        .args(["--follow", "3", "--startup-timeout", "5"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dump");
    // follow + startup timeout + time to start and stop.
    let deadline = Instant::now() + Duration::from_secs(3 + 5 + 20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dump --follow 3 --startup-timeout 5 still ran after 28 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "dump exits non-zero: {stderr}");
    assert!(
        stderr.contains("was not ready after 5s") && stderr.contains("Kafka"),
        "dump names the timeout and the step: {stderr}"
    );
    drop(blackhole);
}
