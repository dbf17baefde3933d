//! The value codec on arbitrary text, as every kind: `decode` gives a value or an
//! error, and `decode_lenient` falls back to the text itself, never a panic. The
//! bytes become text as the bridge reads a pgoutput value (`text_of`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tidemark_core::wire::codec::text_of;

fuzz_target!(|data: &[u8]| {
    let text = text_of(data);
    for kind in tidemark_fuzz::kinds() {
        let (value, err) = kind.decode_lenient(&text);
        if let Some(err) = err {
            assert_eq!(
                value,
                Value::String(text.to_string()),
                "fallback is the text"
            );
            let _ = err.to_string();
        }
        serde_json::to_vec(&value).expect("a codec value serialises");
    }
});
