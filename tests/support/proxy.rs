//! A TCP proxy a test can pause: while paused it moves no bytes in either direction
//! and keeps every connection open, so the clients behind it see a network that has
//! stopped, not a refused connection.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy from `127.0.0.1:<listen>` to `127.0.0.1:<target>`; stops when dropped.
pub struct Proxy {
    paused: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` and forwards every connection to `target`.
    pub async fn start(listen: u16, target: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", listen))
            .await
            .unwrap_or_else(|e| panic!("proxy cannot listen on {listen}: {e}"));
        let paused = Arc::new(watch::channel(false).0);
        let task = tokio::spawn({
            let paused = paused.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                        continue;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::spawn(pump(cr, sw, paused.subscribe()));
                    tokio::spawn(pump(sr, cw, paused.subscribe()));
                }
            }
        });
        Proxy { paused, task }
    }

    /// Stops moving bytes (or starts again).
    pub fn pause(&self, paused: bool) {
        self.paused.send_replace(paused);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, holding each chunk while the proxy is paused.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if paused.wait_for(|p| !*p).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
