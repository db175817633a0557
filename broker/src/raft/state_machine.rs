//! The Raft state machine: the pure queue core behind a lock, plus snapshots in redb.
//!
//! `apply` runs [`State::apply`] in memory and does not fsync: durability comes from the
//! Raft log, which is fsynced before an entry can commit. On restart the latest snapshot
//! is loaded and openraft re-applies the committed log after it. Snapshots (taken every
//! `--snapshot-every` entries) let the log be purged, so disk use follows live jobs, not
//! history.

use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StoredMembership};
use redb::{Database, ReadableDatabase};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::queue::{Outcome, Reply, State};
use crate::storage::{decode, encode, read_err, write_err, SNAPSHOT};

/// Everything a snapshot holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SmData {
    /// Last applied log id.
    pub last_applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    /// The queue state.
    pub state: State,
}

/// State shared between the state machine (writer) and API handlers (readers).
pub struct Shared {
    data: RwLock<SmData>,
    /// Bumped after every applied batch; long-polling leases wait on it.
    pub applied: Notify,
    /// Index of the last applied entry.
    pub applied_index: watch::Sender<u64>,
}

impl Shared {
    /// Read access to the queue state as of the last applied entry.
    pub fn read(&self) -> RwLockReadGuard<'_, SmData> {
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The openraft state machine.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<Shared>,
    /// Locked for every access: snapshots are rare, and compaction needs `&mut`.
    db: Arc<std::sync::Mutex<Database>>,
    snapshot_seq: Arc<std::sync::atomic::AtomicU64>,
}

impl StateMachineStore {
    /// Opens the state machine, loading the latest snapshot if there is one.
    pub fn open(path: &std::path::Path) -> anyhow::Result<Self> {
        let db = crate::storage::open_db(path)?;
        let txn = db.begin_write()?;
        txn.open_table(SNAPSHOT)?;
        txn.commit()?;
        let mut data = SmData::default();
        {
            let txn = db.begin_read()?;
            let table = txn.open_table(SNAPSHOT)?;
            let stored = redb::ReadableTable::get(&table, "data")?;
            if let Some(bytes) = stored {
                data = decode(bytes.value())?;
            }
        }
        let applied = data.last_applied.map_or(0, |l| l.index);
        Ok(Self {
            shared: Arc::new(Shared {
                data: RwLock::new(data),
                applied: Notify::new(),
                applied_index: watch::channel(applied).0,
            }),
            db: Arc::new(std::sync::Mutex::new(db)),
            snapshot_seq: Arc::new(0.into()),
        })
    }

    /// The handle API handlers read through.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, SmData> {
        self.shared.data.write().unwrap_or_else(|p| p.into_inner())
    }

    async fn save_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let meta_bytes = encode(meta).map_err(write_err)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let mut db = db.lock().unwrap_or_else(|p| p.into_inner());
            let txn = db.begin_write()?;
            {
                let mut t = txn.open_table(SNAPSHOT)?;
                t.insert("meta", meta_bytes.as_slice())?;
                t.insert("data", data.as_slice())?;
            }
            txn.commit()?;
            // One snapshot lives in this file; when it shrinks (jobs expired), give the
            // space back so disk use follows the live state.
            if let Err(e) = db.compact() {
                tracing::warn!(error = %e, "snapshot file compaction failed");
            }
            Ok(())
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (bytes, last_applied, membership) = {
            let data = self.shared.read();
            (
                encode(&*data).map_err(read_err)?,
                data.last_applied,
                data.membership.clone(),
            )
        };
        let n = self
            .snapshot_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{n}", l.leader_id, l.index),
            None => format!("none-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        self.save_snapshot(&meta, bytes.clone()).await?;
        tracing::info!(snapshot_id = %meta.snapshot_id, bytes = bytes.len(), "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, openraft::BasicNode>), StorageError> {
        let data = self.shared.read();
        Ok((data.last_applied, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut replies = Vec::new();
        let last_index;
        {
            let mut data = self.write();
            for entry in entries {
                data.last_applied = Some(entry.log_id);
                let reply = match entry.payload {
                    EntryPayload::Blank => Ok(Outcome::Ticked),
                    EntryPayload::Normal(env) => data.state.apply(&env),
                    EntryPayload::Membership(m) => {
                        data.membership = StoredMembership::new(Some(entry.log_id), m);
                        Ok(Outcome::Ticked)
                    }
                };
                replies.push(reply);
            }
            last_index = data.last_applied.map_or(0, |l| l.index);
        }
        self.shared.applied_index.send_replace(last_index);
        self.shared.applied.notify_waiters();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let new: SmData = decode(&bytes).map_err(|e| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Snapshot(Some(meta.signature())),
                openraft::ErrorVerb::Read,
                std::io::Error::other(e),
            )
        })?;
        let index = new.last_applied.map_or(0, |l| l.index);
        *self.write() = new;
        self.save_snapshot(meta, bytes).await?;
        self.shared.applied_index.send_replace(index);
        self.shared.applied.notify_waiters();
        tracing::info!(snapshot_id = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let txn = db.begin_read().map_err(read_err)?;
        let table = txn.open_table(SNAPSHOT).map_err(read_err)?;
        let (Some(meta), Some(data)) = (
            redb::ReadableTable::get(&table, "meta").map_err(read_err)?,
            redb::ReadableTable::get(&table, "data").map_err(read_err)?,
        ) else {
            return Ok(None);
        };
        let meta: SnapshotMeta<NodeId, openraft::BasicNode> =
            decode(meta.value()).map_err(read_err)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data.value().to_vec())),
        }))
    }
}
