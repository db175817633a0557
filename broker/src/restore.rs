//! `taskraft restore`: seeds a node's empty data dir from a backup (`taskraft backup`),
//! as if the node had installed a snapshot and purged its log.
//!
//! ```text
//!  backup file (snapshot stream) ─► state.redb, applied = the backup's log id L,
//!                                   membership = the new cluster (--peers) at L
//!  raft-log.redb: no entries, purged up to L, committed L, vote (L's term, this node)
//! ```
//!
//! Restore every node of the new cluster from the same file with the same `--peers`
//! (each with its own `--id`): they then hold the same state at the same log id, which
//! is what Raft needs, and elect a leader in the next term. Or restore one node whose
//! `--peers` lists only itself and add the others with `AddNode`: they receive the
//! state as a snapshot, since no log before L exists anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{BasicNode, Membership, SnapshotMeta, StoredMembership, Vote};

use crate::config::Config;
use crate::raft::log_store::LogStore;
use crate::raft::snapshot::{self, SnapshotData};
use crate::raft::state_machine::{StateMachineStore, APPLIED_KEY};
use crate::raft::types::LogId;
use crate::storage::decode;

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The log index the backup was taken at (the restored node starts there).
    pub applied_index: u64,
    /// The members of the new cluster.
    pub members: BTreeMap<u64, String>,
}

/// Restores the backup at `from` into `config.data_dir`, which must not hold a node yet.
pub async fn restore(config: &Config, from: &Path) -> anyhow::Result<Restored> {
    for f in [crate::storage::LOG_FILE, crate::storage::STATE_FILE] {
        let p = config.data_dir.join(f);
        if p.exists() {
            bail!(
                "{} exists: restore seeds a new node and never overwrites one (move the data dir away first)",
                p.display()
            );
        }
    }
    let mut file = std::fs::File::open(from)
        .with_context(|| format!("opening the backup {}", from.display()))?;
    let applied: LogId = snapshot::peek_meta(&mut file, APPLIED_KEY)
        .with_context(|| format!("reading the backup {}", from.display()))?
        .map(|bytes| decode::<Option<LogId>>(&bytes))
        .transpose()
        .context("decoding the backup's log position")?
        .flatten()
        .with_context(|| {
            format!(
                "{} holds no applied log position: not a backup of a running cluster",
                from.display()
            )
        })?;

    let members: BTreeMap<u64, String> = if config.peers.is_empty() {
        let addr = config
            .advertise
            .clone()
            .unwrap_or_else(|| config.listen.to_string());
        BTreeMap::from([(config.id, addr)])
    } else {
        config.peers.clone()
    };
    if !members.contains_key(&config.id) {
        bail!(
            "node {} is not in --peers: restore the nodes listed in --peers (each from the same backup), \
             and add other nodes afterwards with AddNode",
            config.id
        );
    }
    let voters: BTreeSet<u64> = members.keys().copied().collect();
    let nodes: BTreeMap<u64, BasicNode> = members
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    let membership = Membership::new(vec![voters], nodes);
    let meta = SnapshotMeta {
        last_log_id: Some(applied),
        last_membership: StoredMembership::new(Some(applied), membership),
        snapshot_id: format!("restore-{}-{}", applied.leader_id, applied.index),
    };

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let mut sm = StateMachineStore::open(&config.data_dir)?;
    sm.install_snapshot(&meta, Box::new(SnapshotData::from_file(file)))
        .await
        .with_context(|| format!("loading the backup {}", from.display()))?;
    let mut log = LogStore::open(&config.data_dir.join(crate::storage::LOG_FILE))?;
    log.purge(applied).await.context("writing the log start")?;
    log.save_committed(Some(applied))
        .await
        .context("writing the committed position")?;
    // Last: the vote is fsynced before it is answered, and the log writer keeps the
    // order of writes, so the committed position (not waited for) is on disk with it.
    log.save_vote(&Vote::new(applied.leader_id.term, config.id))
        .await
        .context("writing the vote")?;
    tracing::info!(
        node_id = config.id,
        applied_index = applied.index,
        "restored from backup"
    );
    Ok(Restored {
        applied_index: applied.index,
        members,
    })
}
