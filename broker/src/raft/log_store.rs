//! The Raft log on redb.
//!
//! Group commit comes from openraft itself: while one `append` waits for its fsync, new
//! client writes queue up in the Raft core, and the next `append` carries all of them in
//! one write transaction, so many concurrent callers share one fsync.

// openraft's traits fix the (large) error type; boxing it here would only add a copy.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, Vote};
use redb::{Database, ReadableDatabase, ReadableTable};

use super::types::{Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::storage::{decode, encode, read_err, write_err, LOG, META};

/// Called with the duration of each append's commit (its fsync), for metrics.
pub type FsyncObserver = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// Log store handle; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    fsync_observer: Arc<std::sync::OnceLock<FsyncObserver>>,
}

impl LogStore {
    /// Opens the log store on an open database, creating its tables.
    pub fn new(db: Arc<Database>) -> anyhow::Result<Self> {
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(Self {
            db,
            fsync_observer: Arc::default(),
        })
    }

    /// Reports every later append's commit duration to `observer` (set once).
    pub fn observe_fsync(&self, observer: FsyncObserver) {
        let _ = self.fsync_observer.set(observer);
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(META).map_err(read_err)?;
        let Some(v) = table.get(key).map_err(read_err)? else {
            return Ok(None);
        };
        decode(v.value()).map(Some).map_err(read_err)
    }

    /// Writes a metadata value durably, off the async threads.
    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes = encode(value).map_err(write_err)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)
    }

    /// Number of entries held and their total encoded size (for metrics and tests).
    pub fn size(&self) -> Result<(u64, u64), StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let mut n = 0;
        let mut bytes = 0;
        for row in table.iter().map_err(read_err)? {
            let (_, v) = row.map_err(read_err)?;
            n += 1;
            bytes += v.value().len() as u64;
        }
        Ok((n, bytes))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let table = txn.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        for row in table.range(range).map_err(read_err)? {
            let (_, v) = row.map_err(read_err)?;
            out.push(decode(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta("last_purged")?;
        let last = {
            let txn = self.db.begin_read().map_err(read_err)?;
            let table = txn.open_table(LOG).map_err(read_err)?;
            let last = match table.last().map_err(read_err)? {
                Some((_, v)) => Some(decode::<Entry>(v.value()).map_err(read_err)?.log_id),
                None => None,
            };
            last
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta("vote", vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.put_meta("committed", &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| encode(&e).map(|b| (e.log_id.index, b)))
            .collect::<Result<_, _>>()
            .map_err(write_err)?;
        let db = self.db.clone();
        let observer = self.fsync_observer.get().cloned();
        let res = tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(LOG)?;
                for (index, bytes) in &rows {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            // Durability::Immediate (the default): commit returns after fsync.
            let started = std::time::Instant::now();
            txn.commit()?;
            if let Some(observe) = observer {
                observe(started.elapsed());
            }
            Ok(())
        })
        .await
        .map_err(write_err)?;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?
                .retain_in(log_id.index.., |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = encode(&log_id).map_err(write_err)?;
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(META)?
                .insert("last_purged", bytes.as_slice())?;
            txn.open_table(LOG)?
                .retain_in(..=log_id.index, |_, _| false)?;
            txn.commit()?;
            Ok(())
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)
    }
}
