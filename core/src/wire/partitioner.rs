//! Which partition a key lives on, computed the way the bridge's producer does it.
//!
//! A TRUNCATE reaches the cache as one record per partition, in order with that
//! partition's other records, so the cache must know each cached key's partition to
//! clear exactly the keys that partition owns. Keys applied from the stream carry
//! their partition; keys from the bulk load get it from this function. The bridge
//! produces with librdkafka's `murmur2_random` partitioner, which is Kafka's Java
//! default: `(murmur2(key) & 0x7fffffff) % partitions`, with murmur2's seed
//! `0x9747b28c`. The key bytes are the same on both paths because both build the key
//! object in primary-key order through the shared codec.

/// Kafka's murmur2 hash of `data` (the Java client's `Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `key` among `partitions` (at least 1).
pub fn partition_of(key: &[u8], partitions: i32) -> i32 {
    let n = partitions.max(1) as u32;
    ((murmur2(key) & 0x7fff_ffff) % n) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_vectors() {
        // The values librdkafka's and Kafka's own unit tests check against.
        let unaligned = "PreAmbleWillBeRemoved,ThePrePartThatIs";
        let cases: &[(&str, u32)] = &[
            ("kafka", 0xd067cf64),
            ("giberish123456789", 0x8f552b0c),
            ("1234", 0x9fc97b14),
            ("234", 0xe7c009ca),
            ("34", 0x873930da),
            ("4", 0x5a4b5ca1),
            (unaligned, 0x78424f1c),
            (&unaligned[1..], 0x4a62b377),
            (&unaligned[2..], 0xe0e4e09e),
            (&unaligned[3..], 0x62b8b43f),
            ("", 0x106e08d9),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key.as_bytes()), *want, "{key}");
        }
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for i in 0..1000 {
            let key = format!("{{\"id\":{i}}}");
            let p = partition_of(key.as_bytes(), 3);
            assert!((0..3).contains(&p));
            assert_eq!(p, partition_of(key.as_bytes(), 3));
        }
        assert_eq!(partition_of(b"x", 1), 0);
        assert_eq!(partition_of(b"x", 0), 0);
    }
}
