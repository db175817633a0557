// Errors: `TaskraftError` and its subclasses for every fallible SDK call, and
// `PermanentError` / `RetryableError` for job handlers to throw.
//
// Server answers are classified by gRPC code, and FAILED_PRECONDITION answers also by
// the `taskraft-reason` metadata the broker attaches, so a cancelled job is told apart
// from a lease that merely ran out:
//
//   INVALID_ARGUMENT, OUT_OF_RANGE        -> InvalidArgumentError
//   NOT_FOUND                             -> NotFoundError
//   FAILED_PRECONDITION reason=cancelled  -> JobCancelledError   (extends FailedPreconditionError)
//   FAILED_PRECONDITION reason=stale-lease-> LeaseLostError      (extends FailedPreconditionError)
//   FAILED_PRECONDITION otherwise         -> FailedPreconditionError
//   UNAUTHENTICATED, PERMISSION_DENIED    -> UnauthenticatedError
//   UNAVAILABLE (after retries)           -> UnavailableError    (retryable)
//   DEADLINE_EXCEEDED (after retries)     -> TimeoutError        (retryable)
//   anything else                         -> ServerError

import * as grpc from "@grpc/grpc-js";

/** Metadata key the broker sets on FAILED_PRECONDITION answers of lease calls. */
export const REASON_KEY = "taskraft-reason";

/** Base class of every error the SDK raises. */
export class TaskraftError extends Error {
  /** The gRPC status code this error came from, if it came from the server. */
  readonly code: grpc.status | undefined;

  constructor(message: string, code?: grpc.status, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }

  /** True when retrying the same call later may succeed. */
  get retryable(): boolean {
    return false;
  }
}

/** No node answered (connection refused, no leader, no quorum) within the retry window. */
export class UnavailableError extends TaskraftError {
  /** The addresses that were tried, comma separated. */
  readonly addrs: string;

  constructor(addrs: string, message: string) {
    // A refused certificate will not go away by retrying: point at the TLS settings.
    const hint = /certificate|altname|self[- ]signed|\bTLS\b|\bSSL\b/i.test(message)
      ? "a TLS failure: does the node serve TLS, and do tls.caFile / tls.ca hold the CA that signed its certificate for this address (or tls.serverName)?"
      : "is `taskraft serve` running?";
    super(`cannot reach taskraft at ${addrs}: ${message} (${hint})`, grpc.status.UNAVAILABLE);
    this.addrs = addrs;
  }

  override get retryable(): boolean {
    return true;
  }
}

/** A call (or a wait) did not finish within its deadline. */
export class TimeoutError extends TaskraftError {
  constructor(message: string) {
    super(`timed out: ${message}`, grpc.status.DEADLINE_EXCEEDED);
  }

  override get retryable(): boolean {
    return true;
  }
}

/** The server refused the input; the message names the field and the limit. */
export class InvalidArgumentError extends TaskraftError {}

/** The job does not exist, or retention already removed it. */
export class NotFoundError extends TaskraftError {}

/** The job is in the wrong state for this call (or the queue is paused, ...). */
export class FailedPreconditionError extends TaskraftError {}

/** The job was cancelled while it was leased; its handler should stop. */
export class JobCancelledError extends FailedPreconditionError {}

/** The lease is no longer ours: it ran out and the job went to another worker, or the job finished. */
export class LeaseLostError extends FailedPreconditionError {}

/** The token is missing or wrong (see `ClientOptions.token`). */
export class UnauthenticatedError extends TaskraftError {}

/** Any other server answer. */
export class ServerError extends TaskraftError {}

/** A client or worker option is out of range, or an address is malformed. */
export class ConfigError extends TaskraftError {}

/** Classifies a gRPC error that is not retried by the client. */
export function fromServiceError(e: grpc.ServiceError): TaskraftError {
  return fromStatus(e.code, e.details || e.message, e.metadata?.get(REASON_KEY)[0]?.toString() ?? "");
}

/**
 * Classifies a status code with its message and `taskraft-reason` (FAILED_PRECONDITION
 * only): what a unary call's error or a `Work` stream's answer (`WorkAnswer.code`,
 * `message`, `reason`) says, as the same error either way.
 */
export function fromStatus(code: grpc.status, message: string, reason = ""): TaskraftError {
  switch (code) {
    case grpc.status.INVALID_ARGUMENT:
    case grpc.status.OUT_OF_RANGE:
      return new InvalidArgumentError(`invalid argument: ${message}`, code);
    case grpc.status.NOT_FOUND:
      return new NotFoundError(`not found: ${message}`, code);
    case grpc.status.FAILED_PRECONDITION: {
      if (reason === "cancelled") return new JobCancelledError(`job cancelled: ${message}`, code);
      if (reason === "stale-lease") return new LeaseLostError(`lease lost: ${message}`, code);
      return new FailedPreconditionError(`failed precondition: ${message}`, code);
    }
    case grpc.status.UNAUTHENTICATED:
    case grpc.status.PERMISSION_DENIED:
      return new UnauthenticatedError(
        `unauthenticated: ${message} (set the token the broker was started with)`,
        code,
      );
    case grpc.status.DEADLINE_EXCEEDED:
      return new TimeoutError(message);
    default:
      return new ServerError(`server error (${grpc.status[code] ?? code}): ${message}`, code);
  }
}

/**
 * Thrown by a handler: the job is dead-lettered now, whatever attempts remain (no retry
 * can fix it: bad input, a payload that does not decode, ...).
 */
export class PermanentError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "PermanentError";
  }
}

/**
 * Thrown by a handler to pick the retry delay. Any other error thrown by a handler is
 * retryable too, with the broker's exponential backoff.
 */
export class RetryableError extends Error {
  /** Delay before the next attempt, in ms (at least 1); undefined: the broker's backoff. */
  readonly retryAfterMs: number | undefined;

  constructor(message: string, options?: { retryAfterMs?: number; cause?: unknown }) {
    super(message, options);
    this.name = "RetryableError";
    this.retryAfterMs =
      options?.retryAfterMs === undefined ? undefined : Math.max(1, Math.round(options.retryAfterMs));
  }
}

/** The text stored as a job's `last_error` for whatever a handler threw. */
export function errorText(e: unknown): string {
  if (e instanceof Error) {
    // Keep the chain: "decode order: Unexpected token".
    let text = e.message || e.name;
    let cause = e.cause;
    for (let depth = 0; cause !== undefined && depth < 8; depth++) {
      text += `: ${cause instanceof Error ? cause.message : String(cause)}`;
      cause = cause instanceof Error ? cause.cause : undefined;
    }
    return text;
  }
  return `handler threw a non-Error value: ${String(e)}`;
}
