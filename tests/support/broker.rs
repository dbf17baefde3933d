//! A Kafka node of a test's own, started and stopped through `scripts/dev-stack.sh`.

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

/// A Kafka node of its own, for tests that stop and start it without disturbing the
/// shared one: `scripts/dev-stack.sh node-start` / `node-stop`, the same broker and
/// settings as the shared node, on `port` and with its own data directory. Data
/// survives [`PrivateBroker::stop`].
pub struct PrivateBroker {
    dir: PathBuf,
    port: u16,
    running: bool,
    /// `dev-stack.sh` settings for the node (`TIDEMARK_NODE_*`).
    env: Vec<(String, String)>,
}

impl PrivateBroker {
    /// Starts a broker on `port` with a fresh data directory.
    pub async fn start(port: u16) -> PrivateBroker {
        Self::start_with(port, &[]).await
    }

    /// Starts a broker on `port` with `dev-stack.sh` node settings: for example
    /// `TIDEMARK_NODE_PROXY_PORT` (a second listener reached through a proxy) and
    /// `TIDEMARK_NODE_PROPERTIES` (broker settings, `k=v;k=v`).
    pub async fn start_with(port: u16, env: &[(&str, &str)]) -> PrivateBroker {
        let dir =
            std::env::temp_dir().join(format!("tidemark-broker-{port}-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let mut b = PrivateBroker {
            dir,
            port,
            running: false,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        b.resume().await;
        b
    }

    /// The port of the listener behind the proxy (`TIDEMARK_NODE_PROXY_PORT`).
    pub fn proxied_listener_port(&self) -> u16 {
        self.port + 2000
    }

    /// The bootstrap address.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker again on the same data; returns once it listens.
    pub async fn resume(&mut self) {
        let (port, dir, env) = (self.port.to_string(), self.dir.clone(), self.env.clone());
        let status = tokio::task::spawn_blocking(move || {
            dev_stack_with(
                &["node-start", &port, dir.to_str().expect("utf-8 path")],
                &env,
            )
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

    /// Kills the broker (SIGKILL): requests in flight get no answer, nothing is shut
    /// down cleanly. Its data stays; [`PrivateBroker::resume`] starts it again.
    pub fn kill(&mut self) {
        if std::mem::take(&mut self.running) {
            let pid_file = self.dir.join("kafka.pid");
            let pid = std::fs::read_to_string(&pid_file).expect("the node's kafka.pid");
            let pid = pid.trim();
            let status = Command::new("kill")
                .args(["-9", pid])
                .status()
                .expect("kill");
            assert!(status.success(), "kill -9 {pid} failed");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while Command::new("kill")
                .args(["-0", pid])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "Kafka (pid {pid}) still runs 30 s after SIGKILL"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = std::fs::remove_file(pid_file);
        }
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
    dev_stack_with(args, &[])
}

/// Runs `scripts/dev-stack.sh` with `args` and environment `env`.
fn dev_stack_with(args: &[&str], env: &[(String, String)]) -> ExitStatus {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/dev-stack.sh");
    Command::new("bash")
        .arg(&script)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {} ({e})", script.display()))
}
