//! openraft's own storage test suite, run against our redb log store and state machine.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use taskraft_broker::raft::log_store::LogStore;
use taskraft_broker::raft::state_machine::StateMachineStore;
use taskraft_broker::raft::types::TypeConfig;
use taskraft_broker::storage::open_db;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_db =
            std::sync::Arc::new(open_db(&dir.path().join("raft-log.redb")).expect("log db"));
        let sm_db = std::sync::Arc::new(open_db(&dir.path().join("snapshot.redb")).expect("sm db"));
        let log = LogStore::new(log_db).expect("log store");
        let sm = StateMachineStore::new(sm_db).expect("state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_redb_stores() {
    Suite::test_all(RedbBuilder).expect("openraft storage suite");
}
