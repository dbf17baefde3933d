//! The record key, written once for both halves: a compact JSON object of the
//! primary-key columns in key order, e.g. `{"id":42}`.
//!
//! The key's bytes are the contract, not just its meaning: the producer partitions
//! by the murmur2 hash of these bytes, and the cache computes the partition of every
//! row of its bulk load from the same bytes, so that a TRUNCATE read from partition
//! `p` clears exactly the keys `p` owns. The bridge (values from pgoutput text) and the
//! cache (values from COPY text) both write keys through [`push_member`] and
//! [`close_object`], with values from the one codec ([`super::codec`]).

use serde::Serialize;

/// Appends `"name":value` to the JSON object being written in `out`, opening it with
/// `{` when `out` is empty. Close it with [`close_object`].
pub fn push_member(out: &mut Vec<u8>, name: &str, value: &impl Serialize) {
    out.push(if out.is_empty() { b'{' } else { b',' });
    // Writing a string or a codec value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, name);
    out.push(b':');
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Closes the object [`push_member`] opened (`{}` when no member was pushed).
pub fn close_object(out: &mut Vec<u8>) {
    if out.is_empty() {
        out.push(b'{');
    }
    out.push(b'}');
}

/// The key of `members` (column name, codec value), in the order given.
pub fn encode<'a, V: Serialize + 'a>(
    members: impl IntoIterator<Item = (&'a str, &'a V)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    for (name, value) in members {
        push_member(&mut out, name, value);
    }
    close_object(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn keys_are_compact_json_in_column_order() {
        let (id, name) = (json!(42), json!("a \"b\"\n"));
        assert_eq!(
            encode([("id", &id), ("name", &name)]),
            br#"{"id":42,"name":"a \"b\"\n"}"#
        );
        assert_eq!(encode::<Value>([]), b"{}");
        // The same bytes as serde_json writes the object (keys in insertion order).
        let mut row = serde_json::Map::new();
        row.insert("name".into(), name.clone());
        row.insert("id".into(), id.clone());
        assert_eq!(
            encode([("name", &name), ("id", &id)]),
            serde_json::to_vec(&row).unwrap()
        );
    }
}
