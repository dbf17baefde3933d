//! The bridge as a process: its settings, starting, crashing and stopping it, and
//! reading its HTTP endpoints.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::services::{drop_slot_and_publication, kafka, pg, pg_url};
use super::wait_for;
use tidemark_client::{Cache, Row};

/// The path of the bridge binary: `TIDEMARK_BRIDGE_BIN`, or the one cargo built
/// next to this test binary's profile directory.
pub fn bridge_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TIDEMARK_BRIDGE_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join("tidemark-bridge");
    assert!(
        bin.exists(),
        "{} is missing; build it first (cargo build -p tidemark-bridge, with --release for release tests) or run scripts/test.sh",
        bin.display()
    );
    bin
}

/// The path of the `dump` example, built beside the bridge binary.
pub fn dump_bin() -> PathBuf {
    let bin = bridge_bin().with_file_name("examples").join("dump");
    assert!(
        bin.exists(),
        "{} is missing; build it first (cargo build --release --examples) or run scripts/test.sh",
        bin.display()
    );
    bin
}

/// Settings for one bridge process.
#[derive(Clone, Debug)]
pub struct BridgeArgs {
    pub postgres: String,
    pub kafka: String,
    pub tables: Vec<String>,
    pub slot: String,
    pub publication: String,
    pub prefix: String,
    pub partitions: u32,
    pub extra: Vec<String>,
    /// Environment variables for the process; with `postgres` empty, no `--postgres`
    /// flag is passed (the environment gives it).
    pub env: Vec<(String, String)>,
}

/// Slots and publications the tests created, dropped when the test binary exits.
static CREATED: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
}

/// Drops the slots and publications in [`CREATED`] (they would pin WAL and use up
/// `max_replication_slots`); runs at exit, after every test's bridges were killed.
extern "C" fn drop_created_slots() {
    let created = std::mem::take(&mut *CREATED.lock().unwrap_or_else(|p| p.into_inner()));
    if created.is_empty() {
        return;
    }
    let slots: Vec<String> = created.iter().map(|(s, _)| format!("'{s}'")).collect();
    let mut sql = format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE NOT active AND slot_name IN ({});",
        slots.join(",")
    );
    for (_, publication) in &created {
        sql += &format!("DROP PUBLICATION IF EXISTS \"{publication}\";");
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("psql")
        .args([&pg_url(), "-q", "-c", &sql])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn register_for_cleanup(slot: &str, publication: &str) {
    let mut created = CREATED.lock().unwrap_or_else(|p| p.into_inner());
    if created.is_empty() {
        // SAFETY: registers a plain function with the C runtime; it runs once at exit.
        unsafe {
            atexit(drop_created_slots);
        }
    }
    created.push((slot.to_owned(), publication.to_owned()));
}

impl BridgeArgs {
    /// Settings for `tables`, with slot, publication and prefix derived from `name`.
    /// The slot and publication are dropped when the test binary exits.
    pub fn new(name: &str, tables: &[&str]) -> Self {
        register_for_cleanup(&format!("{name}_slot"), &format!("{name}_pub"));
        BridgeArgs {
            postgres: pg_url(),
            kafka: kafka(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
            slot: format!("{name}_slot"),
            publication: format!("{name}_pub"),
            prefix: name.to_string(),
            partitions: 1,
            extra: Vec::new(),
            env: Vec::new(),
        }
    }

    /// The topic of `table` (schema.table).
    pub fn topic(&self, table: &str) -> String {
        format!("{}.{table}", self.prefix)
    }

    /// A schema-agnostic cache of `public.<table>` on this bridge's topic.
    pub fn row_cache(&self, table: &str) -> tidemark_client::Builder<Row, Row> {
        Cache::builder()
            .postgres(pg_url())
            .kafka(self.kafka.clone())
            .table(format!("public.{table}"))
            .topic_prefix(self.prefix.clone())
    }
}

/// A running bridge process; killed when dropped.
pub struct Bridge {
    pub child: Child,
    pub log: PathBuf,
}

impl Bridge {
    /// Starts the bridge binary with `args`; its log goes to a temporary file.
    pub fn start(args: &BridgeArgs) -> Bridge {
        let log = std::env::temp_dir().join(format!("{}-{}.log", args.slot, rand::random::<u32>()));
        let file = std::fs::File::create(&log).expect("create bridge log");
        let mut command = Command::new(bridge_bin());
        if !args.postgres.is_empty() {
            command.args(["--postgres", &args.postgres]);
        }
        let child = command
            .args(["--kafka", &args.kafka])
            .args(["--tables", &args.tables.join(",")])
            .args(["--slot", &args.slot, "--publication", &args.publication])
            .args([
                "--topic-prefix",
                &args.prefix,
                "--partitions",
                &args.partitions.to_string(),
            ])
            .args(&args.extra)
            .env("RUST_LOG", "info")
            .envs(args.env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn tidemark-bridge");
        Bridge { child, log }
    }

    /// Kills the process with SIGKILL: a crash.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the bridge") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the bridge did not exit within {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident set size in KiB, from /proc.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Waits until the process's log contains `text`, for at most `timeout`.
    pub async fn wait_for_log(&self, text: &str, timeout: Duration) {
        wait_for(
            timeout,
            &format!("the bridge to log \"{text}\""),
            || async { self.log_text().contains(text).then_some(()) },
        )
        .await;
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a bridge for `tables` with a fresh slot and publication, and waits until it streams.
pub async fn start_bridge(name: &str, tables: &[&str]) -> (Bridge, BridgeArgs) {
    start_bridge_with(BridgeArgs::new(name, tables)).await
}

/// Starts a bridge with `args` after dropping its slot and publication, and waits until it streams.
pub async fn start_bridge_with(args: BridgeArgs) -> (Bridge, BridgeArgs) {
    let pg = pg().await;
    drop_slot_and_publication(&pg, &args.slot, &args.publication).await;
    let bridge = Bridge::start(&args);
    bridge
        .wait_for_log("streaming", Duration::from_secs(60))
        .await;
    (bridge, args)
}

/// A plain HTTP/1.1 GET; returns the status code and body.
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of the first sample of `metric` whose line contains every one of `labels`.
pub fn metric_value(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(metric))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
