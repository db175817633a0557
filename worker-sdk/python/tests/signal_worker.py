"""A worker process for test_worker's signal test.

Usage: signal_worker.py ADDR QUEUE
Runs ``Worker.run()`` (which handles SIGINT/SIGTERM) with concurrency 1 and
prefetch 1; prints ``started <job id>`` when a handler starts, which then waits for a
line on stdin before it finishes, and ``report <succeeded> <abandoned>`` when the
worker returns.
"""

import sys

import taskraft

addr, queue = sys.argv[1], sys.argv[2]
worker = taskraft.Worker(taskraft.Client([addr]), queue, concurrency=1, prefetch=1)


@worker.handler("slow")
def slow(job: taskraft.Job) -> str:
    print("started", job.id, flush=True)
    sys.stdin.readline()
    return "finished"


report = worker.run()
print("report", report.succeeded, report.abandoned, flush=True)
