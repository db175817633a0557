// TypeScript client and worker SDK for taskraft, a Raft-replicated task broker.
//
// A producer enqueues jobs with a `Client`; a `Worker` leases them, runs the handler
// registered for each job's `jobType`, and acks or nacks. While a handler runs the
// worker keeps its lease alive, so the visibility timeout only bounds how soon a crashed
// worker's jobs run again. Delivery is at least once: make handlers idempotent.
//
// Layout:
//   client.ts   connections, leader discovery, retries across nodes, producer and admin calls
//   options.ts  enqueue options, batch jobs, JobInfo
//   worker.ts   the job loops (Work session by default, or Lease polls) and graceful shutdown
//   session.ts  the Work stream's plumbing: settles by seq, reading pushes, resume helpers
//   runner.ts   one job's life: lease keeper, handler, ack/nack
//   job.ts      what handlers see and return
//   errors.ts   error classes mapped from gRPC codes; PermanentError, RetryableError
//   proto.ts    the service definitions, loaded from the package's proto/ at run time

export { Client, type ClientOptions, type RawCallOptions, type TlsOptions, type WorkConn } from "./client.js";
export {
  ConfigError,
  FailedPreconditionError,
  InvalidArgumentError,
  JobCancelledError,
  LeaseLostError,
  NotFoundError,
  PermanentError,
  RetryableError,
  ServerError,
  TaskraftError,
  TimeoutError,
  UnauthenticatedError,
  UnavailableError,
} from "./errors.js";
export { Job, type Handler, type HandlerResult } from "./job.js";
export { stderrLogger, type LogFields, type Logger } from "./log.js";
export {
  isFinal,
  type CallOptions,
  type Enqueued,
  type EnqueueOptions,
  type JobInfo,
  type JobState,
  type NewJob,
  type Payload,
} from "./options.js";
export type { ClusterStatus, QueueStats, WorkerInfo } from "./proto.js";
export { Worker, type Protocol, type Report, type WorkerOptions } from "./worker.js";
