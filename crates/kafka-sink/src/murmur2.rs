//! Kafka's default key placement, as the Java client computes it
//! (`Utils.toPositive(Utils.murmur2(key)) % partitions`), and as librdkafka's
//! `murmur2_random` partitioner does for keyed records. The checkpoint store uses it to
//! know which partition holds a key without asking a producer.

/// The 32-bit murmur2 hash of `data` with Kafka's seed, as Java's `Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    // Java hashes with 32-bit signed arithmetic; wrapping u32 arithmetic gives the same
    // bits, and `>>>` is a logical shift, as on u32.
    let mut h = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` on a topic with `partitions` partitions (at least 1).
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    // Java's `toPositive` clears the sign bit (it does not negate).
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Some of the keys of `JAVA_MURMUR2_PLACEMENT` in `tests/tests/kafka_sink/main.rs`
    /// (computed with the Kafka 4.3.1 Java client; the full table is checked there):
    /// key lengths with 0, 1 and 3 tail bytes, positive and negative hashes.
    #[test]
    fn matches_the_java_client() {
        for (key, hash, partition_of_6) in [
            ("order-10", 1_960_481_346, 0),
            ("a", -1_563_381_124, 4),
            ("order-1", 1_221_710_326, 4),
            ("customer-42", -542_987_495, 3),
            ("ü-ß", -1_896_451_294, 4),
        ] {
            assert_eq!(murmur2(key.as_bytes()), hash, "{key}");
            assert_eq!(
                partition_for_key(key.as_bytes(), 6),
                partition_of_6,
                "{key}"
            );
        }
    }

    #[test]
    fn every_key_lands_on_an_existing_partition() {
        for n in 1..=7 {
            for len in 0..12u8 {
                let key: Vec<u8> = (0..len).map(|b| b.wrapping_mul(37)).collect();
                assert!((0..n).contains(&partition_for_key(&key, n)));
            }
        }
        assert_eq!(partition_for_key(b"x", 0), 0, "no partitions: no panic");
    }
}
