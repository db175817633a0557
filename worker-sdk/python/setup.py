"""Build hook: generates the gRPC stubs from the repository's ``proto/`` directory.

Every build (``pip install ./worker-sdk/python``, a wheel, an editable install)
runs ``grpc_tools.protoc`` on ``proto/taskraft/v1/taskraft.proto`` and writes

    taskraft/v1/taskraft_pb2.py        messages
    taskraft/v1/taskraft_pb2.pyi       their types (for mypy)
    taskraft/v1/taskraft_pb2_grpc.py   service stubs

next to the package source, so the stubs always match the proto they were built
from and are never committed. The proto's package is ``taskraft.v1``, which is
exactly where the generated imports (``from taskraft.v1 import taskraft_pb2``)
expect to find it. ``TASKRAFT_PROTO_DIR`` overrides where ``proto/`` is.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO_FILE = "taskraft/v1/taskraft.proto"


def proto_root() -> Path:
    root = Path(os.environ.get("TASKRAFT_PROTO_DIR", HERE.parent.parent / "proto"))
    if not (root / PROTO_FILE).is_file():
        raise SystemExit(
            f"taskraft: {root / PROTO_FILE} not found; build from a taskraft checkout "
            "(worker-sdk/python sits two levels below proto/) or set TASKRAFT_PROTO_DIR"
        )
    return root


def generate_stubs() -> None:
    from grpc_tools import protoc  # build requirement (pyproject.toml)
    import grpc_tools

    root = proto_root()
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    out = HERE
    for stale in (HERE / "taskraft" / "v1").glob("taskraft_pb2*"):
        stale.unlink()
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(root / PROTO_FILE),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"taskraft: protoc failed on {root / PROTO_FILE}")


class BuildPyWithStubs(build_py):
    """``build_py`` that regenerates the stubs first."""

    def run(self) -> None:
        generate_stubs()
        # Package data (the .pyi) is listed lazily; drop anything computed before
        # the stubs existed.
        self.__dict__.pop("data_files", None)
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
