//! Generated gRPC types for taskraft.
//!
//! - [`v1`]: the public API (`taskraft.v1.Broker`, `taskraft.v1.Admin`) that producers,
//!   workers and operators call, in any language, from `proto/taskraft/v1/taskraft.proto`.
//! - [`raft`]: the internal peer service that only cluster nodes call.
//!
//! Nothing here is hand-written; `build.rs` runs the vendored `protoc`.

#![allow(missing_docs, clippy::all)]

/// Public client API, package `taskraft.v1`.
pub mod v1 {
    tonic::include_proto!("taskraft.v1");
}

/// Internal peer API, package `taskraft.raft.v1`.
pub mod raft {
    tonic::include_proto!("taskraft.raft.v1");
}

/// Encoded `FileDescriptorSet` of both packages, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("taskraft_descriptor");
