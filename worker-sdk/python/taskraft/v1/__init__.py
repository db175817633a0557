"""Stubs generated from ``proto/taskraft/v1/taskraft.proto`` at build time.

``taskraft_pb2`` (messages), ``taskraft_pb2_grpc`` (service stubs) and their type
stubs are written here by ``setup.py`` on every install; they are not in git. Use
them through :mod:`taskraft`; :mod:`taskraft._rpc` is the typed boundary.
"""
