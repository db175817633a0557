//! Opening the store: integrity check, tables, and the format stamp.

use super::*;

pub(super) fn open_store(path: &Path, verify: bool) -> anyhow::Result<Database> {
    use anyhow::Context;
    let db = crate::storage::open_redb(path, CACHE_BYTES, verify, "the state store")?;
    create_all(&db).with_context(|| format!("creating tables in {}", path.display()))?;
    check_format(&db, path)?;
    Ok(db)
}

/// Stamps a new store with [`FORMAT`], converts a store of format 1 (written before
/// the stamp, with a state index entry for every job) or 2 (a lease deadline and an
/// expiry entry per job), and refuses a newer one. The
/// stamp is a little-endian u32 under `sm_meta` "format"; snapshot streams carry it.
pub(super) fn check_format(db: &Database, path: &Path) -> anyhow::Result<()> {
    use redb::ReadableTable;
    let txn = db.begin_write()?;
    let (found, has_state) = {
        let meta = txn.open_table(crate::storage::tables::SM_META)?;
        let found = match meta.get(FORMAT_KEY)? {
            None => None,
            Some(v) => Some(u32::from_le_bytes(v.value().try_into().map_err(|_| {
                anyhow::anyhow!("{}: unreadable format stamp", path.display())
            })?)),
        };
        let has_state = meta.get(APPLIED_KEY)?.is_some();
        (found, has_state)
    };
    let format = found.unwrap_or(if has_state { 1 } else { FORMAT });
    anyhow::ensure!(
        format <= FORMAT,
        "{} is in state format {format}, written by a newer taskraft; this build reads \
         formats up to {FORMAT}. Run the newer version (downgrades are not supported)",
        path.display()
    );
    if format < FORMAT {
        let started = Instant::now();
        let jobs = if format < 2 {
            crate::storage::tables::relist_jobs(&txn)?
        } else {
            0
        };
        let timers = crate::storage::tables::regroup_timers(&txn)?;
        tracing::info!(
            path = %path.display(),
            from = format,
            to = FORMAT,
            jobs,
            timers,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "converted the state store"
        );
    }
    if found != Some(FORMAT) {
        txn.open_table(crate::storage::tables::SM_META)?
            .insert(FORMAT_KEY, FORMAT.to_le_bytes().as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

pub(super) fn applied_of(txn: &ReadTransaction) -> anyhow::Result<(Option<LogId>, Membership)> {
    let h = Handles::open(|def| txn.open_table(def))?;
    let t = DiskTables::new(h);
    let applied = t.meta_get(APPLIED_KEY).flatten();
    let membership = t.meta_get(MEMBERSHIP_KEY).unwrap_or_default();
    match t.error() {
        Some(e) => Err(anyhow::anyhow!(e)),
        None => Ok((applied, membership)),
    }
}
