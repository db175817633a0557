//! On-disk format versions. Each redb file records the format it was written in (key
//! `format` in its metadata table); a node refuses a file written in a newer format
//! than it knows (a downgrade), and reads older ones (an upgrade), converting them if a
//! format change ever needs it. A file without the key predates the stamp and is
//! format 1.
//!
//! | file            | format | what it is                                           |
//! |-----------------|--------|------------------------------------------------------|
//! | `raft-log.redb` | 1      | postcard-encoded openraft 0.9 entries of `Envelope`  |
//! | `state.redb`    | 3      | the tables of `storage/tables`; 1 had a state index entry per job, 2 a lease deadline or expiry entry per job and no blobs inside job records; both are converted at open (`raft/state_machine/open.rs::check_format`) |
//! | snapshot stream | 1      | magic `TRSNAP01` (`raft/snapshot.rs`); also backups  |
//!
//! Rule for changes: a new `queue::Command` variant goes at the end of the enum and an
//! existing one never changes shape (postcard encodes variants by position); anything
//! else bumps the format here and adds the conversion at open.

use anyhow::bail;
use redb::{Database, ReadableTable, TableDefinition};

/// Format of `raft-log.redb` this build writes.
pub const LOG_FORMAT: u32 = 1;
/// Format of `state.redb` this build writes. The state machine checks it at open
/// (`raft/state_machine.rs::check_format`, which also converts format 1).
pub const STATE_FORMAT: u32 = 3;

const KEY: &str = "format";

/// Checks the format stamp of a database whose metadata table is `table` (keys are
/// `&str` or `&[u8]`), writing `current` if there is none.
fn check<K: redb::Key + 'static>(
    db: &Database,
    table: TableDefinition<K, &[u8]>,
    key: K::SelfType<'_>,
    current: u32,
    what: &str,
) -> anyhow::Result<()>
where
    for<'a> K::SelfType<'a>: Clone,
{
    let txn = db.begin_write()?;
    let found = {
        let mut t = txn.open_table(table)?;
        let found = t
            .get(key.clone())?
            .map(|v| v.value().try_into().map(u32::from_le_bytes));
        match found {
            None => {
                t.insert(key, current.to_le_bytes().as_slice())?;
                None
            }
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => bail!("{what}: unreadable format stamp"),
        }
    };
    txn.commit()?;
    if let Some(v) = found {
        if v > current {
            bail!(
                "{what} is in format {v}, written by a newer taskraft; this build reads formats up to \
                 {current}. Run the newer version (downgrades are not supported), or restore a backup"
            );
        }
    }
    Ok(())
}

/// Checks (or stamps) the Raft log's format.
pub fn check_log(db: &Database) -> anyhow::Result<()> {
    check(
        db,
        super::META,
        KEY,
        LOG_FORMAT,
        "the Raft log (raft-log.redb)",
    )
}

/// Checks (or stamps) the state store's format.
pub fn check_state(db: &Database) -> anyhow::Result<()> {
    check(
        db,
        super::tables::SM_META,
        KEY.as_bytes(),
        STATE_FORMAT,
        "the state store (state.redb)",
    )
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;

    use super::*;

    #[test]
    fn a_store_from_a_newer_format_is_refused_and_an_unstamped_one_is_stamped() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("log.redb")).unwrap();
        check_log(&db).unwrap();
        check_log(&db).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(crate::storage::META)
            .unwrap()
            .insert(KEY, (LOG_FORMAT + 1).to_le_bytes().as_slice())
            .unwrap();
        txn.commit().unwrap();
        let e = check_log(&db).unwrap_err().to_string();
        assert!(e.contains("written by a newer taskraft"), "{e}");

        let db = Database::create(dir.path().join("state.redb")).unwrap();
        check_state(&db).unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(crate::storage::tables::SM_META).unwrap();
        let v = t.get(KEY.as_bytes()).unwrap().unwrap();
        assert_eq!(v.value(), STATE_FORMAT.to_le_bytes());
    }
}
