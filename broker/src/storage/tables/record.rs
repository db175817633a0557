//! The `jobs` table's value: the record's fields (postcard), then the blobs the record
//! keeps inline ([`crate::queue::INLINE_BLOB_MAX`]).
//!
//! ```text
//!   postcard(Job) . flags u8 . [payload_len u32le . payload] . [result]
//!                   bit 0: payload inline, bit 1: result inline (the rest of the value)
//! ```
//! A value that ends after the postcard fields is a format 2 record: both blobs are in
//! their own tables. postcard stops reading at the end of the fields, so the tail never
//! disturbs them.

use bytes::Bytes;

use crate::queue::Job;

const PAYLOAD_INLINE: u8 = 1;
const RESULT_INLINE: u8 = 2;

/// Appends `job`'s value to `buf`.
pub(super) fn encode_job(job: &Job, buf: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
    let mut buf = postcard::to_extend(job, buf)?;
    let mut flags = 0;
    if job.inline_payload.is_some() {
        flags |= PAYLOAD_INLINE;
    }
    if job.inline_result.is_some() {
        flags |= RESULT_INLINE;
    }
    buf.push(flags);
    if let Some(p) = &job.inline_payload {
        // Inline blobs are at most INLINE_BLOB_MAX bytes, far below u32::MAX.
        buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
        buf.extend_from_slice(p);
    }
    if let Some(r) = &job.inline_result {
        buf.extend_from_slice(r);
    }
    Ok(buf)
}

/// Decodes a `jobs` value written by [`encode_job`] (or by format 2).
pub(super) fn decode_job(bytes: &[u8]) -> Result<Job, String> {
    let (mut job, rest): (Job, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| e.to_string())?;
    let Some((&flags, mut rest)) = rest.split_first() else {
        return Ok(job);
    };
    if flags & PAYLOAD_INLINE != 0 {
        let len = rest
            .get(..4)
            .map(|l| u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize)
            .ok_or("inline payload length cut short")?;
        let payload = rest.get(4..4 + len).ok_or("inline payload cut short")?;
        job.inline_payload = Some(Bytes::copy_from_slice(payload));
        rest = &rest[4 + len..];
    }
    if flags & RESULT_INLINE != 0 {
        job.inline_result = Some(Bytes::copy_from_slice(rest));
    } else if !rest.is_empty() {
        return Err(format!("{} unexpected bytes after the record", rest.len()));
    }
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{JobState, Retention};

    fn job() -> Job {
        Job {
            seq: 7,
            id: "j7".into(),
            queue: "q".into(),
            job_type: "t".into(),
            headers: Default::default(),
            priority: 0,
            state: JobState::Ready,
            attempt: 0,
            max_attempts: 3,
            expirations: 0,
            last_error: String::new(),
            created_at_ms: 1,
            run_at_ms: 1,
            progress: 0,
            progress_message: String::new(),
            lease: None,
            finished_at_ms: 0,
            expires_at_ms: 0,
            retention: Retention {
                result_ttl_ms: 1,
                failure_ttl_ms: 1,
            },
            idempotency_key: String::new(),
            webhook_url: String::new(),
            inline_payload: None,
            inline_result: None,
        }
    }

    #[test]
    fn inline_blobs_round_trip_in_every_combination() {
        for payload in [None, Some(Bytes::new()), Some(Bytes::from_static(b"pay"))] {
            for result in [None, Some(Bytes::new()), Some(Bytes::from_static(b"res"))] {
                let mut j = job();
                j.inline_payload = payload.clone();
                j.inline_result = result.clone();
                let bytes = encode_job(&j, Vec::new()).unwrap();
                assert_eq!(decode_job(&bytes).unwrap(), j);
            }
        }
    }

    #[test]
    fn a_format_2_record_has_its_blobs_in_the_tables() {
        let bytes = postcard::to_stdvec(&job()).unwrap();
        let j = decode_job(&bytes).unwrap();
        assert_eq!((j.inline_payload, j.inline_result), (None, None));
    }

    #[test]
    fn a_cut_or_padded_record_is_refused_with_a_reason() {
        let mut j = job();
        j.inline_payload = Some(Bytes::from_static(b"payload"));
        let bytes = encode_job(&j, Vec::new()).unwrap();
        let e = decode_job(&bytes[..bytes.len() - 2]).unwrap_err();
        assert!(e.contains("inline payload cut short"), "{e}");
        let mut padded = bytes.clone();
        padded.push(0);
        let e = decode_job(&padded).unwrap_err();
        assert!(e.contains("unexpected bytes"), "{e}");
    }
}
