//! openraft's own storage test suite, run against our redb log store and state machine.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use taskraft_broker::raft::log_store::LogStore;
use taskraft_broker::raft::state_machine::StateMachineStore;
use taskraft_broker::raft::types::TypeConfig;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(&dir.path().join("raft-log.redb")).expect("log store");
        let sm = StateMachineStore::open(dir.path()).expect("state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_redb_stores() {
    Suite::test_all(RedbBuilder).expect("openraft storage suite");
}
