//! Tables of a read view, opened when first read.
//!
//! Opening a redb table walks the table tree and checks its definition, and opening
//! the fourteen tables of a view costs more than most reads done through it. A
//! long-polling `Lease` reads two tables (queues, ready) each time it looks, so with
//! 10,000 idle workers, opening every table of every view was a third of what the node
//! spent on them (benches/README, "Idle long-polling workers"). Read views therefore
//! open a table the first time it is read; the write transaction that applies entries
//! opens its tables up front, as it uses most of them in every batch.

use std::cell::OnceCell;
use std::sync::Arc;

use redb::{AccessGuard, Range, ReadOnlyTable, ReadTransaction, ReadableTable, Table};

use super::Def;

/// A state table's read side: what the read code needs of a table (a point read and a
/// forward scan), from a table opened up front or from a [`LazyTable`].
pub trait TableRead {
    /// The value under `key`.
    fn get_bytes(&self, key: &[u8]) -> Result<Option<AccessGuard<'_, &'static [u8]>>, redb::Error>;
    /// Entries from `start` on, in key order.
    fn range_from(
        &self,
        start: &[u8],
    ) -> Result<Range<'_, &'static [u8], &'static [u8]>, redb::Error>;
}

impl TableRead for ReadOnlyTable<&'static [u8], &'static [u8]> {
    fn get_bytes(&self, key: &[u8]) -> Result<Option<AccessGuard<'_, &'static [u8]>>, redb::Error> {
        Ok(self.get(key)?)
    }
    fn range_from(
        &self,
        start: &[u8],
    ) -> Result<Range<'_, &'static [u8], &'static [u8]>, redb::Error> {
        Ok(self.range::<&[u8]>(start..)?)
    }
}

impl TableRead for Table<'_, &'static [u8], &'static [u8]> {
    fn get_bytes(&self, key: &[u8]) -> Result<Option<AccessGuard<'_, &'static [u8]>>, redb::Error> {
        Ok(self.get(key)?)
    }
    fn range_from(
        &self,
        start: &[u8],
    ) -> Result<Range<'_, &'static [u8], &'static [u8]>, redb::Error> {
        Ok(self.range::<&[u8]>(start..)?)
    }
}

/// One table of a read transaction, opened on first use. The transaction is shared by
/// the view's tables, so every table is read as of the same commit.
pub struct LazyTable {
    txn: Arc<ReadTransaction>,
    def: Def,
    table: OnceCell<ReadOnlyTable<&'static [u8], &'static [u8]>>,
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

    fn table(&self) -> Result<&ReadOnlyTable<&'static [u8], &'static [u8]>, redb::Error> {
        if let Some(t) = self.table.get() {
            return Ok(t);
        }
        // Every table exists (created when the store opens), so this fails only on a
        // storage error: logged here, as a view that could not open its tables was.
        let opened = self.txn.open_table(self.def).inspect_err(|e| {
            tracing::error!(table = %self.def, error = %e, "state store read failed");
        })?;
        Ok(self.table.get_or_init(|| opened))
    }
}

impl TableRead for LazyTable {
    fn get_bytes(&self, key: &[u8]) -> Result<Option<AccessGuard<'_, &'static [u8]>>, redb::Error> {
        self.table()?.get_bytes(key)
    }
    fn range_from(
        &self,
        start: &[u8],
    ) -> Result<Range<'_, &'static [u8], &'static [u8]>, redb::Error> {
        self.table()?.range_from(start)
    }
}
