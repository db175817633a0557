//! openraft type configuration: what a log entry carries and what applying it returns.

use crate::queue::{Envelope, Reply};

openraft::declare_raft_types!(
    /// taskraft's Raft types: entries carry a queue [`Envelope`], applying one returns a
    /// queue [`Reply`].
    pub TypeConfig:
        D = Envelope,
        R = Reply,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = super::snapshot::SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

/// Node ids are small integers chosen by the operator (`--id`).
pub type NodeId = u64;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id.
pub type LogId = openraft::LogId<NodeId>;
/// Storage errors as openraft wants them.
pub type StorageError = openraft::StorageError<NodeId>;
