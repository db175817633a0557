"""Real ``taskraft serve`` processes for the tests (no mocks).

The binary comes from ``TASKRAFT_BIN`` (the Rust harness sets it to the binary it
built), else ``taskraft`` on PATH, else ``target/{debug,release}/taskraft`` of the
checkout. Each node gets free loopback ports and its own data directory.
:func:`make_tls` writes a throwaway CA and a node certificate for 127.0.0.1 (with the
``openssl`` CLI) for a node started with ``tls=``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
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


def http_get(port: int, path: str, ca: Path | None = None) -> int | None:
    """Status code of GET http://127.0.0.1:port/path (https, verified with the PEM
    CA ``ca``, when given), None if unreachable."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    scheme = "http"
    if ca is not None:
        scheme = "https"
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca)))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(f"{scheme}://127.0.0.1:{port}{path}", timeout=2) as r:
            code: int = r.status
            return code
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and a node certificate signed by it (PEM files)."""

    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    done = subprocess.run(
        ["openssl", *map(str, args)], stdin=subprocess.DEVNULL, capture_output=True, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed:\n{done.stderr.decode(errors='replace')}")


def make_tls(directory: Path, key_format: str = "pkcs8") -> TlsFiles:
    """Writes into ``directory`` a CA (ECDSA P-256, ``ca.pem``) and a server
    certificate for IP 127.0.0.1 (``node.pem``: subjectAltName IP:127.0.0.1,
    extendedKeyUsage serverAuth) with its key ``node.key`` as PKCS#8
    (``BEGIN PRIVATE KEY``) or, with ``key_format="sec1"``, SEC1 (``BEGIN EC
    PRIVATE KEY``). Valid from now for a day."""
    if key_format not in ("pkcs8", "sec1"):
        raise ValueError(f"key_format {key_format!r}: pkcs8 or sec1")
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    p256 = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
    _openssl("genpkey", *p256, "-out", d / "ca.key")
    _openssl(
        "req", "-x509", "-new", "-key", d / "ca.key", "-sha256", "-days", "1",
        "-subj", "/CN=taskraft test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", d / "ca.pem",
    )  # fmt: skip
    _openssl("genpkey", *p256, "-out", d / "node.pkcs8.key")
    if key_format == "sec1":
        _openssl("ec", "-in", d / "node.pkcs8.key", "-out", d / "node.key")
    else:
        (d / "node.pkcs8.key").rename(d / "node.key")
    _openssl(
        "req", "-new", "-key", d / "node.key", "-subj", "/CN=127.0.0.1", "-out", d / "node.csr"
    )
    (d / "node.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1\n"
    )
    _openssl(
        "x509", "-req", "-in", d / "node.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
        "-set_serial", f"0x{os.urandom(8).hex()}", "-days", "1", "-sha256",
        "-extfile", d / "node.ext", "-out", d / "node.pem",
    )  # fmt: skip
    marker = "EC PRIVATE KEY" if key_format == "sec1" else "PRIVATE KEY"
    if not (d / "node.key").read_text().startswith(f"-----BEGIN {marker}-----"):
        raise RuntimeError(f"{d / 'node.key'} is not {key_format}")
    return TlsFiles(ca=d / "ca.pem", cert=d / "node.pem", key=d / "node.key")


class BrokerNode:
    """One ``taskraft serve`` process; its output goes to ``<data_dir>.log``.

    With ``tls`` it serves TLS on its gRPC and HTTP ports (``--tls-cert`` /
    ``--tls-key``) and readiness is checked over HTTPS against ``tls.ca``."""

    def __init__(
        self,
        data_dir: Path,
        extra: list[str] | None = None,
        *,
        grpc_port: int | None = None,
        peer_port: int | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.tls = tls
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
            *(["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)] if tls else []),
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
        """Waits until ``/readyz`` (over HTTPS with ``tls``) says the node knows a leader."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"broker exited ({self.proc.returncode}):\n{self.log_tail()}")
            if http_get(self.http_port, "/readyz", self.tls.ca if self.tls else None) == 200:
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
