//! What the client parses out of a Kafka record: the value as an `Envelope`, the key
//! as a `Row`, and the `TombstoneStamp` and `SlotMarker` headers. Any bytes must parse
//! or fail cleanly; what parses must serialise and parse back the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::wire::envelope::{SlotMarker, TombstoneStamp};
use tidemark_core::wire::{Envelope, Row, TableName};

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = serde_json::from_slice::<Envelope>(data) {
        let bytes = serde_json::to_vec(&env).expect("an envelope serialises");
        let back: Envelope = serde_json::from_slice(&bytes).expect("and reads back");
        assert_eq!((back.op, back.position()), (env.op, env.position()));
        assert_eq!(back.unchanged_toast, env.unchanged_toast);
    }
    if let Ok(key) = serde_json::from_slice::<Row>(data) {
        let _ = serde_json::to_vec(&key).expect("a key serialises");
    }
    if let Ok(stamp) = serde_json::from_slice::<TombstoneStamp>(data) {
        let _ = stamp.position();
    }
    if let Ok(marker) = serde_json::from_slice::<SlotMarker>(data) {
        let key: Row = serde_json::from_slice(&marker.key()).expect("a marker key is JSON");
        assert_eq!(key.len(), 1);
    }
    // Table names come from configuration, not records, but are parsed from text too.
    if let Ok(name) = std::str::from_utf8(data) {
        if let Some(t) = TableName::parse(name) {
            let _ = (t.quoted(), t.topic("tidemark"));
        }
    }
});
