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
            // Read as the API does (tables opened as first read), and with every table
            // opened up front.
            let view = State::over(DiskTables::lazy(db.begin_read().unwrap()));
            prop_assert_eq!(observe(&mem, &driver.ids), observe(&view, &driver.ids));
            let read = db.begin_read().unwrap();
            let eager = State::over(DiskTables::new(Handles::open(|d| read.open_table(d)).unwrap()));
            prop_assert_eq!(observe(&mem, &driver.ids), observe(&eager, &driver.ids));
        }
    }
}

#[test]
fn prefix_end_is_the_first_key_past_the_prefix() {
    assert_eq!(prefix_end(b"\x02ab"), Some(b"\x02ac".to_vec()));
    assert_eq!(prefix_end(b"\x02a\xff"), Some(b"\x02b".to_vec()));
    assert_eq!(prefix_end(b"\x00"), Some(b"\x01".to_vec()));
    assert_eq!(prefix_end(b"\xff\xff"), None);
    // Every key of a queue is below it, the next queue's keys are not.
    let end = prefix_end(&qkey("q1")).unwrap();
    assert!(ready_key("q1", i32::MIN, u64::MAX).as_slice() < end.as_slice());
    assert!(qkey("q2").as_slice() >= end.as_slice());
}
