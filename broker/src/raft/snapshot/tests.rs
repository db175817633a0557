use redb::ReadableDatabase;

use super::*;
use crate::queue::testing::{observe, op, Driver};
use crate::queue::State;
use crate::storage::tables::{DiskTables, Handles};
use proptest::strategy::{Strategy, ValueTree};

fn view_text(db: &Database, ids: &[String]) -> String {
    let read = db.begin_read().unwrap();
    let h = Handles::open(|d| read.open_table(d)).unwrap();
    observe(&State::over(DiskTables::new(h)), ids)
}

/// A state built by random commands, dumped from a read view and loaded into a new
/// store, reads the same; a stream cut anywhere is refused.
#[test]
fn dumped_view_loads_into_an_equal_store_and_a_cut_stream_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = tables::test_store(&dir.path().join("a.redb"));
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let ops = proptest::collection::vec(op(), 300)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let mut driver = Driver::default();
    for op in ops {
        let env = driver.envelope(op);
        let txn = db.begin_write().unwrap();
        {
            let h = Handles::open(|d| txn.open_table(d)).unwrap();
            let mut s = State::over(DiskTables::new(h));
            let reply = s.apply(&env);
            driver.observe(&reply);
            s.into_tables().flush();
        }
        txn.commit().unwrap();
    }
    let want = view_text(&db, &driver.ids);

    let view = Arc::new(db.begin_read().unwrap());
    let mut file = dump(&view, dir.path()).unwrap();
    let b = tables::test_store(&dir.path().join("b.redb"));
    load(file.try_clone().unwrap(), &b).unwrap();
    assert_eq!(view_text(&b, &driver.ids), want);

    let mut bytes = Vec::new();
    std::io::Seek::seek(&mut file, SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut bytes).unwrap();
    for cut in [0, 5, 8, 9, bytes.len() / 2, bytes.len() - 1] {
        let mut part = tempfile::tempfile().unwrap();
        part.write_all(&bytes[..cut]).unwrap();
        let c = tables::test_store(&dir.path().join(format!("cut{cut}.redb")));
        let err = load(part, &c).unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::InvalidData,
            "cut at {cut}: {err}"
        );
    }
}
