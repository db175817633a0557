"""Real ``taskraft serve`` processes for the tests (no mocks).

The binary comes from ``TASKRAFT_BIN`` (the Rust harness sets it to the binary it
built), else ``taskraft`` on PATH, else ``target/{debug,release}/taskraft`` of the
checkout. Each node gets free loopback ports and its own data directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

#: Bound for anything that should happen "soon" (startup, elections).
SOON = 30.0


def taskraft_bin() -> str:
    """Path of the broker binary; raises (never skips) when there is none."""
    env = os.environ.get("TASKRAFT_BIN")
    if env:
        if not Path(env).is_file():
            raise RuntimeError(f"TASKRAFT_BIN={env} does not exist")
        return env
    on_path = shutil.which("taskraft")
    if on_path:
        return on_path
    for profile in ("debug", "release"):
        p = REPO / "target" / profile / "taskraft"
        if p.is_file():
            return str(p)
    raise RuntimeError(
        "no taskraft binary: set TASKRAFT_BIN (cargo build -p taskraft-broker --bin taskraft)"
    )


def free_port() -> int:
    """A free loopback port (bound and released; a tiny race is acceptable)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(port: int, path: str) -> int | None:
    """Status code of GET http://127.0.0.1:port/path, None if unreachable."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            code: int = r.status
            return code
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


class BrokerNode:
    """One ``taskraft serve`` process; its output goes to ``<data_dir>.log``."""

    def __init__(
        self,
        data_dir: Path,
        extra: list[str] | None = None,
        *,
        grpc_port: int | None = None,
        peer_port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = grpc_port or free_port()
        self.http_port = free_port()
        self.peer_port = peer_port or free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log = data_dir.with_suffix(".log")
        self.args = [
            taskraft_bin(),
            "serve",
            "--listen",
            self.addr,
            "--http",
            f"127.0.0.1:{self.http_port}",
            "--peer-listen",
            f"127.0.0.1:{self.peer_port}",
            "--data-dir",
            str(data_dir),
            *(extra or []),
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BrokerNode:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "RUST_LOG": "info,openraft=warn"},
            )
        return self

    def wait_ready(self, timeout: float = SOON) -> None:
        """Waits until ``/readyz`` says the node knows a leader."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"broker exited ({self.proc.returncode}):\n{self.log_tail()}")
            if http_get(self.http_port, "/readyz") == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(f"broker at {self.addr} never became ready:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=SOON)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


class BrokerCluster:
    """``n`` processes that form one cluster through ``--peers``."""

    def __init__(self, root: Path, n: int, extra: list[str] | None = None) -> None:
        ports = [(free_port(), free_port()) for _ in range(n)]
        peers = ",".join(f"{i + 1}=127.0.0.1:{c}/127.0.0.1:{p}" for i, (c, p) in enumerate(ports))
        self.nodes = [
            BrokerNode(
                root / f"node-{i + 1}",
                ["--id", str(i + 1), "--peers", peers, *(extra or [])],
                grpc_port=ports[i][0],
                peer_port=ports[i][1],
            )
            for i in range(n)
        ]

    @property
    def addrs(self) -> list[str]:
        return [n.addr for n in self.nodes]

    def start(self) -> BrokerCluster:
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            n.wait_ready()
        return self

    def node(self, node_id: int) -> BrokerNode:
        return self.nodes[node_id - 1]

    def stop(self) -> None:
        for n in self.nodes:
            n.kill()
