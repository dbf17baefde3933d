//! The bridge's pgoutput decoder on arbitrary XLogData payloads: any input must give a
//! message or a `DecodeError`, never a panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

// The decoder's own source file, compiled here rather than through the
// `tidemark-bridge` crate, so that a fuzz build does not instrument and link the
// bridge's Kafka and PostgreSQL clients. The file uses only `bytes`, `thiserror` and
// `tidemark_core`; should it ever need more, this build fails and says so.
#[allow(dead_code)]
#[path = "../../bridge/src/source/pgoutput.rs"]
mod pgoutput;

use pgoutput::{decode, Datum, Message};

fuzz_target!(|data: &[u8]| {
    match decode(Bytes::copy_from_slice(data)) {
        Ok(msg) => {
            // The bridge reads each text datum through the shared codec's `text_of`.
            let tuples: Vec<&Vec<Datum>> = match &msg {
                Message::Insert { new, .. } => vec![new],
                Message::Update { old, new, .. } => {
                    old.iter().map(|o| &o.tuple).chain([new]).collect()
                }
                Message::Delete { old, .. } => vec![&old.tuple],
                _ => vec![],
            };
            for datum in tuples.into_iter().flatten() {
                if let Datum::Text(bytes) = datum {
                    let _ = tidemark_core::wire::codec::text_of(bytes);
                }
            }
            let _ = format!("{msg:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
