//! `Admin.Backup`: streams a consistent copy of the queue state.
//!
//! ```text
//!  read barrier (linearizable) ─► one read transaction of state.redb (MVCC: apply goes on)
//!     blocking thread: snapshot::dump_to ─► 1 MiB chunks ─► bounded channel ─► gRPC stream
//!     last message: done + the log index the copy is at
//! ```
//!
//! The bytes are a snapshot stream (`TRSNAP01`, see `raft/snapshot.rs`): the same
//! records a follower installs, ending with an end mark, so a copy cut short is refused
//! by `taskraft restore`. Nothing is staged on disk; a client that stops reading stops
//! the dump (the channel holds four chunks).

use std::io::{self, Write};
use std::sync::Arc;

use taskraft_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::error::BrokerError;
use crate::raft::RaftNode;

/// Bytes per streamed message.
const CHUNK: usize = 1 << 20;

/// The stream `Admin.Backup` answers with.
pub type BackupStream = ReceiverStream<Result<pb::BackupChunk, Status>>;

/// Starts a backup of `node`'s state once it has applied everything committed before
/// the call.
pub async fn start(node: &Arc<RaftNode>) -> Result<BackupStream, Status> {
    node.read_barrier().await?;
    let (view, applied_index) = node
        .backup_view()
        .map_err(|e| BrokerError::Internal(format!("opening a read view for the backup: {e}")))?;
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let mut out = ChunkWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
            bytes: 0,
        };
        match crate::raft::snapshot::dump_to(&view, &mut out) {
            Ok(records) => {
                let last = pb::BackupChunk {
                    data: Default::default(),
                    done: true,
                    applied_index,
                };
                if tx.blocking_send(Ok(last)).is_ok() {
                    tracing::info!(
                        records,
                        bytes = out.bytes,
                        applied_index,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "backup streamed"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "backup stopped");
                let _ = tx.blocking_send(Err(Status::unavailable(format!("backup failed: {e}"))));
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Cuts what the dump writes into messages on the channel.
struct ChunkWriter {
    tx: mpsc::Sender<Result<pb::BackupChunk, Status>>,
    buf: Vec<u8>,
    bytes: u64,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.bytes += data.len() as u64;
        let chunk = pb::BackupChunk {
            data: data.into(),
            done: false,
            applied_index: 0,
        };
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::other("the client stopped reading the backup"))
    }
}
