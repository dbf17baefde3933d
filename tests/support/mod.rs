//! Shared helpers of the end-to-end tests: the services, the bridge process, and
//! reading topics back.
//!
//! The tests need PostgreSQL with `wal_level=logical` and a Kafka-protocol broker;
//! `scripts/dev-stack.sh up` starts both. A test that cannot reach them fails and says
//! so; it never skips. Each test uses its own tables, slot, publication and topic
//! prefix, so tests run in parallel and a rerun starts clean.

#![allow(dead_code)]

pub mod race;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use tokio_postgres::{Client, NoTls};

/// Where the tests find PostgreSQL.
pub fn pg_url() -> String {
    std::env::var("TIDEMARK_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Where the tests find the broker.
pub fn kafka() -> String {
    std::env::var("TIDEMARK_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

const START_STACK: &str = "start the development stack with: scripts/dev-stack.sh up";

/// A connection to the test database. Also starts the tests' log output (once):
/// `RUST_LOG` selects it, warnings by default.
pub async fn pg() -> Client {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    pg_at(&pg_url()).await
}

/// A connection to `url`.
pub async fn pg_at(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url} ({e}); {START_STACK}"));
    tokio::spawn(conn);
    client
}

/// A name unique to this test run, for tables, slots and topics.
pub fn unique(base: &str) -> String {
    format!("{base}_{}", rand::random::<u32>() % 1_000_000)
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The slot's confirmed flush LSN as a number.
pub async fn confirmed_flush(pg: &Client, slot: &str) -> Option<u64> {
    pg.query_opt(
        "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .expect("query pg_replication_slots")
    .and_then(|r| r.get::<_, Option<i64>>(0))
    .map(|v| v as u64)
}

/// The server's current WAL LSN as a number.
pub async fn current_lsn(pg: &Client) -> u64 {
    pg.query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await
        .expect("pg_current_wal_lsn")
        .get::<_, i64>(0) as u64
}

/// Drops a replication slot and publication left by an earlier run.
pub async fn drop_slot_and_publication(pg: &Client, slot: &str, publication: &str) {
    let _ = pg
        .execute(
            "SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await;
    let _ = pg
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS \"{publication}\""))
        .await;
}

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
        }
    }

    /// The topic of `table` (schema.table).
    pub fn topic(&self, table: &str) -> String {
        format!("{}.{table}", self.prefix)
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
        let child = Command::new(bridge_bin())
            .args(["--postgres", &args.postgres, "--kafka", &args.kafka])
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

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Value,
    /// `None` for a tombstone.
    pub value: Option<Value>,
}

/// A consumer for reading topics back (no group, manual assignment).
pub fn consumer(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.auto.commit", "false")
        .set("group.id", "tidemark-tests-unused")
        .create()
        .unwrap_or_else(|e| {
            panic!("cannot create a Kafka consumer for {brokers} ({e}); {START_STACK}")
        })
}

/// Every record of `topic`, partition by partition, up to the current high watermarks.
pub fn read_topic(brokers: &str, topic: &str) -> Vec<Rec> {
    let c = consumer(brokers);
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("broker {brokers} unreachable ({e}); {START_STACK}"));
    let parts: Vec<i32> = md
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    let mut highs = HashMap::new();
    for &p in &parts {
        let (low, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .expect("assign");
            highs.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if highs.is_empty() {
        return out;
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut done: HashMap<i32, bool> = highs.keys().map(|&p| (p, false)).collect();
    while done.values().any(|d| !d) {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        let Some(msg) = c.poll(Duration::from_millis(500)) else {
            continue;
        };
        let msg = msg.expect("consume");
        let p = msg.partition();
        if msg.offset() + 1 >= highs[&p] {
            done.insert(p, true);
        }
        if msg.offset() >= highs[&p] {
            continue;
        }
        out.push(Rec {
            partition: p,
            offset: msg.offset(),
            timestamp_ms: msg.timestamp().to_millis(),
            key: serde_json::from_slice(msg.key().unwrap_or(b"null")).expect("key is JSON"),
            value: msg
                .payload()
                .map(|v| serde_json::from_slice(v).expect("value is JSON")),
        });
    }
    out
}

/// Waits until `topic` holds at least `n` records and returns them.
pub async fn wait_for_records(brokers: &str, topic: &str, n: usize, timeout: Duration) -> Vec<Rec> {
    let deadline = Instant::now() + timeout;
    loop {
        let (b, t) = (brokers.to_string(), topic.to_string());
        let recs = tokio::task::spawn_blocking(move || read_topic(&b, &t))
            .await
            .expect("read_topic");
        if recs.len() >= n {
            return recs;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} has {} records after {timeout:?}, expected {n}",
            recs.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
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
    wait_for(
        Duration::from_secs(60),
        "the bridge to start streaming",
        || async { bridge.log_text().contains("streaming").then_some(()) },
    )
    .await;
    (bridge, args)
}

/// Runs a command as the `postgres` OS user when we are root (initdb refuses root).
fn as_postgres_user(program: &str, args: &[&str]) -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

/// A throwaway PostgreSQL server of its own, for settings the shared one must not
/// change (such as `wal_level=replica`). Stopped and removed when dropped.
pub struct ScratchPostgres {
    dir: PathBuf,
    bin: PathBuf,
    pub url: String,
}

impl ScratchPostgres {
    /// Creates and starts a server on `port` with the given `wal_level`.
    pub fn start(port: u16, wal_level: &str) -> ScratchPostgres {
        Self::launch(port, &format!("-c wal_level={wal_level}"), |_, _| {})
    }

    /// Creates and starts a server on `port` with `ssl=on` (a certificate for
    /// `localhost` and 127.0.0.1, signed by a throwaway CA, see [`Self::ca_pem`]),
    /// `wal_level=logical`, and TCP connections, replication included, allowed only
    /// over TLS (`hostssl`, trust).
    pub fn start_tls(port: u16) -> ScratchPostgres {
        let opts = "-c wal_level=logical -c max_replication_slots=4 -c max_wal_senders=4 \
                    -c ssl=on -c ssl_cert_file=../server.crt -c ssl_key_file=../server.key";
        Self::launch(port, opts, |dir, data| {
            make_certificates(dir);
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\n\
                 local replication all trust\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostssl replication all 127.0.0.1/32 trust\n",
            )
            .expect("write pg_hba.conf");
        })
    }

    /// The CA that signed a [`Self::start_tls`] server's certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that did not sign the server's certificate.
    pub fn other_ca_pem(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// initdb, then `prepare(dir, data)`, then `pg_ctl start` with `opts`.
    fn launch(
        port: u16,
        opts: &str,
        prepare: impl FnOnce(&std::path::Path, &std::path::Path),
    ) -> ScratchPostgres {
        let bin = PathBuf::from(
            String::from_utf8(
                Command::new("pg_config")
                    .arg("--bindir")
                    .output()
                    .expect("pg_config")
                    .stdout,
            )
            .expect("utf8")
            .trim(),
        );
        let bin = if bin.join("initdb").exists() {
            bin
        } else {
            PathBuf::from("/usr/lib/postgresql/15/bin")
        };
        let dir = std::env::temp_dir().join(format!(
            "tidemark-scratch-pg-{port}-{}",
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let _ = Command::new("chown")
            .args(["postgres:", dir.to_str().unwrap()])
            .status();
        let data = dir.join("data");
        let initdb = bin.join("initdb");
        let ok = as_postgres_user(
            initdb.to_str().unwrap(),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
            ],
        )
        .stdout(Stdio::null())
        .status()
        .expect("initdb");
        assert!(ok.success(), "initdb failed");
        prepare(&dir, &data);
        let opts = format!(
            "-p {port} {opts} -c listen_addresses=127.0.0.1 -k {}",
            dir.display()
        );
        let pg_ctl = bin.join("pg_ctl");
        let ok = as_postgres_user(
            pg_ctl.to_str().unwrap(),
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                dir.join("log").to_str().unwrap(),
                "-w",
                "start",
            ],
        )
        .stdout(Stdio::null())
        .status()
        .expect("pg_ctl start");
        assert!(
            ok.success(),
            "pg_ctl start failed; server log:\n{}",
            std::fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        ScratchPostgres {
            dir,
            bin,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        }
    }
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}); install it: apt-get install openssl")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes into `dir`: `ca.pem` (a self-signed CA), `server.crt`/`server.key` (signed
/// by it, for `localhost` and 127.0.0.1; the key readable by the postgres user only)
/// and `other-ca.pem` (an unrelated CA).
fn make_certificates(dir: &std::path::Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [
        ("ca", "tidemark test CA"),
        ("other-ca", "tidemark other CA"),
    ] {
        let (key, pem, subj) = (
            format!("{name}.key"),
            format!("{name}.pem"),
            format!("/CN={cn}"),
        );
        let mut args = vec![
            "req", "-x509", "-days", "2", "-subj", &subj, "-keyout", &key, "-out", &pem,
        ];
        args.extend(ec);
        args.extend([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &args);
    }
    let mut args = vec![
        "req",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    args.extend(ec);
    openssl(dir, &args);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ],
    );
    let key = dir.join("server.key");
    let _ = Command::new("chown")
        .args(["postgres:", key.to_str().unwrap()])
        .status();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .expect("chmod server.key");
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.dir.join("data");
        let _ = as_postgres_user(
            pg_ctl.to_str().unwrap(),
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        )
        .stdout(Stdio::null())
        .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Kafka node of its own, for tests that stop and start it without disturbing the
/// shared one: `scripts/dev-stack.sh node-start` / `node-stop`, the same broker and
/// settings as the shared node, on `port` and with its own data directory. Data
/// survives [`PrivateBroker::stop`].
pub struct PrivateBroker {
    dir: PathBuf,
    port: u16,
    running: bool,
}

impl PrivateBroker {
    /// Starts a broker on `port` with a fresh data directory.
    pub async fn start(port: u16) -> PrivateBroker {
        let dir =
            std::env::temp_dir().join(format!("tidemark-broker-{port}-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let mut b = PrivateBroker {
            dir,
            port,
            running: false,
        };
        b.resume().await;
        b
    }

    /// The bootstrap address.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker again on the same data; returns once it listens.
    pub async fn resume(&mut self) {
        let (port, dir) = (self.port.to_string(), self.dir.clone());
        let status = tokio::task::spawn_blocking(move || {
            dev_stack(&["node-start", &port, dir.to_str().expect("utf-8 path")])
        })
        .await
        .expect("node-start");
        assert!(
            status.success(),
            "scripts/dev-stack.sh node-start {} failed; its log: {}",
            self.port,
            self.dir.join("kafka.log").display()
        );
        self.running = true;
    }

    /// Stops the broker (SIGTERM, a clean shutdown); its data stays.
    pub fn stop(&mut self) {
        if std::mem::take(&mut self.running) {
            let status = dev_stack(&["node-stop", self.dir.to_str().expect("utf-8 path")]);
            assert!(status.success(), "scripts/dev-stack.sh node-stop failed");
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if std::mem::take(&mut self.running) {
            let _ = dev_stack(&["node-stop", self.dir.to_str().unwrap_or_default()]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `scripts/dev-stack.sh` with `args`, its output going to the test's.
fn dev_stack(args: &[&str]) -> ExitStatus {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/dev-stack.sh");
    Command::new("bash")
        .arg(&script)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {} ({e})", script.display()))
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
