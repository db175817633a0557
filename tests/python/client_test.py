"""A Python client of taskraft's public gRPC API, run by tests/python.rs.

It proves that stubs generated from proto/taskraft/v1/taskraft.proto by a stock
protoc (grpc_tools) talk to a real `taskraft serve`: enqueue with priorities,
lease in priority order, ack, read back, count, and a validation error.

Usage: client_test.py HOST:PORT   (the generated stubs must be on PYTHONPATH)
Exit status 0 when every check passes; on failure the message says which one.
"""

import os
import sys
import time

import grpc

from taskraft.v1 import taskraft_pb2 as pb
from taskraft.v1 import taskraft_pb2_grpc as rpc

TIMEOUT_S = 10.0


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)
    print(f"ok: {what}")


def run(addr):
    queue = f"py-client-{os.getpid()}-{int(time.time() * 1000)}"
    with grpc.insecure_channel(addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT_S)
        broker = rpc.BrokerStub(channel)
        admin = rpc.AdminStub(channel)

        # Three jobs, enqueued low, high, middle.
        ids = {}
        for name, priority in [("low", 1), ("high", 9), ("mid", 5)]:
            resp = broker.Enqueue(
                pb.EnqueueRequest(
                    queue=queue,
                    payload=name.encode(),
                    job_type="py",
                    priority=priority,
                    headers={"lang": "python"},
                ),
                timeout=TIMEOUT_S,
            )
            check(resp.job_id and not resp.duplicate, f"enqueue {name} -> {resp.job_id}")
            ids[name] = resp.job_id

        stats = admin.GetQueueStats(pb.GetQueueStatsRequest(queue=queue), timeout=TIMEOUT_S)
        check(stats.ready == 3, f"3 ready before lease (got {stats.ready})")

        leased = broker.Lease(
            pb.LeaseRequest(
                queues=[queue],
                worker_id="py-worker",
                max_jobs=10,
                visibility_timeout_ms=30_000,
                wait_ms=1_000,
            ),
            timeout=TIMEOUT_S,
        ).jobs
        order = [j.payload.decode() for j in leased]
        check(order == ["high", "mid", "low"], f"leased in priority order (got {order})")
        check(
            [j.job_id for j in leased] == [ids["high"], ids["mid"], ids["low"]],
            "leased job ids match the enqueued ones",
        )
        check(all(j.attempt == 1 for j in leased), "first delivery has attempt 1")
        check(all(len(j.lease_id) == 16 for j in leased), "lease ids are 16 hex digits")
        check(all(j.headers.get("lang") == "python" for j in leased), "headers round-trip")

        stats = admin.GetQueueStats(pb.GetQueueStatsRequest(queue=queue), timeout=TIMEOUT_S)
        check(stats.leased == 3 and stats.ready == 0, f"3 leased, 0 ready (got {stats})")

        for j in leased:
            broker.Ack(
                pb.AckRequest(job_id=j.job_id, lease_id=j.lease_id, result=b"done-" + j.payload),
                timeout=TIMEOUT_S,
            )
        print("ok: acked 3 jobs")

        for name, job_id in ids.items():
            job = broker.GetJob(pb.GetJobRequest(job_id=job_id), timeout=TIMEOUT_S)
            check(
                job.state == pb.JOB_STATE_SUCCEEDED,
                f"job {name} is SUCCEEDED (got {pb.JobState.Name(job.state)})",
            )
            check(job.result == b"done-" + name.encode(), f"job {name} keeps its result")

        stats = admin.GetQueueStats(pb.GetQueueStatsRequest(queue=queue), timeout=TIMEOUT_S)
        check(
            stats.succeeded == 3 and stats.ready == 0 and stats.leased == 0,
            f"stats: succeeded 3, ready 0, leased 0 (got succeeded={stats.succeeded} "
            f"ready={stats.ready} leased={stats.leased})",
        )

        # A name outside [A-Za-z0-9._:-] is the caller's mistake: INVALID_ARGUMENT.
        try:
            broker.Enqueue(pb.EnqueueRequest(queue="bad queue!", payload=b"x"), timeout=TIMEOUT_S)
        except grpc.RpcError as e:
            check(
                e.code() == grpc.StatusCode.INVALID_ARGUMENT,
                f"bad queue name gives INVALID_ARGUMENT (got {e.code()})",
            )
            check("queue" in (e.details() or ""), f"the message names the field ({e.details()!r})")
        else:
            check(False, "bad queue name was refused")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        run(sys.argv[1])
    except CheckFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"FAILED: unexpected RPC error {e.code()}: {e.details()}", file=sys.stderr)
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
