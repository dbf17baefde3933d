//! The checkpoint file: written as a stream, checked before it is read, and read by
//! several threads at once.
//!
//! ```text
//! "tidemark.ckpt\n"            14 bytes, the magic
//! format version               u32, little-endian (FORMAT_VERSION)
//! header length                u32, little-endian
//! header                       JSON (`Header`): table, topic, shape, positions
//! items                        postcard `Item::Row`, one per row, then one `Item::End`
//! checksum                     u32, little-endian: CRC-32 of every byte before it
//! ```
//!
//! The header is JSON so that an operator can read it with `head -c`; the rows are
//! postcard frames (a varint length before each string), whose keys and values are
//! JSON objects in the wire format's encoding, as the writer's key and value types
//! serialise them (all columns for `Row`, the type's fields for a struct; the header
//! lists them). A reader needs neither the writer's types nor its version; which value
//! types may read which rows is the restore's rule (`checkpoint`).
//!
//! The checksum covers the whole file and is checked in a first pass before any row
//! is used, so a damaged file never puts a row in the map; the second pass (served by
//! the page cache) decodes. Neither pass holds more than a few chunks in memory.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use serde::{Deserialize, Serialize};
use tidemark_core::wire::envelope::{Position, SlotMarker};

/// The first bytes of every checkpoint.
pub(crate) const MAGIC: &[u8; 14] = b"tidemark.ckpt\n";

/// The format this version writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// The longest header a reader accepts (it holds a few lines per partition).
const MAX_HEADER: u32 = 64 << 20;

/// How many bytes of rows one decoding task takes at a time.
const CHUNK: usize = 4 << 20;

/// What a checkpoint says besides its rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Header {
    /// `schema.table`.
    pub table: String,
    /// The topic followed.
    pub topic: String,
    /// The table's columns and key when the checkpoint was taken.
    pub shape: Shape,
    /// The follower's state, one entry per partition, in partition order.
    pub partitions: Vec<PartitionState>,
    /// The WAL position sampled before the load the rows descend from: a slot marker
    /// beyond it means changes may be missing from the topic (see `follow`).
    pub start_lsn: u64,
    /// The newest slot marker the follower had passed, if any.
    pub slot_marker: Option<SlotMarker>,
    /// When the checkpoint was taken, milliseconds since the epoch.
    pub taken_ms: i64,
    /// The cache instance that took it.
    pub instance: String,
    /// The fields of the stored values (the value type's, serialised), sorted; when
    /// they do not include every column, a reader whose value type reads another
    /// field refuses the checkpoint.
    pub value_fields: Vec<String>,
    /// The value format of the records the rows follow
    /// ([`ValueFormat::describe`](tidemark_core::wire::ValueFormat::describe)): the
    /// rows hold values as that format encodes them. Checkpoints written before it
    /// was recorded read as the default format's.
    #[serde(default = "default_value_format")]
    pub value_format: String,
}

/// The value format of a checkpoint that does not name one.
fn default_value_format() -> String {
    tidemark_core::wire::ValueFormat::Tidemark.describe()
}

/// A table's shape as a checkpoint records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Shape {
    /// `(name, SQL type)` of every column, in order.
    pub columns: Vec<(String, String)>,
    /// The primary key's column names, in key order.
    pub key: Vec<String>,
}

/// The follower's state on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartitionState {
    pub partition: i32,
    /// The next offset to read.
    pub next_offset: i64,
    /// The position of the last record applied (de-duplication).
    pub last: Option<Position>,
    /// The snapshot filter, while it is still on.
    pub filter: Option<Filter>,
    /// Every record of the partition with a timestamp (its commit time) before this
    /// one (ms since the epoch) is below `next_offset`: the cache had read them.
    pub seen_until_ms: i64,
}

/// A snapshot filter that is still on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Filter {
    /// `pg_current_snapshot()` text: `xmin:xmax:xip,...`.
    pub snapshot: String,
    pub insert_lsn: u64,
}

/// One frame after the header.
#[derive(Debug, Serialize, Deserialize)]
enum Item<'a> {
    /// A row: its partition, its key and value as wire-format JSON, and the copy of
    /// its values that may come back as unchanged TOAST.
    Row {
        partition: i32,
        key: &'a str,
        value: &'a str,
        toast: Option<&'a str>,
    },
    /// The end of the rows.
    End { rows: u64 },
}

/// [`Item`] as the reader cuts frames: the same encoding (postcard writes `&str` as
/// bytes with their length), without checking the strings, which the decoding
/// threads do.
#[derive(Debug, Deserialize)]
enum Frame<'a> {
    #[allow(dead_code)]
    Row {
        partition: i32,
        key: &'a [u8],
        value: &'a [u8],
        toast: Option<&'a [u8]>,
    },
    End {
        rows: u64,
    },
}

/// One row as the reader hands it over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowRef<'a> {
    pub partition: i32,
    pub key: &'a str,
    pub value: &'a str,
    pub toast: Option<&'a str>,
}

/// Why a file is not a usable checkpoint.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
    #[error("it is damaged: {0}")]
    Damaged(String),
    #[error(
        "it has format version {found}; this version of tidemark reads version {FORMAT_VERSION}"
    )]
    Version { found: u32 },
    /// The callback refused a row.
    #[error("{0}")]
    Row(String),
}

/// Writes a checkpoint to `out`: the header, then each row given to [`Writer::row`],
/// then [`Writer::finish`] for the end and the checksum.
pub(crate) struct Writer<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    rows: u64,
    frame: Vec<u8>,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, header: &Header) -> io::Result<Self> {
        let mut w = Writer {
            out,
            crc: crc32fast::Hasher::new(),
            rows: 0,
            frame: Vec::with_capacity(1024),
        };
        let json = serde_json::to_vec(header)?;
        w.put(MAGIC)?;
        w.put(&FORMAT_VERSION.to_le_bytes())?;
        w.put(&(json.len() as u32).to_le_bytes())?;
        w.put(&json)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)
    }

    fn item(&mut self, item: &Item<'_>) -> io::Result<()> {
        let mut frame = std::mem::take(&mut self.frame);
        frame.clear();
        let frame = postcard::to_extend(item, frame)
            .map_err(|e| io::Error::other(format!("encoding a checkpoint frame: {e}")))?;
        let written = self.put(&frame);
        self.frame = frame;
        written
    }

    /// Writes one row.
    pub fn row(&mut self, row: RowRef<'_>) -> io::Result<()> {
        self.rows += 1;
        self.item(&Item::Row {
            partition: row.partition,
            key: row.key,
            value: row.value,
            toast: row.toast,
        })
    }

    /// Writes the end and the checksum; returns the output and the number of rows.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        let rows = self.rows;
        self.item(&Item::End { rows })?;
        let crc = std::mem::take(&mut self.crc).finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.flush()?;
        Ok((self.out, rows))
    }
}

/// Checks the file's checksum and format and reads its header. Returns the header,
/// the offset at which the rows begin, and the open file for [`read_rows`]: a file
/// removed meanwhile (pruned by another instance sharing the directory) stays
/// readable through it.
pub(crate) fn verify(path: &Path) -> Result<(Header, u64, File), ReadError> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let fixed = (MAGIC.len() + 8 + 4) as u64;
    if len < fixed {
        return Err(ReadError::Damaged(format!(
            "it is {len} bytes long, too short"
        )));
    }
    let mut start = [0u8; MAGIC.len() + 8];
    file.read_exact(&mut start)?;
    if &start[..MAGIC.len()] != MAGIC {
        return Err(ReadError::Damaged(
            "it does not begin like a tidemark checkpoint".into(),
        ));
    }
    let word =
        |at: usize| u32::from_le_bytes([start[at], start[at + 1], start[at + 2], start[at + 3]]);
    let version = word(MAGIC.len());
    let header_len = word(MAGIC.len() + 4);
    // The checksum first: a damaged version or length must not be believed.
    let mut crc = crc32fast::Hasher::new();
    crc.update(&start);
    let mut rest = (&mut file).take(len - 4 - start.len() as u64);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = rest.read(&mut buf)?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
    }
    let mut stored = [0u8; 4];
    file.seek(SeekFrom::Start(len - 4))?;
    file.read_exact(&mut stored)?;
    let (computed, stored) = (crc.finalize(), u32::from_le_bytes(stored));
    if computed != stored {
        return Err(ReadError::Damaged(format!(
            "its checksum is {stored:08x} but its bytes sum to {computed:08x}"
        )));
    }
    if version != FORMAT_VERSION {
        return Err(ReadError::Version { found: version });
    }
    if header_len > MAX_HEADER || fixed + header_len as u64 > len {
        return Err(ReadError::Damaged(format!(
            "its header length {header_len} is impossible"
        )));
    }
    let mut json = vec![0u8; header_len as usize];
    file.seek(SeekFrom::Start(start.len() as u64))?;
    file.read_exact(&mut json)?;
    let header: Header = serde_json::from_slice(&json)
        .map_err(|e| ReadError::Damaged(format!("its header does not parse: {e}")))?;
    Ok((header, start.len() as u64 + header_len as u64, file))
}

/// Reads the rows of a verified checkpoint (the file [`verify`] returned), from
/// `rows_at`, handing each to `row` on one of `threads` threads. Returns the number of
/// rows. At most `threads` chunks wait in memory besides the ones being decoded; the
/// first refused row stops the other threads, and a thread that fails or panics never
/// leaves the reader waiting (the chunks' receiver goes with the last thread).
pub(crate) fn read_rows<F>(
    file: File,
    rows_at: u64,
    threads: usize,
    row: F,
) -> Result<u64, ReadError>
where
    F: Fn(RowRef<'_>) -> Result<(), String> + Sync,
{
    let mut file = BufReader::with_capacity(1 << 20, file);
    file.seek(SeekFrom::Start(rows_at))?;
    let threads = threads.max(1);
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(threads);
    let rx = Arc::new(Mutex::new(rx));
    let failed = AtomicBool::new(false);
    let (row, failed) = (&row, &failed);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                scope.spawn(move || -> Result<u64, ReadError> {
                    let mut n = 0;
                    while !failed.load(Ordering::Relaxed) {
                        let Ok(chunk) = rx.lock().unwrap_or_else(|p| p.into_inner()).recv() else {
                            break;
                        };
                        match decode_chunk(&chunk, row) {
                            Ok(rows) => n += rows,
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(e);
                            }
                        }
                    }
                    Ok(n)
                })
            })
            .collect();
        // From here on the workers hold the only references to the receiver.
        drop(rx);
        let split = split_chunks(&mut file, |chunk| {
            !failed.load(Ordering::Relaxed) && tx.send(chunk).is_ok()
        });
        drop(tx);
        let mut rows = 0;
        let mut first_error = None;
        for w in workers {
            match w.join() {
                Ok(Ok(n)) => rows += n,
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert(ReadError::Row(
                        "a thread reading the checkpoint panicked".into(),
                    ));
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        let expected = split?;
        if expected != rows {
            return Err(ReadError::Damaged(format!(
                "it says {expected} rows but holds {rows}"
            )));
        }
        Ok(rows)
    })
}

/// Decodes one chunk of whole `Row` frames, handing each row to `row`.
fn decode_chunk<F>(chunk: &[u8], row: &F) -> Result<u64, ReadError>
where
    F: Fn(RowRef<'_>) -> Result<(), String>,
{
    let mut rest = chunk;
    let mut n = 0;
    while !rest.is_empty() {
        let (item, tail) = postcard::take_from_bytes::<Item<'_>>(rest)
            .map_err(|e| ReadError::Damaged(format!("a row frame does not parse: {e}")))?;
        rest = tail;
        if let Item::Row {
            partition,
            key,
            value,
            toast,
        } = item
        {
            row(RowRef {
                partition,
                key,
                value,
                toast,
            })
            .map_err(ReadError::Row)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Cuts the frames after the header into chunks of whole `Row` frames and hands each
/// to `send` (which returns false to stop); returns the row count the end frame states.
fn split_chunks(
    file: &mut impl Read,
    mut send: impl FnMut(Vec<u8>) -> bool,
) -> Result<u64, ReadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK * 2);
    let mut eof = false;
    loop {
        // Fill to at least CHUNK bytes (or the end of the file).
        while buf.len() < CHUNK && !eof {
            let have = buf.len();
            buf.resize(have + CHUNK, 0);
            let n = file.read(&mut buf[have..])?;
            buf.truncate(have + n);
            eof = n == 0;
        }
        // Walk whole frames; stop at the end frame or at a frame cut by the chunk.
        let mut at = 0;
        let mut end = None;
        while at < buf.len() {
            match postcard::take_from_bytes::<Frame<'_>>(&buf[at..]) {
                Ok((Frame::Row { .. }, tail)) => at = buf.len() - tail.len(),
                Ok((Frame::End { rows }, _)) => {
                    end = Some(rows);
                    break;
                }
                Err(postcard::Error::DeserializeUnexpectedEnd) if !eof => break,
                Err(e) => return Err(ReadError::Damaged(format!("a frame does not parse: {e}"))),
            }
        }
        if at == 0 && end.is_none() {
            if eof {
                return Err(ReadError::Damaged("it ends without its end frame".into()));
            }
            // One frame larger than the buffer: read more.
            let have = buf.len();
            buf.resize(have + CHUNK, 0);
            let n = file.read(&mut buf[have..])?;
            buf.truncate(have + n);
            eof = n == 0;
            continue;
        }
        let tail = buf.split_off(at);
        if !buf.is_empty() && !send(std::mem::replace(&mut buf, tail)) {
            return Err(ReadError::Row("the reading threads stopped".into()));
        }
        if buf.is_empty() {
            buf = Vec::with_capacity(CHUNK * 2);
        }
        if let Some(rows) = end {
            return Ok(rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            table: "public.t".into(),
            topic: "tidemark.public.t".into(),
            shape: Shape {
                columns: vec![("id".into(), "bigint".into()), ("v".into(), "text".into())],
                key: vec!["id".into()],
            },
            partitions: vec![PartitionState {
                partition: 0,
                next_offset: 7,
                last: Some((10, 9, 0)),
                filter: Some(Filter {
                    snapshot: "5:9:6".into(),
                    insert_lsn: 99,
                }),
                seen_until_ms: 4,
            }],
            start_lsn: 3,
            slot_marker: None,
            taken_ms: 1,
            instance: "i".into(),
            value_fields: vec!["v".into()],
            value_format: default_value_format(),
        }
    }

    fn write(path: &Path, rows: usize, value_len: usize) {
        let file = File::create(path).unwrap();
        let mut w = Writer::new(io::BufWriter::new(file), &header()).unwrap();
        let value = format!("{{\"v\":\"{}\"}}", "x".repeat(value_len));
        for i in 0..rows {
            let key = format!("{{\"id\":{i}}}");
            w.row(RowRef {
                partition: (i % 3) as i32,
                key: &key,
                value: &value,
                toast: (i % 2 == 0).then_some("{}"),
            })
            .unwrap();
        }
        w.finish().unwrap();
    }

    fn read(path: &Path) -> Result<(Header, Vec<(String, i32)>), ReadError> {
        let (h, at, file) = verify(path)?;
        let seen = std::sync::Mutex::new(Vec::new());
        read_rows(file, at, 3, |r| {
            seen.lock().unwrap().push((r.key.to_owned(), r.partition));
            Ok(())
        })?;
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        Ok((h, seen))
    }

    #[test]
    fn round_trip_across_chunks_and_threads() {
        let dir = std::env::temp_dir().join(format!("tidemark-ckpt-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a");
        // About 12 MiB: several chunks, and frames cut at chunk edges.
        write(&path, 60_000, 200);
        let (h, rows) = read(&path).unwrap();
        assert_eq!(h, header());
        assert_eq!(rows.len(), 60_000);
        // One frame larger than a chunk.
        write(&path, 3, CHUNK + 10);
        assert_eq!(read(&path).unwrap().1.len(), 3);
        // No rows.
        write(&path, 0, 1);
        assert!(read(&path).unwrap().1.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_refused_or_panicking_row_ends_the_read_without_hanging() {
        let dir = std::env::temp_dir().join(format!("tidemark-ckpt-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a");
        // Many more chunks than the channel holds.
        write(&path, 100_000, 200);
        let (_, at, file) = verify(&path).unwrap();
        let refused = read_rows(file, at, 2, |_| Err("does not fit".to_owned()));
        assert!(matches!(refused, Err(ReadError::Row(m)) if m == "does not fit"));
        let (_, at, file) = verify(&path).unwrap();
        let panicked = read_rows(file, at, 2, |r| {
            assert!(r.partition < 0, "a Deserialize impl that panics");
            Ok(())
        });
        assert!(matches!(panicked, Err(ReadError::Row(m)) if m.contains("panicked")));
        // Removed after the check: still read through the open file.
        let (_, at, file) = verify(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read_rows(file, at, 2, |_| Ok(())).unwrap(), 100_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damage_is_found_before_any_row() {
        let dir = std::env::temp_dir().join(format!("tidemark-ckpt-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a");
        write(&path, 1000, 20);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(verify(&path), Err(ReadError::Damaged(m)) if m.contains("checksum")));
        // Cut short.
        write(&path, 1000, 20);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        assert!(matches!(verify(&path), Err(ReadError::Damaged(_))));
        // Another format version, with a correct checksum.
        write(&path, 10, 20);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MAGIC.len()] = 9;
        let n = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            verify(&path),
            Err(ReadError::Version { found: 9 })
        ));
        // Not a checkpoint at all.
        std::fs::write(&path, b"hello, this is not a checkpoint").unwrap();
        assert!(matches!(verify(&path), Err(ReadError::Damaged(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
