//! The peer wire codec: how Raft messages, forwarded commands and their replies are
//! encoded inside `RaftMessage.data` on the peer service.
//!
//! postcard today, like the files; a function of its own so that the wire and the
//! storage formats can change apart (a rolling upgrade mixes versions on the wire,
//! while a file is only ever read by the version that converted it).

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encodes a peer message.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

/// Decodes a peer message written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
