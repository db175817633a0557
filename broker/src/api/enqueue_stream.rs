//! `EnqueueStream`: many enqueues in flight on one bidirectional stream.
//!
//! A unary `Enqueue` costs an HTTP/2 request, the tower layers and a proposer command
//! per job. Here one reader task takes each message as it arrives, validates it alone
//! (a bad job is answered with its own code and the stream goes on), and packs the valid
//! jobs that are already waiting into one `Command::EnqueueNumbered`, like `EnqueueBatch`, but
//! each job is answered by its `seq` once its entry is durable and applied. At most
//! [`WINDOW`] jobs are in flight per stream; beyond that the reader stops reading, and
//! HTTP/2 flow control holds the client back.

use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use taskraft_proto::v1 as pb;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::auth::{self, Credential};
use super::broker::BrokerService;
use super::validate::{self, MAX_BATCH, MAX_BATCH_BYTES};
use crate::error::BrokerError;
use crate::queue::NewJob;

/// Jobs in flight (read, not yet answered) per stream.
pub const WINDOW: usize = 1024;

/// The answer stream of an `EnqueueStream` call.
pub type Answers =
    std::pin::Pin<Box<dyn Stream<Item = Result<pb::EnqueueStreamResponse, Status>> + Send>>;

/// Serves one `EnqueueStream` call (see the module doc).
pub async fn serve(
    service: BrokerService,
    req: Request<Streaming<pb::EnqueueStreamRequest>>,
) -> Result<Response<Answers>, Status> {
    let cred = auth::credential(&req);
    let (metadata, _, inbound) = req.into_parts();
    let (tx, rx) = mpsc::channel(WINDOW);
    tokio::spawn(
        read(service, cred, metadata, inbound, tx)
            .instrument(tracing::info_span!("enqueue_stream")),
    );
    let answers = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Response::new(Box::pin(answers)))
}

/// A job read from the stream and its place in the window.
struct Pending {
    seq: u64,
    job: NewJob,
    permit: OwnedSemaphorePermit,
}

type Tx = mpsc::Sender<Result<pb::EnqueueStreamResponse, Status>>;

/// Reads the stream until the client closes it (or it breaks), answering bad jobs at
/// once and proposing the good ones in groups.
async fn read(
    service: BrokerService,
    cred: Arc<Credential>,
    metadata: tonic::metadata::MetadataMap,
    mut inbound: Streaming<pb::EnqueueStreamRequest>,
    tx: Tx,
) {
    let window = Arc::new(Semaphore::new(WINDOW));
    let mut read = 0u64;
    let mut ended = false;
    while !ended {
        let Ok(permit) = window.clone().acquire_owned().await else {
            return;
        };
        // Wait for one message, then take whatever else has already arrived.
        let first = match inbound.next().await {
            Some(m) => m,
            None => break,
        };
        let mut group: Vec<Pending> = Vec::new();
        let mut group_bytes = 0usize;
        let mut next = Some((first, permit));
        while let Some((msg, permit)) = next.take() {
            let msg = match msg {
                Ok(m) => m,
                Err(status) => {
                    // A message that cannot be decoded (or a broken transport) ends
                    // the call: nothing after it can be trusted to line up.
                    let _ = tx.send(Err(status)).await;
                    propose(&service, std::mem::take(&mut group), &tx).await;
                    return;
                }
            };
            read += 1;
            let seq = msg.seq;
            match check(&service, &cred, &metadata, msg) {
                Ok((job, bytes)) => {
                    if !group.is_empty()
                        && (group.len() >= MAX_BATCH || group_bytes + bytes > MAX_BATCH_BYTES)
                    {
                        spawn_propose(&service, std::mem::take(&mut group), &tx);
                        group_bytes = 0;
                    }
                    group_bytes += bytes;
                    group.push(Pending { seq, job, permit });
                }
                Err(e) => {
                    if tx.send(Ok(refused(seq, &Status::from(e)))).await.is_err() {
                        return;
                    }
                }
            }
            let Ok(permit) = window.clone().try_acquire_owned() else {
                break;
            };
            match inbound.next().now_or_never() {
                Some(Some(m)) => next = Some((m, permit)),
                Some(None) => ended = true,
                None => {}
            }
        }
        spawn_propose(&service, group, &tx);
    }
    tracing::debug!(jobs = read, "enqueue stream closed by the client");
    // The answers end once every proposal in flight has answered (each holds a `tx`).
}

/// Validates one message as `Enqueue` would; returns the job and its size in an entry.
fn check(
    service: &BrokerService,
    cred: &Credential,
    metadata: &tonic::metadata::MetadataMap,
    msg: pb::EnqueueStreamRequest,
) -> Result<(NewJob, usize), BrokerError> {
    let Some(call) = msg.job else {
        return Err(BrokerError::invalid("job", "the message holds no job"));
    };
    cred.check_queue("job.queue", &call.queue)?;
    let bytes = validate::job_bytes(
        call.payload.len(),
        &[
            &call.job_type,
            &call.idempotency_key,
            &call.request_id,
            &call.webhook_url,
            &call.queue,
        ],
        call.headers.iter(),
    );
    let job = service.new_job(call, None, metadata)?;
    Ok((job, bytes))
}

fn spawn_propose(service: &BrokerService, group: Vec<Pending>, tx: &Tx) {
    if group.is_empty() {
        return;
    }
    let service = service.clone();
    let tx = tx.clone();
    tokio::spawn(async move { propose(&service, group, &tx).await });
}

/// Proposes one group as one `Command::EnqueueNumbered` and answers each of its jobs.
async fn propose(service: &BrokerService, group: Vec<Pending>, tx: &Tx) {
    if group.is_empty() {
        return;
    }
    let mut seqs = Vec::with_capacity(group.len());
    let mut jobs = Vec::with_capacity(group.len());
    // The jobs keep their places in the window until they are answered (this returns).
    let mut _permits = Vec::with_capacity(group.len());
    for p in group {
        seqs.push(p.seq);
        jobs.push(p.job);
        _permits.push(p.permit);
    }
    match service.enqueue_jobs(jobs).await {
        Ok(results) => {
            for (seq, r) in seqs.into_iter().zip(results) {
                let answer = pb::EnqueueStreamResponse {
                    seq,
                    job_id: r.job_id,
                    duplicate: r.duplicate,
                    code: 0,
                    message: String::new(),
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        }
        Err(e) => {
            let status = Status::from(e);
            for seq in seqs {
                if tx.send(Ok(refused(seq, &status))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The answer for a job refused, with the status a unary `Enqueue` would have got.
fn refused(seq: u64, status: &Status) -> pb::EnqueueStreamResponse {
    pb::EnqueueStreamResponse {
        seq,
        code: status.code() as i32,
        message: status.message().to_string(),
        ..Default::default()
    }
}
