"""TLS against a real broker started with ``--tls-cert`` / ``--tls-key``: a throwaway
CA and a certificate for 127.0.0.1 are made with the ``openssl`` CLI (brokers.py's
``make_tls``), once with a PKCS#8 key and once with a SEC1 key (the broker takes both).
A client given the CA works end to end (enqueue, a worker, lease + ack by hand); one
without it (or checking another name, or speaking plaintext) fails fast with the reason."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

import taskraft
from brokers import BrokerNode, TlsFiles, make_tls
from conftest import WorkerThread
from taskraft import Job, JobState


@pytest.fixture(scope="module", params=["pkcs8", "sec1"])
def tls_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[BrokerNode, TlsFiles]]:
    root = tmp_path_factory.mktemp(f"tls-{request.param}")
    files = make_tls(root / "certs", key_format=request.param)
    node = BrokerNode(root / "node", tls=files).start()
    try:
        node.wait_ready()  # over HTTPS, verified with the CA
        yield node, files
    finally:
        node.kill()


def test_a_client_with_the_ca_works_over_tls(
    tls_broker: tuple[BrokerNode, TlsFiles], queue: str, start_worker: type[WorkerThread]
) -> None:
    node, files = tls_broker
    with taskraft.Client([f"https://{node.addr}"], root_ca=files.ca, retry_for=10) as c:
        assert c.config.tls and c.config.root_ca == files.ca.read_bytes()
        e = c.enqueue(queue, b"over tls", job_type="upper")
        assert not e.duplicate and c.get_job(e.job_id).payload == b"over tls"

        # A worker opens its own channels from the client's settings.
        w = taskraft.Worker(c, queue, max_jobs=1, handlers={"upper": lambda job: job.payload.upper()})
        report = start_worker(w).join(60)
        assert (report.succeeded, report.failed) == (1, 0)
        done = c.wait_for_job(e.job_id, timeout=30)
        assert done.state == JobState.SUCCEEDED and done.result == b"OVER TLS"

        # Lease and ack by hand.
        second = c.enqueue(queue, b"by hand").job_id
        leased = c.lease([queue], worker_id="py-tls", max_jobs=1, wait=5)
        assert [j.job_id for j in leased] == [second]
        c.ack(second, leased[0].lease_id, b"acked")
        assert c.get_job(second).result == b"acked"

    # The CA as bytes and a bare address turn TLS on as well.
    with taskraft.Client([node.addr], root_ca=files.ca.read_bytes(), retry_for=10) as c:
        assert c.queue_stats(queue).succeeded == 2


def test_a_client_without_the_ca_fails_fast_with_the_certificate_error(
    tls_broker: tuple[BrokerNode, TlsFiles], queue: str
) -> None:
    node, files = tls_broker
    # No root_ca: the system's roots do not know the throwaway CA.
    with taskraft.Client(
        [f"https://{node.addr}"], retry_for=1.0, connect_timeout=1.0, call_timeout=5.0
    ) as c:
        start = time.monotonic()
        with pytest.raises(taskraft.UnavailableError) as e:
            c.enqueue(queue, b"never stored")
        took = time.monotonic() - start
    assert took < 10, f"took {took:.1f}s"
    message = str(e.value)
    assert node.addr in message
    assert re.search(r"certificate[_ ]verify[_ ]failed", message, re.IGNORECASE), message
    # With the CA but checking another name (tls_server_name): refused as well.
    with taskraft.Client(
        [f"https://{node.addr}"], root_ca=files.ca, tls_server_name="other.example",
        retry_for=1.0, connect_timeout=1.0, call_timeout=5.0,
    ) as c:
        with pytest.raises(taskraft.UnavailableError, match=r"(?i)hostname verification"):
            c.enqueue(queue, b"never stored")
    # A plaintext client gets no answer from the TLS port either.
    with taskraft.Client([node.addr], retry_for=1.0, connect_timeout=1.0, call_timeout=5.0) as c:
        start = time.monotonic()
        with pytest.raises(taskraft.UnavailableError):
            c.enqueue(queue, b"never stored")
        assert time.monotonic() - start < 10
    with taskraft.Client([node.addr], root_ca=files.ca, retry_for=10) as good:
        assert good.queue_stats(queue).ready == 0

