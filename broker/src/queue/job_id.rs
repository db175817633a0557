//! Job ids that name their record: a UUIDv7 made by the state machine from the entry's
//! time and the job's seq.
//!
//! An id the API chose (a random UUIDv7, [`super::Command::Enqueue`]) needs an index
//! from id to seq: one more B-tree write per enqueue, one more lookup per ack, nack or
//! extension, one more delete when the job expires. An id made at apply from the seq
//! ([`super::Command::EnqueueNumbered`]) carries the seq in the UUID's 62 `rand_b` bits,
//! so the record is found by its key; the record's own id is then compared, so an id
//! that merely decodes to some seq (a random one, or a forged one) never finds
//! another job's record. The result keeps the UUIDv7 layout (time first, version 7,
//! RFC 4122 variant): clients that store ids see what they saw before, and ids sort
//! in enqueue order.
//!
//! Deterministic: the id depends only on the entry's leader time and the seq, so every
//! replica makes the same one.

/// The id of the job with `seq`, enqueued by an entry stamped `now_ms`.
pub fn numbered(now_ms: u64, seq: u64) -> String {
    // rand_a stays zero: ids then sort as (time, seq), which is enqueue order, since
    // the leader's time in entries never runs back.
    let rand_b = u128::from(seq & RAND_B_MASK);
    let v = (u128::from(now_ms & 0xFFFF_FFFF_FFFF) << 80) | (0x7 << 76) | (0b10 << 62) | rand_b;
    uuid::Uuid::from_u128(v).hyphenated().to_string()
}

/// The seq a numbered id carries, if `id` has the shape of one. A random UUIDv7 has
/// that shape too: the caller checks the record it finds.
pub fn seq_in(id: &str) -> Option<u64> {
    if id.len() != 36 {
        return None;
    }
    let v = uuid::Uuid::try_parse(id).ok()?.as_u128();
    let version = (v >> 76) & 0xF;
    let variant = (v >> 62) & 0b11;
    (version == 7 && variant == 0b10).then_some((v as u64) & RAND_B_MASK)
}

/// Whether `id` is the numbered id of the job with `seq` (such a job has no entry in
/// the id index).
pub fn names(id: &str, seq: u64) -> bool {
    seq <= RAND_B_MASK && seq_in(id) == Some(seq)
}

/// The 62 bits of `rand_b`: seqs up to 4.6e18, more than a log can hold.
const RAND_B_MASK: u64 = (1 << 62) - 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_numbered_id_is_a_uuid_v7_that_gives_back_its_seq() {
        let now = 1_796_000_000_123;
        for seq in [1, 2, 255, 1 << 40, RAND_B_MASK] {
            let id = numbered(now, seq);
            let u = uuid::Uuid::parse_str(&id).unwrap();
            assert_eq!(u.get_version_num(), 7, "{id}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
            let (secs, nanos) = u.get_timestamp().unwrap().to_unix();
            assert_eq!(secs * 1000 + u64::from(nanos) / 1_000_000, now, "{id}");
            assert_eq!(seq_in(&id), Some(seq));
            assert!(names(&id, seq));
            assert!(!names(&id, seq ^ 1));
        }
        assert_ne!(numbered(now, 1), numbered(now + 1, 1));
        // Enqueue order is id order: by time, then by seq.
        let ids = [
            numbered(now, 9),
            numbered(now, 10),
            numbered(now, 300),
            numbered(now + 1, 301),
        ];
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }

    #[test]
    fn other_ids_carry_no_seq() {
        for id in ["", "a", "j12", "not-a-uuid-but-thirty-six-chars-long"] {
            assert_eq!(seq_in(id), None, "{id}");
        }
        // A version 4 UUID has the right length but not the version.
        assert_eq!(seq_in("7d444840-9dc0-41dd-8d1c-c6d1d6e5a8b1"), None);
    }
}
