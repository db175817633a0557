"""Fixtures: a real ``taskraft serve`` process per test session (see brokers.py),
a client per test, and a fresh queue name per test."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator

import pytest

import taskraft
from brokers import BrokerNode


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerNode]:
    node = BrokerNode(tmp_path_factory.mktemp("broker") / "node").start()
    try:
        node.wait_ready()
        yield node
    finally:
        node.kill()


@pytest.fixture
def client(broker: BrokerNode) -> Iterator[taskraft.Client]:
    with taskraft.Client([broker.addr]) as c:
        yield c


_counter = itertools.count()


@pytest.fixture
def queue(request: pytest.FixtureRequest) -> str:
    """A queue name no other test uses."""
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    return f"py-{name}-{os.getpid()}-{next(_counter)}"


class WorkerThread:
    """Runs a worker in a thread; ``stop()`` / ``join()`` return its report."""

    def __init__(self, worker: taskraft.Worker) -> None:
        self.worker = worker
        self.report: taskraft.Report | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.report = self.worker.run(handle_signals=False)
        except BaseException as e:
            self.error = e

    def join(self, timeout: float = 30.0) -> taskraft.Report:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"worker still running after {timeout}s"
        if self.error is not None:
            raise self.error
        assert self.report is not None
        return self.report

    def stop(self, timeout: float = 30.0) -> taskraft.Report:
        self.worker.stop()
        return self.join(timeout)


@pytest.fixture
def start_worker() -> Iterator[type[WorkerThread]]:
    started: list[WorkerThread] = []

    class Tracked(WorkerThread):
        def __init__(self, worker: taskraft.Worker) -> None:
            super().__init__(worker)
            started.append(self)

    yield Tracked
    for w in started:
        if w.thread.is_alive():
            w.worker.stop(abort=True)
            w.thread.join(30)
