//! Phase 5 (3 nodes or more): wipe a follower and time its catch-up.
//!
//! The follower is killed with SIGKILL and its data dir deleted. How it comes back
//! (`--rejoin`):
//!
//! - `re-add` (default): `Admin.RemoveNode` of its id, then it starts with `--peers`
//!   listing only the other nodes, so it does not form a cluster of its own and waits
//!   (`raft/node.rs`, `form_cluster`), then `Admin.AddNode` with its id and address: the
//!   leader replicates to it as a learner (by snapshot when the log it needs is purged),
//!   then makes it a voter. Like `taskraft cluster remove-node` / `add-node`.
//! - `same-peers`: it starts with the same `--id` and `--peers`. Having no Raft state it
//!   initializes the membership from `--peers` like a first start, and the leader, which
//!   still counts it as a member, replicates to it. On this broker that works while the
//!   leader still has the whole log, and the node panics once a snapshot is needed.
//!
//! The phase polls `GetClusterStatus` (answered locally) until the follower's applied
//! index reaches the leader's, watches the other nodes' leader and term for an election,
//! reads the "installed snapshot" line from the follower's log, and checks that a
//! linearizable read on the follower sees the leader's counts.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde_json::json;
use taskraft_proto::v1 as pb;
use tokio::time::Instant;

use super::{queue_stats, secs, status, Rejoin, Run};
use crate::client::Pool;
use crate::nodelog::{self, Event};
use crate::probe::{self, size, size_opt};

impl Run<'_> {
    /// Runs phase 5; its findings go to the summary and `details.catch_up`.
    pub(super) async fn catch_up(&mut self) -> Result<()> {
        let lead = self.leader().await?;
        // A follower that was not the node restarted in phase 3, if there is one.
        let f = (0..self.nodes.len())
            .filter(|i| *i != lead)
            .min_by_key(|i| Some(*i) == self.restarted)
            .context("no follower to wipe")?;
        let (id_f, id_l) = (self.ids[f], self.ids[lead]);
        let laddr = self.nodes[lead].addr.to_string();
        let faddr = self.nodes[f].addr.to_string();
        let before = status(&laddr, self.token())
            .await
            .context("GetClusterStatus of the leader")?;
        let others: Vec<String> = (0..self.nodes.len())
            .filter(|i| *i != f)
            .map(|i| self.nodes[i].addr.to_string())
            .collect();
        let peers_but_f: Vec<String> = (0..self.nodes.len())
            .filter(|i| *i != f)
            .map(|i| {
                format!(
                    "{}={}/{}",
                    self.ids[i], self.nodes[i].addr, self.nodes[i].peer
                )
            })
            .collect();
        self.read_hwm(f);
        let leader_reset = probe::reset_peak(self.nodes[lead].pid());
        let log_from = self.nodes[f].log_len();
        let wiped_at = SystemTime::now();
        let deadline = Instant::now() + self.o.phase_timeout;
        self.sampler.set_pid(f, None);
        self.nodes[f].kill9_and_wipe()?;
        let mut removed = None;
        if self.o.rejoin == Rejoin::ReAdd {
            let t = Instant::now();
            let pool = Pool::connect(std::slice::from_ref(&laddr), 1, self.token()).await?;
            pool.admin()
                .remove_node(pb::RemoveNodeRequest { node_id: id_f })
                .await
                .with_context(|| format!("Admin.RemoveNode {id_f}"))?;
            removed = Some(t.elapsed());
            self.nodes[f].set_arg("--peers", &peers_but_f.join(","));
        }
        self.nodes[f].restart()?;
        let start = Instant::now();
        let restarted_at = SystemTime::now();
        self.sampler.set_pid(f, Some(self.nodes[f].pid()));
        let add = (self.o.rejoin == Rejoin::ReAdd).then(|| {
            let req = pb::AddNodeRequest {
                node_id: id_f,
                addr: faddr.clone(),
                peer_addr: self.nodes[f].peer.to_string(),
            };
            let (servers, token) = (others.clone(), self.o.token.clone());
            tokio::spawn(add_node(servers, token, req, start, deadline))
        });

        let mut election = false;
        let mut target = before.applied_index;
        let mut caught = None;
        let mut last_seen = 0;
        while Instant::now() < deadline {
            if !self.all_alive("the catch-up") {
                break;
            }
            for a in &others {
                if let Some(st) = status(a, self.token()).await {
                    election |= st.term != before.term || st.leader_id != before.leader_id;
                    if st.node_id == before.leader_id {
                        target = target.max(st.applied_index);
                    }
                }
            }
            if let Some(st) = status(&faddr, self.token()).await {
                last_seen = st.applied_index;
                if st.applied_index >= target && st.applied_index > 0 {
                    caught = Some((start.elapsed(), st.applied_index));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // With re-add: when AddNode returned (caught up as a learner, then made a voter).
        let voter = match add {
            Some(task) if caught.is_some() => task.await.ok().flatten(),
            Some(task) => {
                task.abort();
                None
            }
            None => None,
        };
        let done_at = SystemTime::now();
        let f_alive = self.nodes[f].exited().is_none();
        let fpeak = if f_alive { self.read_hwm(f) } else { None };
        let lpeak = if self.nodes[lead].exited().is_none() {
            self.read_hwm(lead)
        } else {
            None
        };
        let sampled = self.sampler.peaks(Some(wiped_at), Some(done_at));
        let events = nodelog::events(self.nodes[f].log_path(), log_from);
        let since_start = |t: &SystemTime| secs(t.duration_since(restarted_at).unwrap_or_default());
        let receiving = events
            .iter()
            .find(|(_, e)| *e == Event::InstallStart)
            .map(|(t, _)| since_start(t));
        let installed = events
            .iter()
            .find(|(_, e)| *e == Event::Installed)
            .map(|(t, _)| since_start(t));
        let after = status(&laddr, self.token()).await;

        let how = match installed {
            Some(d) => format!(
                "by snapshot (receiving from {} s, installed {d:.2} s after the restart)",
                receiving.map_or("?".into(), |r| format!("{r:.2}"))
            ),
            None => "from the log, no snapshot installed (the leader had not purged what the follower needed: it keeps --keep-logs entries, default 1,000, behind its snapshot)".into(),
        };
        let after_desc = after.as_ref().map_or("leader unreachable".into(), |a| {
            format!("leader {} term {}", a.leader_id, a.term)
        });
        let election_desc = format!(
            "election on the way: {} (before: leader {} term {}; after: {after_desc})",
            if election { "yes" } else { "no" },
            before.leader_id,
            before.term
        );
        let rejoin = match (removed, voter) {
            (Some(r), Some(v)) => format!(
                "Admin.RemoveNode took {:.2} s; restarted with --peers of the other nodes; Admin.AddNode returned {:.2} s after the restart, a voter from then on",
                secs(r),
                secs(v)
            ),
            (Some(r), None) => {
                self.verified = false;
                format!(
                    "Admin.RemoveNode took {:.2} s; restarted with --peers of the other nodes; Admin.AddNode did NOT succeed",
                    secs(r)
                )
            }
            _ => "restarted with the same --id and --peers".into(),
        };
        match caught {
            Some((d, idx)) => self.summary.push(format!(
                "catch-up of wiped follower node {id_f} ({rejoin}): applied index {idx} reached the leader's {:.2} s after the restart, {how}; {election_desc}",
                secs(d)
            )),
            None => {
                self.verified = false;
                self.summary.push(format!(
                    "catch-up of wiped follower node {id_f} ({rejoin}): applied index {last_seen} did not reach the leader's {target} {} ({}); {election_desc}",
                    if f_alive { format!("within {:?}", self.o.phase_timeout) } else { "before the node exited".into() },
                    if installed.is_some() { "a snapshot was installed" } else { "no snapshot installed" }
                ));
            }
        }
        self.summary.push(format!(
            "catch-up RSS peak: follower node {id_f} {} (sampled {}), leader node {id_l} {}",
            size_opt(fpeak),
            size(sampled.rss[f]),
            if leader_reset {
                size_opt(lpeak)
            } else {
                format!("sampled {}", size(sampled.rss[lead]))
            }
        ));
        if caught.is_some() {
            // The follower's own linearizable read must see what the leader sees.
            let fpool = Pool::connect(std::slice::from_ref(&faddr), 1, self.token()).await?;
            let lpool = Pool::connect(std::slice::from_ref(&laddr), 1, self.token()).await?;
            let fs = queue_stats(&fpool, &self.queue).await?;
            let ls = queue_stats(&lpool, &self.queue).await?;
            let same = fs == ls;
            self.verified &= same;
            self.summary.push(format!(
                "catch-up verify: a read on the follower gives the leader's backlog counts: {same} (ready {} / {}, succeeded {} / {})",
                fs.ready, ls.ready, fs.succeeded, ls.succeeded
            ));
        }
        self.details.insert(
            "catch_up".into(),
            json!({"node": id_f, "leader": id_l, "rejoin": self.o.rejoin.name(),
                "remove_node_s": removed.map(secs), "add_node_s": voter.map(secs),
                "secs": caught.map(|c| secs(c.0)),
                "applied_index": caught.map(|c| c.1), "target_index": target,
                "by_snapshot": installed.is_some(), "snapshot_receiving_after_s": receiving,
                "snapshot_installed_after_s": installed, "election": election,
                "term_before": before.term, "term_after": after.as_ref().map(|a| a.term),
                "follower_rss_peak_bytes": fpeak,
                "leader_rss_peak_bytes": if leader_reset { lpeak } else { None },
                "sampled_follower_rss_peak_bytes": sampled.rss[f]}),
        );
        Ok(())
    }
}

/// Calls `Admin.AddNode` (through any of `servers`; followers forward it to the leader)
/// until it succeeds or `deadline`; returns the time since `start` when it did. It
/// returns only once the learner has caught up and was made a voter, which can outlast
/// a call's timeout: then the next call finds the learner and waits again.
async fn add_node(
    servers: Vec<String>,
    token: Option<String>,
    req: pb::AddNodeRequest,
    start: Instant,
    deadline: Instant,
) -> Option<Duration> {
    let mut last_error = String::new();
    for server in servers.iter().cycle() {
        if Instant::now() >= deadline {
            break;
        }
        if let Ok(pool) = Pool::connect(std::slice::from_ref(server), 1, token.as_deref()).await {
            match pool.admin().add_node(req.clone()).await {
                Ok(_) => return Some(start.elapsed()),
                Err(e) => last_error = e.message().to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "Admin.AddNode {} never succeeded; last error: {last_error}",
        req.node_id
    );
    None
}
