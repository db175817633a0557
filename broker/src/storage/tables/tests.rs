use proptest::prelude::*;
use redb::{Durability, ReadableDatabase};

use super::*;
use crate::queue::testing::{observe, op, Driver};
use crate::queue::State;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// The rules over redb answer exactly as over memory: every reply, every reported
    /// transition, and every read after every entry.
    #[test]
    fn redb_tables_answer_like_memory_tables(ops in proptest::collection::vec(op(), 1..100)) {
        let dir = tempfile::tempdir().unwrap();
        let db = test_store(&dir.path().join("state.redb"));
        let mut mem = State::new();
        let mut driver = Driver::default();
        for op in ops {
            let env = driver.envelope(op);
            let mut want_moves = Vec::new();
            let want = mem.apply_reporting(&env, &mut want_moves);
            let mut txn = db.begin_write().unwrap();
            txn.set_durability(Durability::None).unwrap();
            let mut got_moves = Vec::new();
            let got = {
                let h = Handles::open(|d| txn.open_table(d)).unwrap();
                let mut disk = State::over(DiskTables::new(h));
                let got = disk.apply_reporting(&env, &mut got_moves);
                let mut tables = disk.into_tables();
                tables.flush();
                prop_assert_eq!(tables.error(), None);
                got
            };
            txn.commit().unwrap();
            prop_assert_eq!(format!("{want:?}"), format!("{got:?}"));
            prop_assert_eq!(want_moves, got_moves);
            driver.observe(&want);
            let read = db.begin_read().unwrap();
            let view = State::over(DiskTables::new(Handles::open(|d| read.open_table(d)).unwrap()));
            prop_assert_eq!(observe(&mem, &driver.ids), observe(&view, &driver.ids));
        }
    }
}
