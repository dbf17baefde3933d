//! The services a benchmark runs against, and small helpers around them: the
//! database, the bridge process, topics, and timing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use tokio_postgres::{Client, NoTls};

/// Where the benchmarks find the services.
#[derive(Clone, Debug)]
pub struct Env {
    pub postgres: String,
    pub kafka: String,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Env {
    /// A new connection with `synchronous_commit=off` (the benchmarks measure
    /// tidemark, not the disk's fsync).
    pub async fn pg(&self) -> Result<Client, BoxError> {
        let (client, conn) = tokio_postgres::connect(&self.postgres, NoTls)
            .await
            .map_err(|e| {
                format!(
                    "PostgreSQL at {} ({e}); run scripts/dev-stack.sh up",
                    self.postgres
                )
            })?;
        tokio::spawn(conn);
        client.batch_execute("SET synchronous_commit = off").await?;
        Ok(client)
    }

    /// A consumer for watermarks and reading.
    pub fn consumer(&self) -> Result<BaseConsumer, BoxError> {
        Ok(ClientConfig::new()
            .set("bootstrap.servers", &self.kafka)
            .set("group.id", "tidemark-bench-unused")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "5")
            .create()?)
    }

    /// Sum of the high watermarks of `topic`'s partitions (0 if it does not exist).
    pub fn records_in(&self, consumer: &BaseConsumer, topic: &str) -> i64 {
        let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
            return 0;
        };
        md.topics()
            .iter()
            .flat_map(|t| t.partitions())
            .filter_map(|p| {
                consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                    .ok()
            })
            .map(|(_, high)| high)
            .sum()
    }

    /// Creates a topic (compacted, like the bridge's).
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), BoxError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka)
            .create()?;
        let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact");
        admin.create_topics(&[t], &AdminOptions::new()).await?;
        Ok(())
    }
}

/// Drops a slot and publication if they exist.
pub async fn drop_slot(pg: &Client, slot: &str) {
    let _ = pg
        .execute(
            "SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await;
}

/// The server's current WAL LSN.
pub async fn current_lsn(pg: &Client) -> Result<u64, BoxError> {
    Ok(pg
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await?
        .get::<_, i64>(0) as u64)
}

/// A bridge process.
pub struct BridgeProcess {
    child: Child,
    log: PathBuf,
}

impl BridgeProcess {
    /// Starts the release bridge binary next to this one and waits until it streams.
    pub async fn start(
        env: &Env,
        name: &str,
        table: &str,
        partitions: u32,
    ) -> Result<Self, BoxError> {
        Self::start_with(env, name, table, partitions, &[]).await
    }

    /// [`BridgeProcess::start`] with `extra` flags.
    pub async fn start_with(
        env: &Env,
        name: &str,
        table: &str,
        partitions: u32,
        extra: &[&str],
    ) -> Result<Self, BoxError> {
        let exe = std::env::current_exe()?;
        let bin = exe.with_file_name("tidemark-bridge");
        if !bin.exists() {
            return Err(format!(
                "{} is missing: build it with cargo build --release -p tidemark-bridge",
                bin.display()
            )
            .into());
        }
        let log = std::env::temp_dir().join(format!(
            "tidemark-bench-{name}-{}.log",
            rand::random::<u32>()
        ));
        let child = Command::new(bin)
            .args([
                "--postgres",
                &env.postgres,
                "--kafka",
                &env.kafka,
                "--tables",
                table,
            ])
            .args([
                "--slot",
                &format!("{name}_slot"),
                "--publication",
                &format!("{name}_pub"),
            ])
            .args([
                "--topic-prefix",
                name,
                "--partitions",
                &partitions.to_string(),
            ])
            .args(extra)
            // The figures are of streaming and of the caches' warm starts; an initial
            // snapshot of the benchmark tables would only fill the topics first.
            .args(["--snapshot", "never"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let b = BridgeProcess { child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !b.log_text().contains("streaming") {
            if Instant::now() > deadline {
                return Err(format!("the bridge did not start: {}", b.log_text()).into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(b)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait.
    pub fn stop(mut self) -> Result<(), BoxError> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Median of a few measurements.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    if xs.is_empty() {
        return f64::NAN;
    }
    xs[xs.len() / 2]
}

/// The value at quantile `q` (0..=1) of sorted `xs`.
pub fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs[((xs.len() - 1) as f64 * q).round() as usize]
}

/// Runs `cmd` with its output discarded; returns its wall time and its peak resident
/// set in bytes: the highest `VmHWM` in `/proc/<pid>/status`, read every 10 ms until it
/// exits. (`wait4`'s `ru_maxrss` would not do: a child started by `vfork` or `fork`
/// counts the parent's resident set from before its `exec`, so it reports at least the
/// benchmark process's own peak.)
pub fn time_and_peak(cmd: &mut Command) -> Result<(Duration, u64), BoxError> {
    let t = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).spawn()?;
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let hwm = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .unwrap_or(0);
        peak_kib = peak_kib.max(hwm);
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t.elapsed();
    if !status.success() {
        return Err(format!("{cmd:?} failed: {status}").into());
    }
    Ok((took, peak_kib * 1024))
}

/// Runs `cmd` with its output discarded; returns its wall time.
pub fn time_command(cmd: &mut Command) -> Result<Duration, BoxError> {
    let t = Instant::now();
    let status = cmd.stdout(Stdio::null()).status()?;
    if !status.success() {
        return Err(format!("{cmd:?} failed: {status}").into());
    }
    Ok(t.elapsed())
}

/// Waits (at most `limit`) until the machine's CPUs were less than 10 % busy over
/// half a second, and returns how long that took. On two cores a run and its
/// reference compete with whatever else runs, such as the previous run's teardown
/// (freeing a million rows keeps a core busy for a second or two). A machine that
/// stays busy is measured anyway, and said so.
pub async fn wait_until_idle(limit: Duration) -> Duration {
    /// Busy and total jiffies of all CPUs, from the first line of `/proc/stat`.
    fn jiffies() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let counts: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|n| n.parse().ok())
            .collect();
        let total: u64 = counts.iter().sum();
        // idle and iowait are the 4th and 5th counts.
        let idle = counts.get(3)? + counts.get(4).unwrap_or(&0);
        Some((total.saturating_sub(idle), total))
    }
    let started = Instant::now();
    let mut busy_share = 1.0;
    while started.elapsed() < limit {
        let Some((busy0, total0)) = jiffies() else {
            return started.elapsed();
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some((busy1, total1)) = jiffies() else {
            return started.elapsed();
        };
        // iowait may go backwards (proc(5)), so neither difference may wrap.
        busy_share =
            busy1.saturating_sub(busy0) as f64 / total1.saturating_sub(total0).max(1) as f64;
        if busy_share < 0.10 {
            return started.elapsed();
        }
    }
    eprintln!(
        "    the machine stayed {:.0} % busy for {} s; measuring anyway",
        busy_share * 100.0,
        limit.as_secs()
    );
    started.elapsed()
}
