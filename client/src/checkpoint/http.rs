//! Checkpoints over HTTP: a cache that has a checkpoint serves the newest one at
//! `GET /checkpoints/{topic}` ([`router`], [`serve`]), and a starting cache fetches
//! one from such a URL ([`download`]) instead of scanning the table.
//!
//! HTTP because every deployment can already route, balance, proxy and secure it (an
//! HTTPS URL is fetched with rustls and the webpki roots), and because a static file
//! server or an object store's URL serves a checkpoint file just as well as a cache
//! does. A checkpoint holds a whole table, so neither side ever holds it in memory:
//! the server streams the file from one open handle (so a prune that deletes the file
//! meanwhile does not cut a download short), and the client streams the body into a
//! hidden temporary file in the checkpoint directory (or the system's temporary
//! directory). The caller checks that file, loads it and removes it; a download that
//! fails or is cut short leaves nothing behind, and one a crash interrupted is removed
//! by the next prune of that directory after an hour.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::io::{AsyncWriteExt, BufWriter};
use tracing::{debug, info, warn};

/// The response header naming the checkpoint file a server sent.
const CHECKPOINT_HEADER: HeaderName = HeaderName::from_static("x-tidemark-checkpoint");

/// Bytes buffered between the network and the temporary file.
const WRITE_BUFFER: usize = 256 * 1024;

/// Bytes read from a checkpoint file per body chunk.
const READ_CHUNK: usize = 64 * 1024;

/// Fetches `url` (`http://` or `https://`) into a new hidden file
/// `into/.download-<uuid>.tmp`, creating `into` if missing, and returns its path.
///
/// The body is streamed to the file, never held in memory; the whole request,
/// connection to last byte, is bounded by `timeout`. A user name and password in the
/// URL are sent as basic authentication. The error names the URL without its
/// password and says why: no connection, timeout, a status other than 2xx (404 says
/// the server has no checkpoint), or a body cut short. On error no file is left.
pub(crate) async fn download(url: &str, into: &Path, timeout: Duration) -> Result<PathBuf, String> {
    let shown = tidemark_core::secrets::redact_url(url);
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{shown}: not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{shown}: only http:// and https:// URLs can be fetched"
        ));
    }
    tokio::fs::create_dir_all(into)
        .await
        .map_err(|e| format!("{shown}: cannot create {}: {e}", into.display()))?;
    let path = into.join(format!(".download-{}.tmp", uuid::Uuid::now_v7()));
    let outcome = match tokio::time::timeout(timeout, fetch(parsed, &path)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    };
    match outcome {
        Ok(bytes) => {
            info!(url = %shown, bytes, file = %path.display(), "downloaded a checkpoint");
            Ok(path)
        }
        Err(cause) => {
            if let Err(e) = tokio::fs::remove_file(&path).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(file = %path.display(), error = %e, "cannot remove a partial download");
                }
            }
            debug!(url = %shown, %cause, "checkpoint download failed");
            Err(format!("{shown}: {cause}"))
        }
    }
}

/// GETs `url` and writes its body to the new file `path`; returns the bytes written.
async fn fetch(url: reqwest::Url, path: &Path) -> Result<u64, String> {
    let client = reqwest::Client::builder()
        .user_agent(concat!("tidemark/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(describe)?;
    let mut response = client.get(url).send().await.map_err(describe)?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err("the server has no checkpoint (404)".into());
    }
    if !status.is_success() {
        return Err(format!("the server answered HTTP {status}"));
    }
    let expected = response.content_length();
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    let written_err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut written = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(describe)? {
        out.write_all(&chunk).await.map_err(written_err)?;
        written += chunk.len() as u64;
    }
    if let Some(expected) = expected.filter(|&n| n != written) {
        return Err(format!(
            "the body was cut short ({written} of {expected} bytes)"
        ));
    }
    out.flush().await.map_err(written_err)?;
    out.into_inner().sync_all().await.map_err(written_err)?;
    Ok(written)
}

/// A reqwest error as a cause, without its URL (which may hold a password).
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the body was cut short"
    } else if e.is_redirect() {
        "cannot follow a redirect"
    } else {
        "the request failed"
    };
    format!("{kind} ({})", chain(&e.without_url()))
}

/// An error and its sources, each once.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(source) = next {
        let more = source.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        next = source.source();
    }
    text
}

/// What the checkpoint route serves.
#[derive(Clone)]
struct Served {
    dir: Arc<Path>,
    topic: Arc<str>,
}

/// A router with one route, `GET /checkpoints/{topic}`, answering with the newest
/// checkpoint of `topic` in `dir`, streamed, with its length and its file name in
/// the `x-tidemark-checkpoint` header; 404 and a plain-text reason for another topic
/// or while there is no checkpoint yet. Mount it in the host service's own axum
/// server, or let [`serve`] run one.
pub fn router(dir: PathBuf, topic: String) -> axum::Router {
    let served = Served {
        dir: dir.into(),
        topic: topic.into(),
    };
    axum::Router::new()
        .route("/checkpoints/{topic}", get(checkpoint))
        .with_state(served)
}

async fn checkpoint(State(served): State<Served>, UrlPath(topic): UrlPath<String>) -> Response {
    if topic != *served.topic {
        return no_checkpoint(&topic);
    }
    match open_newest(&served.dir, &served.topic).await {
        Ok(Some((name, file, len))) => {
            debug!(file = %name, bytes = len, "serving a checkpoint");
            let mut headers = HeaderMap::new();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            if let Ok(value) = HeaderValue::from_str(&name) {
                headers.insert(CHECKPOINT_HEADER, value);
            }
            let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
                file, READ_CHUNK,
            ));
            (headers, body).into_response()
        }
        Ok(None) => no_checkpoint(&topic),
        Err(e) => {
            warn!(dir = %served.dir.display(), error = %e, "cannot open a checkpoint to serve");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the checkpoint\n",
            )
                .into_response()
        }
    }
}

fn no_checkpoint(topic: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no checkpoint yet for topic {topic}\n"),
    )
        .into_response()
}

/// The newest checkpoint of `topic` in `dir`, opened: its file name, the handle and
/// its length. A file pruned between the listing and the open is skipped by listing
/// again.
async fn open_newest(
    dir: &Path,
    topic: &str,
) -> std::io::Result<Option<(String, tokio::fs::File, u64)>> {
    for _ in 0..3 {
        let (d, t) = (dir.to_owned(), topic.to_owned());
        let Some(path) = tokio::task::spawn_blocking(move || newest(&d, &t))
            .await
            .map_err(std::io::Error::other)?
        else {
            return Ok(None);
        };
        match tokio::fs::File::open(&path).await {
            Ok(file) => {
                let len = file.metadata().await?.len();
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Ok(Some((name, file, len)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The newest checkpoint file of `topic` in `dir`.
fn newest(dir: &Path, topic: &str) -> Option<PathBuf> {
    super::store::newest_first(dir, topic)
        .ok()?
        .into_iter()
        .next()
}

/// A running checkpoint server; stops when dropped.
///
/// Dropping it stops accepting connections; downloads in progress run to their end.
pub struct CheckpointServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl CheckpointServer {
    /// The address the server listens on (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL of `topic`'s checkpoint on this server, `http://<addr>/checkpoints/<topic>`.
    /// When the server listens on an unspecified address (`0.0.0.0`, `[::]`) other
    /// hosts reach it by one of this host's names instead.
    pub fn url(&self, topic: &str) -> String {
        format!("http://{}/checkpoints/{topic}", self.addr)
    }
}

impl Drop for CheckpointServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves [`router`]`(dir, topic)` over plain HTTP on `addr` (port 0 picks a free
/// port, see [`CheckpointServer::local_addr`]) from a task on the current tokio
/// runtime, until the returned [`CheckpointServer`] is dropped.
pub async fn serve(
    dir: PathBuf,
    topic: String,
    addr: SocketAddr,
) -> std::io::Result<CheckpointServer> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    info!(%addr, %topic, dir = %dir.display(), "serving checkpoints");
    let app = router(dir, topic);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            warn!(%addr, error = %e, "the checkpoint server stopped");
        }
    });
    Ok(CheckpointServer {
        addr,
        stop: Some(stop),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A directory removed at the end of the test.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("tidemark-http-{}", uuid::Uuid::now_v7()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const MB3: usize = 3 * 1024 * 1024;

    fn bytes(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn entries(dir: &Path) -> Vec<String> {
        match std::fs::read_dir(dir) {
            Ok(list) => list
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Two checkpoints of `t.x`, one of `t.xy` (whose name sorts after both), and
    /// files that are not checkpoints. Returns the newest `t.x` content.
    fn fill(dir: &Path) -> Vec<u8> {
        let newest = bytes(2, MB3);
        std::fs::write(dir.join("t.x@1700000000000@a.ckpt"), bytes(1, MB3)).unwrap();
        std::fs::write(dir.join("t.x@1700000000001@b.ckpt"), &newest).unwrap();
        std::fs::write(dir.join("t.xy@1700000000002@c.ckpt"), bytes(3, 1000)).unwrap();
        std::fs::write(dir.join("t.x@1700000000003@d.ckpt.tmp"), b"partial").unwrap();
        std::fs::write(dir.join("t.x@1700000000004@e.txt"), b"other").unwrap();
        newest
    }

    /// A server that reads one request's head, writes `reply` and closes; an empty
    /// `reply` holds the connection open without answering.
    async fn raw_server(reply: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                head.extend_from_slice(&buf[..n]);
            }
            if reply.is_empty() {
                std::future::pending::<()>().await;
            }
            socket.write_all(reply).await.unwrap();
        });
        addr
    }

    /// A loopback port nothing listens on.
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    const TIMEOUT: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn downloads_the_newest_checkpoint_of_the_topic() {
        let served = TempDir::new();
        let newest = fill(&served.0);
        let server = serve(
            served.0.clone(),
            "t.x".into(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        assert_ne!(server.local_addr().port(), 0);
        let into = TempDir::new();
        let target = into.0.join("not/yet");
        let path = download(&server.url("t.x"), &target, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(path.parent(), Some(target.as_path()));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(".download-") && name.ends_with(".tmp"),
            "{name}"
        );
        assert!(std::fs::read(&path).unwrap() == newest);
        assert_eq!(entries(&target), vec![name.to_string()]);
    }

    #[tokio::test]
    async fn a_download_in_progress_outlives_a_prune() {
        let served = TempDir::new();
        let newest = fill(&served.0);
        let server = serve(
            served.0.clone(),
            "t.x".into(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let response = reqwest::get(server.url("t.x")).await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let name = "t.x@1700000000001@b.ckpt";
        assert_eq!(response.headers()[CHECKPOINT_HEADER.as_str()], name);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/octet-stream");
        assert_eq!(response.content_length(), Some(MB3 as u64));
        // The handler opened the file before the headers were sent.
        std::fs::remove_file(served.0.join(name)).unwrap();
        let body = response.bytes().await.unwrap();
        assert!(body.as_ref() == newest.as_slice());
    }

    #[tokio::test]
    async fn no_checkpoint_is_a_404_and_leaves_no_file() {
        let served = TempDir::new();
        fill(&served.0);
        let server = serve(
            served.0.clone(),
            "t.x".into(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let empty = serve(
            served.0.join("missing"),
            "t.x".into(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let into = TempDir::new();
        for url in [server.url("t.none"), server.url("t"), empty.url("t.x")] {
            let err = download(&url, &into.0, TIMEOUT).await.unwrap_err();
            assert!(err.contains("no checkpoint") && err.contains(&url), "{err}");
        }
        let response = reqwest::get(server.url("t.none")).await.unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND);
        assert!(response.text().await.unwrap().contains("no checkpoint yet"));
        assert!(entries(&into.0).is_empty());
    }

    #[tokio::test]
    async fn a_closed_port_fails_naming_the_url() {
        let addr = closed_port().await;
        let into = TempDir::new();
        for scheme in ["http", "https"] {
            let url = format!("{scheme}://{addr}/checkpoints/t.x");
            let err = download(&url, &into.0, TIMEOUT).await.unwrap_err();
            assert!(err.starts_with(&url), "{err}");
            assert!(err.contains("cannot connect"), "{err}");
        }
        assert!(entries(&into.0).is_empty());
    }

    #[tokio::test]
    async fn a_password_never_shows() {
        let into = TempDir::new();
        let served = TempDir::new();
        let server = serve(
            served.0.clone(),
            "t.x".into(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        for addr in [closed_port().await, server.local_addr()] {
            let url = format!("http://user:secret@{addr}/checkpoints/t.x");
            let err = download(&url, &into.0, TIMEOUT).await.unwrap_err();
            assert!(!err.contains("secret"), "{err}");
            assert!(err.contains(&format!("http://user:***@{addr}/")), "{err}");
        }
    }

    #[tokio::test]
    async fn a_short_body_fails_and_leaves_no_file() {
        let addr = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789").await;
        let into = TempDir::new();
        let err = download(&format!("http://{addr}/checkpoints/t.x"), &into.0, TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.contains("cut short"), "{err}");
        assert!(entries(&into.0).is_empty());
    }

    #[tokio::test]
    async fn another_status_is_named() {
        let addr = raw_server(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy",
        )
        .await;
        let into = TempDir::new();
        let err = download(&format!("http://{addr}/checkpoints/t.x"), &into.0, TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.contains("503"), "{err}");
        assert!(entries(&into.0).is_empty());
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let addr = raw_server(b"").await;
        let into = TempDir::new();
        let url = format!("http://{addr}/checkpoints/t.x");
        let err = download(&url, &into.0, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.starts_with(&url) && err.contains("timed out"), "{err}");
        assert!(entries(&into.0).is_empty());
    }

    #[tokio::test]
    async fn only_http_urls() {
        let into = TempDir::new();
        let err = download("ftp://host/x", &into.0, TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.contains("only http"), "{err}");
        let err = download("not a url", &into.0, TIMEOUT).await.unwrap_err();
        assert!(err.contains("not a URL"), "{err}");
    }
}
