// @ts-check
// Classification of gRPC answers into error classes (no broker needed).
import assert from "node:assert/strict";
import { test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import { fromServiceError } from "../dist/errors.js";
import {
  FailedPreconditionError,
  InvalidArgumentError,
  JobCancelledError,
  LeaseLostError,
  NotFoundError,
  PermanentError,
  RetryableError,
  ServerError,
  TaskraftError,
  UnauthenticatedError,
} from "../dist/index.js";

/**
 * @param {grpc.status} code
 * @param {string} details
 * @param {string} [reason]
 * @returns {grpc.ServiceError}
 */
function status(code, details, reason) {
  const metadata = new grpc.Metadata();
  if (reason) metadata.set("taskraft-reason", reason);
  return Object.assign(new Error(details), { code, details, metadata });
}

test("cancelled and stale leases are told apart by the reason metadata", () => {
  const cancelled = fromServiceError(status(grpc.status.FAILED_PRECONDITION, "job x was cancelled", "cancelled"));
  assert.ok(cancelled instanceof JobCancelledError, cancelled.name);
  assert.ok(cancelled instanceof FailedPreconditionError);
  const stale = fromServiceError(status(grpc.status.FAILED_PRECONDITION, "not the current lease", "stale-lease"));
  assert.ok(stale instanceof LeaseLostError, stale.name);
  const other = fromServiceError(status(grpc.status.FAILED_PRECONDITION, "queue is paused"));
  assert.equal(other.constructor, FailedPreconditionError);
  assert.equal(other.code, grpc.status.FAILED_PRECONDITION);
});

test("codes map to their classes and only transient ones are retryable", () => {
  /** @type {Array<[grpc.status, Function]>} */
  const cases = [
    [grpc.status.INVALID_ARGUMENT, InvalidArgumentError],
    [grpc.status.OUT_OF_RANGE, InvalidArgumentError],
    [grpc.status.NOT_FOUND, NotFoundError],
    [grpc.status.UNAUTHENTICATED, UnauthenticatedError],
    [grpc.status.PERMISSION_DENIED, UnauthenticatedError],
    [grpc.status.INTERNAL, ServerError],
  ];
  for (const [code, cls] of cases) {
    const e = fromServiceError(status(code, "msg"));
    assert.ok(e instanceof cls, `${grpc.status[code]} -> ${e.name}`);
    assert.ok(e instanceof TaskraftError);
    assert.equal(e.retryable, false);
    assert.match(e.message, /msg/);
  }
  assert.equal(fromServiceError(status(grpc.status.DEADLINE_EXCEEDED, "slow")).retryable, true);
});

test("handler errors carry dead-lettering and the retry delay", () => {
  assert.equal(new RetryableError("x", { retryAfterMs: 0 }).retryAfterMs, 1);
  assert.equal(new RetryableError("x").retryAfterMs, undefined);
  assert.equal(new PermanentError("bad input").name, "PermanentError");
});
