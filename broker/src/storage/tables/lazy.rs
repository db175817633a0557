//! Tables of a read view, opened when first read.
//!
//! Opening a redb table walks the table tree and checks its definition, and opening
//! the fourteen tables of a view costs more than most reads done through it. A
//! long-polling `Lease` reads three tables each time it looks (sm_meta, queues, timers),
//! so with 10,000 idle workers, opening every table of every view was a third of what
//! the node spent on them (benches/README, "Idle long-polling workers"). Read views
//! therefore open a table the first time it is read. The write transaction that applies
//! entries, and the rare reads at startup, backup and install, open theirs up front.

use std::cell::OnceCell;
use std::sync::Arc;

use redb::{AccessGuard, Range, ReadOnlyTable, ReadTransaction, ReadableTable};

use super::Def;

/// A state table opened for reading.
type ReadTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// A state table's read side: what the read code needs of a table (a point read and a
/// forward scan), from a table opened up front or from a [`LazyTable`]. Errors are
/// text: the read code only records them (`DiskTables::fail`).
pub trait TableRead {
    /// The value under `key`.
    fn get_bytes(&self, key: &[u8]) -> Result<Option<AccessGuard<'_, &'static [u8]>>, String>;
    /// Entries from `start` on, in key order.
    fn range_from(&self, start: &[u8]) -> Result<Range<'_, &'static [u8], &'static [u8]>, String>;
}

/// Tables opened up front: the apply's write transaction, and the reads at startup,
/// backup and install.
impl<T: ReadableTable<&'static [u8], &'static [u8]>> TableRead for T {
    fn get_bytes(&self, key: &[u8]) -> Result<Option<AccessGuard<'_, &'static [u8]>>, String> {
        self.get(key).map_err(|e| e.to_string())
    }
    fn range_from(&self, start: &[u8]) -> Result<Range<'_, &'static [u8], &'static [u8]>, String> {
        self.range::<&[u8]>(start..).map_err(|e| e.to_string())
    }
}

/// One table of a read transaction, opened on first use. The transaction is shared by
/// the view's tables, so every table is read as of the same commit.
pub struct LazyTable {
    txn: Arc<ReadTransaction>,
    def: Def,
    /// The open table, or why it could not be opened (kept: logged once per view).
    table: OnceCell<Result<ReadTable, String>>,
}

impl LazyTable {
    /// Table `def` of `txn`, not opened yet.
    pub fn new(txn: Arc<ReadTransaction>, def: Def) -> Self {
        Self {
            txn,
            def,
            table: OnceCell::new(),
        }
    }

    fn table(&self) -> Result<&ReadTable, String> {
        let opened = self.table.get_or_init(|| {
            // Every table exists (created when the store opens), so this fails only on
            // a storage error. The view then answers as if the table were empty, as
            // after any read error (`DiskTables::fail`), and the error is logged here.
            self.txn.open_table(self.def).map_err(|e| {
                tracing::error!(table = %self.def, error = %e, "state store read failed");
                format!("opening {}: {e}", self.def)
            })
        });
        opened.as_ref().map_err(Clone::clone)
    }
}

impl TableRead for LazyTable {
    fn get_bytes(&self, key: &[u8]) -> Result<Option<AccessGuard<'_, &'static [u8]>>, String> {
        self.table()?.get_bytes(key)
    }
    fn range_from(&self, start: &[u8]) -> Result<Range<'_, &'static [u8], &'static [u8]>, String> {
        self.table()?.range_from(start)
    }
}
