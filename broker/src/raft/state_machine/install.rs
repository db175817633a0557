//! Installing a snapshot from the leader without ever leaving a half-written store.

use super::*;

pub(super) fn installing_path(dir: &Path) -> PathBuf {
    dir.join("state.redb.installing")
}

impl StateMachineStore {
    /// Installs a snapshot received from the leader: loads it into a new file beside
    /// the store and renames it over the store, so a crash half way leaves the old state.
    pub(super) async fn install(
        &mut self,
        meta: &Meta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let current_applied = self.applied_state().await?.0;
        if meta.last_log_id <= current_applied {
            tracing::info!(
                snapshot_id = %meta.snapshot_id,
                "ignored a snapshot that is not newer than the applied state"
            );
            return Ok(());
        }
        let file = snapshot.into_file().await.map_err(write_err)?;
        let dir = self.dir.clone();
        let installing = installing_path(&dir);
        let new_meta = meta.clone();
        let started = Instant::now();
        let (db, records) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            if installing.exists() {
                std::fs::remove_file(&installing)?;
            }
            let records = {
                let db = open_store(&installing, false)?;
                let records = snapshot::load(file, &db)?;
                // The stream carries the leader's applied id and membership; record the
                // meta openraft installs, which is the same point.
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                txn.set_quick_repair(true);
                {
                    let h = Handles::open(|def| txn.open_table(def))?;
                    let mut t = DiskTables::new(h);
                    t.meta_put(APPLIED_KEY, &new_meta.last_log_id);
                    t.meta_put(MEMBERSHIP_KEY, &new_meta.last_membership);
                    if let Some(e) = t.error() {
                        anyhow::bail!(e);
                    }
                }
                txn.commit()?;
                records
            };
            let path = dir.join(crate::storage::STATE_FILE);
            std::fs::rename(&installing, &path)?;
            std::fs::File::open(&dir)?.sync_all()?;
            Ok((open_store(&path, false)?, records))
        })
        .await
        .map_err(write_err)?
        .map_err(write_err)?;
        *self.read_side.db.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(db);
        let current = {
            let db = self.read_side.db();
            let txn = db.begin_read().map_err(read_err)?;
            Current {
                meta: meta.clone(),
                dump: Dump::new(Arc::new(txn), &self.tmp_dir(), &meta.snapshot_id),
            }
        };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(current);
        let index = meta.last_log_id.map_or(0, |l| l.index);
        self.read_side
            .applied_latest
            .store(index, Ordering::Release);
        self.read_side.applied_index.send_replace(index);
        self.read_side.wake_all();
        tracing::info!(
            snapshot_id = %meta.snapshot_id,
            records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "installed snapshot"
        );
        Ok(())
    }
}
