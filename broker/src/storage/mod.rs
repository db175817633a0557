//! Embedded storage on redb: table definitions and the one codec used for everything
//! that reaches disk or the wire between peers (postcard, a compact serde format).
//!
//! Two database files live in the data dir:
//! - [`LOG_FILE`]: the Raft log, the vote and the committed pointer. Appends queued
//!   together are one write transaction with `Durability::Immediate` (fsync before the
//!   callback); see `raft::log_store`.
//! - [`STATE_FILE`]: the state machine's tables (jobs, indexes, queues), applied into
//!   and read from directly; snapshots are streamed from a read transaction of it.
//!
//! We do not use sled: its `flush` is not power-loss durable (it calls
//! `sync_file_range`, not fsync), it has had no release since 2021, and openraft dropped
//! its sled store.

pub mod disk;
pub mod format;
pub mod tables;

use std::path::Path;
use std::time::Duration;

use openraft::{AnyError, StorageError, StorageIOError};
use redb::{Database, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

/// The Raft log's file in the data dir.
pub const LOG_FILE: &str = "raft-log.redb";
/// The state store's file in the data dir.
pub const STATE_FILE: &str = "state.redb";

/// Raft log entries by index.
pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// Small Raft metadata: `vote`, `committed`, `last_purged`.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The current snapshot: `meta` and `data`.
pub const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");

/// redb page cache of the Raft log. redb's default (1 GiB) would hold the most recent
/// GiB of appended entries in memory for nothing: entries are read back only by
/// lagging followers and at restart.
const LOG_CACHE_BYTES: usize = 64 << 20;

/// Opens (or creates) the Raft log's redb database file.
pub fn open_db(path: &Path, verify: bool) -> anyhow::Result<Database> {
    open_redb(path, LOG_CACHE_BYTES, verify, "the Raft log")
}

/// redb page cache for the integrity check at open. The check reads every page once
/// to verify its checksum and again to rebuild the allocator state; a cache cannot hold
/// a data dir of gigabytes either way, and a large one only adds eviction and fresh
/// allocations: on a 6 GiB state store (10M jobs) the check took 15.2 s with a 256 MiB
/// cache and 5.8-8.0 s with 1-4 MiB (benches/README, "A deep backlog").
const VERIFY_CACHE_BYTES: usize = 4 << 20;

/// Opens (or creates) a redb file with a page cache of `cache` bytes. With `verify`,
/// the file is first opened with [`VERIFY_CACHE_BYTES`] and
/// `set_check_integrity_on_open`, which walks and checks every page (and recovers
/// from a crash), then closed cleanly; the second open trusts that clean close and
/// takes milliseconds. Nothing writes the file between the two.
pub fn open_redb(path: &Path, cache: usize, verify: bool, what: &str) -> anyhow::Result<Database> {
    if verify {
        let checked = redb::Builder::new()
            .set_cache_size(VERIFY_CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(|e| open_error(e, what, path))?;
        drop(checked);
    }
    redb::Builder::new()
        .set_cache_size(cache)
        .create(path)
        .map_err(|e| open_error(e, what, path))
}

/// Waits, until `deadline` at most, until nothing holds the redb file at `path` open, in this
/// process or another, and says whether that happened. A stopped node's last handle on
/// a store can go a moment after its stop returns: openraft drops the state machine on
/// its own worker task after `Raft::shutdown`, and an apply or commit on a blocking
/// thread holds the store until it ends. Starting a node on the dir before then fails
/// with "Database already open". The probe is a read-only open, which takes redb's
/// shared lock and writes nothing; any answer but "already open" (no file, a file that
/// needs repair) means nothing holds it.
pub async fn wait_released(path: &Path, deadline: tokio::time::Instant) -> bool {
    loop {
        let probe = path.to_path_buf();
        let held = tokio::task::spawn_blocking(move || {
            matches!(
                redb::Builder::new()
                    .set_cache_size(VERIFY_CACHE_BYTES)
                    .open_read_only(&probe),
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
            )
        })
        .await
        .unwrap_or(false);
        if !held {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Opening a store failed: says which file, and for a damaged one what to do. With
/// `--verify-on-start` (the default) redb checks every page's checksum at open
/// (`set_check_integrity_on_open`), so a file torn, truncated or altered since it was
/// written is refused here, never served; without it, redb checks only after a crash.
pub fn open_error(e: redb::DatabaseError, what: &str, path: &Path) -> anyhow::Error {
    let damaged = matches!(
        &e,
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_))
    );
    let e = anyhow::Error::new(e).context(format!("opening {what} {}", path.display()));
    if damaged {
        e.context(format!(
            "{} is damaged (torn, truncated or altered since it was written); this node \
             will not serve from it. In a cluster, move this node's data dir aside and start \
             it with an empty one: it rejoins and receives the state from the leader. A \
             single node is restored from a backup (`taskraft restore`)",
            path.display()
        ))
    } else {
        e
    }
}

/// Encodes a value for disk or the peer wire.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(value)
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Wraps any storage failure as an openraft read error.
pub fn read_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::read(AnyError::error(e.to_string())).into()
}

/// Wraps any storage failure as an openraft write error.
pub fn write_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write(AnyError::error(e.to_string())).into()
}
