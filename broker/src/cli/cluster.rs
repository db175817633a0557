//! `taskraft cluster status|add-node|remove-node` and `taskraft workers`.

use clap::Subcommand;
use serde_json::{json, Value};
use taskraft_proto::v1 as pb;

use super::output::{print_json, table, time};
use super::{CliError, Conn};

/// `taskraft cluster ...`.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Leader, term, members and log positions.
    Status,
    /// Add a node (it must already run `taskraft serve`); it catches up as a learner,
    /// then votes.
    AddNode {
        /// The new node's id (>= 1, unused).
        id: u64,
        /// Its gRPC address as the other nodes reach it (host:port), or CLIENT/PEER.
        addr: String,
        /// Its peer address (its --peer-listen); default: from addr, or its client
        /// port + 2.
        #[arg(long)]
        peer_addr: Option<String>,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        /// The node's id.
        id: u64,
    },
}

fn show_status(conn: &Conn, s: &pb::ClusterStatus) {
    if conn.json {
        let nodes: Vec<Value> = s
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "id": n.id,
                    "addr": n.addr,
                    "peer_addr": n.peer_addr,
                    "role": n.role,
                    "matched_index": n.matched_index,
                })
            })
            .collect();
        print_json(&json!({
            "leader_id": s.leader_id,
            "term": s.term,
            "node_id": s.node_id,
            "last_log_index": s.last_log_index,
            "commit_index": s.commit_index,
            "applied_index": s.applied_index,
            "nodes": nodes,
        }));
        return;
    }
    let leader = if s.leader_id == 0 {
        "none (election in progress?)".to_string()
    } else {
        s.leader_id.to_string()
    };
    println!("leader:   {leader}");
    println!("term:     {}", s.term);
    println!(
        "log:      last {} / committed {} / applied {} (as seen by node {})",
        s.last_log_index, s.commit_index, s.applied_index, s.node_id
    );
    println!();
    let rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.addr.clone(),
                n.role.clone(),
                if n.matched_index == 0 {
                    "-".into()
                } else {
                    n.matched_index.to_string()
                },
            ]
        })
        .collect();
    table(&["ID", "ADDR", "ROLE", "MATCHED"], &rows);
}

/// Runs `taskraft cluster ...`.
pub async fn run(conn: &mut Conn, cmd: ClusterCommand) -> Result<(), CliError> {
    let status = match cmd {
        ClusterCommand::Status => {
            let req = conn.req(pb::GetClusterStatusRequest {});
            conn.admin.get_cluster_status(req).await
        }
        ClusterCommand::AddNode {
            id,
            addr,
            peer_addr,
        } => {
            let req = conn.req(pb::AddNodeRequest {
                node_id: id,
                addr,
                peer_addr: peer_addr.unwrap_or_default(),
            });
            conn.admin.add_node(req).await
        }
        ClusterCommand::RemoveNode { id } => {
            let req = conn.req(pb::RemoveNodeRequest { node_id: id });
            conn.admin.remove_node(req).await
        }
    };
    let status = status.map_err(|s| conn.fail(s))?.into_inner();
    show_status(conn, &status);
    Ok(())
}

/// Runs `taskraft workers`.
pub async fn workers(conn: &mut Conn) -> Result<(), CliError> {
    let req = conn.req(pb::ListWorkersRequest {});
    let r = conn
        .admin
        .list_workers(req)
        .await
        .map_err(|s| conn.fail(s))?
        .into_inner();
    if conn.json {
        let workers: Vec<Value> = r
            .workers
            .iter()
            .map(|w| {
                json!({
                    "worker_id": w.worker_id,
                    "queues": w.queues,
                    "jobs_in_hand": w.jobs_in_hand,
                    "last_seen_ms": w.last_seen_ms,
                    "leased_total": w.leased_total,
                })
            })
            .collect();
        print_json(&Value::Array(workers));
    } else if r.workers.is_empty() {
        println!("no workers seen recently");
    } else {
        let rows: Vec<Vec<String>> = r
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.worker_id.clone(),
                    w.queues.join(","),
                    w.jobs_in_hand.to_string(),
                    w.leased_total.to_string(),
                    time(w.last_seen_ms),
                ]
            })
            .collect();
        table(
            &["WORKER", "QUEUES", "IN HAND", "LEASED TOTAL", "LAST SEEN"],
            &rows,
        );
    }
    Ok(())
}
