//! One line of `COPY ... TO STDOUT` text as the client's bulk load reads it: split on
//! tabs, each field unescaped by `unescape_copy_field`, decoded by the value codec
//! (field `i` as the `i`-th kind, cycling) and written into a record key. The
//! client's own splitter (`CopyRow`) is crate-private; it does exactly these steps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidemark_core::wire::codec::{text_of, unescape_copy_field};
use tidemark_core::wire::{key, Row};

fuzz_target!(|line: &[u8]| {
    let kinds = tidemark_fuzz::kinds();
    let mut key_bytes = Vec::new();
    for (i, field) in line.split(|&b| b == b'\t').enumerate() {
        let text = unescape_copy_field(field);
        if field == b"\\N" {
            assert!(text.is_none(), "\\N is NULL");
        } else if !field.contains(&b'\\') {
            assert_eq!(
                text.as_deref(),
                Some(&*text_of(field)),
                "no escapes, no change"
            );
        } else {
            assert!(text.is_some(), "only \\N is NULL");
        }
        let (value, _) = kinds[i % kinds.len()].decode_opt(text.as_deref());
        key::push_member(&mut key_bytes, &format!("c{i}"), &value);
    }
    key::close_object(&mut key_bytes);
    // The key's bytes are what a reader parses back into the key columns.
    let parsed: Row = serde_json::from_slice(&key_bytes).expect("a key is a JSON object");
    assert_eq!(parsed.len(), line.split(|&b| b == b'\t').count());
});
