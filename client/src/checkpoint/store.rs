//! Checkpoint files in a directory: their names, the newest first, an atomic write
//! (a hidden temporary file, `fsync`, rename, `fsync` of the directory) and pruning.
//!
//! A file is named `<topic>@<taken ms, 13 digits>@<instance>.ckpt`. Topic names hold
//! only `[A-Za-z0-9._-]`, so `@` separates the parts, and names sort by time within
//! a topic. Many instances may share one directory: each writes its own names, a
//! reader only ever sees whole files, and a file pruned while another instance reads
//! it stays readable through the handle the reader opened before reading it.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The file name suffix.
const SUFFIX: &str = ".ckpt";

/// Temporary files older than this are left-overs of a crash and are removed.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

/// The name of a checkpoint of `topic` taken at `taken_ms` by `instance`.
pub(crate) fn file_name(topic: &str, taken_ms: i64, instance: &str) -> String {
    format!("{topic}@{taken_ms:013}@{instance}{SUFFIX}")
}

/// The checkpoints of `topic` in `dir`, the newest first. A missing directory has
/// none.
pub(crate) fn newest_first(dir: &Path, topic: &str) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let prefix = format!("{topic}@");
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(SUFFIX))
        {
            // rest = "<ms>@<instance>"; the fixed-width time sorts as text.
            if rest.split('@').next().is_some_and(|ms| ms.len() == 13) {
                found.push((rest.to_owned(), entry.path()));
            }
        }
    }
    found.sort_by(|a, b| b.0.cmp(&a.0));
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Writes `name` in `dir` atomically: `write` fills a hidden temporary file, which is
/// flushed to disk and then renamed. Creates `dir` if needed.
pub(crate) fn write_atomically<T>(
    dir: &Path,
    name: &str,
    write: impl FnOnce(BufWriter<File>) -> io::Result<(BufWriter<File>, T)>,
) -> io::Result<(PathBuf, T)> {
    fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let file = File::create(&temporary)?;
        let (mut out, value) = write(BufWriter::with_capacity(1 << 20, file))?;
        out.flush()?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(value)
    })();
    let value = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = fs::remove_file(&temporary);
            return Err(e);
        }
    };
    let path = dir.join(name);
    fs::rename(&temporary, &path)?;
    // The rename is durable once the directory is.
    File::open(dir)?.sync_all()?;
    Ok((path, value))
}

/// Removes all but the newest `keep` checkpoints of `topic` in `dir`, and temporary
/// files a crash left behind (of the topic's writes, and of downloads). Returns how many checkpoints it removed.
pub(crate) fn prune(dir: &Path, topic: &str, keep: usize) -> io::Result<usize> {
    let old = newest_first(dir, topic)?;
    let mut removed = 0;
    for path in old.iter().skip(keep) {
        match fs::remove_file(path) {
            Ok(()) => removed += 1,
            // Another instance pruned it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let prefix = format!(".{topic}@");
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > STALE_TEMPORARY);
        let ours = name.starts_with(&prefix) || name.starts_with(".download-");
        if ours && name.ends_with(".tmp") && stale {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_prune_and_atomic_write() {
        let dir = std::env::temp_dir().join(format!("tidemark-store-{}", uuid::Uuid::now_v7()));
        for (topic, ms) in [
            ("t.a", 5),
            ("t.a", 40),
            ("t.a", 300),
            ("t.ab", 999),
            ("t", 1000),
        ] {
            write_atomically(&dir, &file_name(topic, ms, "i"), |mut w| {
                w.write_all(b"x")?;
                Ok((w, ()))
            })
            .unwrap();
        }
        fs::write(dir.join("t.a@junk.ckpt"), b"").unwrap();
        let names = |v: Vec<PathBuf>| {
            v.iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(newest_first(&dir, "t.a").unwrap()),
            [
                "t.a@0000000000300@i.ckpt",
                "t.a@0000000000040@i.ckpt",
                "t.a@0000000000005@i.ckpt"
            ]
        );
        assert_eq!(prune(&dir, "t.a", 1).unwrap(), 2);
        assert_eq!(
            names(newest_first(&dir, "t.a").unwrap()),
            ["t.a@0000000000300@i.ckpt"]
        );
        assert_eq!(newest_first(&dir, "t.ab").unwrap().len(), 1);
        // A failed write leaves nothing behind.
        let failed = write_atomically(
            &dir,
            &file_name("t.a", 500, "i"),
            |_w| -> io::Result<(BufWriter<File>, ())> { Err(io::Error::other("disk full")) },
        );
        assert!(failed.is_err());
        assert_eq!(newest_first(&dir, "t.a").unwrap().len(), 1);
        assert!(!fs::read_dir(&dir).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
        assert!(newest_first(&dir.join("missing"), "t.a")
            .unwrap()
            .is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }
}
