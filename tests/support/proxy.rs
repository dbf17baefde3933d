//! A fault-injecting TCP proxy between a client and a server. A test sets the fault
//! while traffic flows:
//!
//! * [`Fault::None`]: bytes pass unchanged.
//! * [`Fault::Blackhole`]: connections stay open and new ones are accepted, but no
//!   byte moves in either direction: a network that has stopped, not a refused
//!   connection ([`Proxy::pause`] sets it).
//! * [`Fault::Latency`]: every chunk waits before it is passed on.
//! * [`Fault::Drip`]: at most this many bytes per second pass each way.
//! * [`Fault::Cut`]: every open connection is closed, and new ones are closed at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    Blackhole,
    Latency(Duration),
    Drip { bytes_per_second: usize },
    Cut,
}

/// A running proxy from `127.0.0.1:<listen>` to `127.0.0.1:<target>`; stops when dropped.
pub struct Proxy {
    fault: Arc<watch::Sender<Fault>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` and forwards every connection to `target`.
    pub async fn start(listen: u16, target: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", listen))
            .await
            .unwrap_or_else(|e| panic!("proxy cannot listen on {listen}: {e}"));
        let fault = Arc::new(watch::channel(Fault::None).0);
        let task = tokio::spawn({
            let fault = fault.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if *fault.borrow() == Fault::Cut {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        continue;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, fault.subscribe()));
                    tokio::spawn(pump(sr, cw, fault.subscribe()));
                }
            }
        });
        Proxy { fault, task }
    }

    /// Stops moving bytes (a blackhole), or lets them pass again.
    pub fn pause(&self, paused: bool) {
        self.set(if paused {
            Fault::Blackhole
        } else {
            Fault::None
        });
    }

    /// Sets the fault.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` under the current fault; returns (closing both halves) when
/// either side closes or the fault is [`Fault::Cut`].
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Wait out a blackhole; a cut ends the connection.
        match fault.wait_for(|f| *f != Fault::Blackhole).await {
            Ok(f) if *f == Fault::Cut => return,
            Ok(_) => {}
            Err(_) => return,
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = fault.wait_for(|f| *f == Fault::Cut) => return,
        };
        let mut sent = 0;
        while sent < n {
            let current = *fault.borrow();
            let chunk = match current {
                Fault::Cut => return,
                Fault::Blackhole => {
                    if fault.wait_for(|f| *f != Fault::Blackhole).await.is_err() {
                        return;
                    }
                    continue;
                }
                Fault::None => n - sent,
                Fault::Latency(d) => {
                    tokio::time::sleep(d).await;
                    n - sent
                }
                Fault::Drip { bytes_per_second } => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    (bytes_per_second / 10).clamp(1, n - sent)
                }
            };
            if to.write_all(&buf[sent..sent + chunk]).await.is_err() {
                return;
            }
            sent += chunk;
        }
    }
}
