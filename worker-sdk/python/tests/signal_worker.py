"""A worker process for test_worker's signal test.

Usage: signal_worker.py ADDR QUEUE HANDLER_SECONDS
Runs ``Worker.run()`` (which handles SIGINT/SIGTERM) with concurrency 1 and
prefetch 1; prints ``started <job id>`` when a handler starts and
``report <succeeded> <abandoned>`` when the worker returns.
"""

import sys
import time

import taskraft

addr, queue, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
worker = taskraft.Worker(taskraft.Client([addr]), queue, concurrency=1, prefetch=1)


@worker.handler("slow")
def slow(job: taskraft.Job) -> str:
    print("started", job.id, flush=True)
    time.sleep(seconds)
    return "finished"


report = worker.run()
print("report", report.succeeded, report.abandoned, flush=True)
