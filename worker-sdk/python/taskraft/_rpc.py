"""The typed boundary around the generated stubs.

``taskraft.v1.taskraft_pb2`` (messages) comes with a generated ``.pyi``; the
generated service stubs (``taskraft_pb2_grpc``) are untyped, so this module
describes the methods the SDK calls as Protocols and casts the generated stub
objects to them. Nothing else in the package touches ``taskraft_pb2_grpc``.
"""

from __future__ import annotations

from typing import Protocol, cast

import grpc.aio

from taskraft.v1 import taskraft_pb2 as pb
from taskraft.v1 import taskraft_pb2_grpc as pb_grpc

__all__ = ["pb", "BrokerApi", "AdminApi", "broker_stub", "admin_stub"]

_U = grpc.aio.UnaryUnaryMultiCallable
_SS = grpc.aio.StreamStreamMultiCallable


class BrokerApi(Protocol):
    """``taskraft.v1.Broker`` on an asyncio channel."""

    Enqueue: _U[pb.EnqueueRequest, pb.EnqueueResponse]
    EnqueueBatch: _U[pb.EnqueueBatchRequest, pb.EnqueueBatchResponse]
    Lease: _U[pb.LeaseRequest, pb.LeaseResponse]
    Ack: _U[pb.AckRequest, pb.AckResponse]
    Nack: _U[pb.NackRequest, pb.NackResponse]
    ExtendLease: _U[pb.ExtendLeaseRequest, pb.ExtendLeaseResponse]
    Work: _SS[pb.WorkRequest, pb.WorkResponse]
    GetJob: _U[pb.GetJobRequest, pb.Job]
    CancelJob: _U[pb.CancelJobRequest, pb.Job]


class AdminApi(Protocol):
    """``taskraft.v1.Admin`` on an asyncio channel."""

    GetClusterStatus: _U[pb.GetClusterStatusRequest, pb.ClusterStatus]
    GetQueueStats: _U[pb.GetQueueStatsRequest, pb.QueueStats]
    ListQueues: _U[pb.ListQueuesRequest, pb.ListQueuesResponse]
    PauseQueue: _U[pb.PauseQueueRequest, pb.QueueStats]
    ResumeQueue: _U[pb.ResumeQueueRequest, pb.QueueStats]
    ListJobs: _U[pb.ListJobsRequest, pb.ListJobsResponse]
    RetryJob: _U[pb.RetryJobRequest, pb.Job]
    RedriveDeadJobs: _U[pb.RedriveDeadJobsRequest, pb.RedriveDeadJobsResponse]
    ListWorkers: _U[pb.ListWorkersRequest, pb.ListWorkersResponse]


def broker_stub(channel: grpc.aio.Channel) -> BrokerApi:
    """The generated Broker stub on ``channel``."""
    return cast(BrokerApi, pb_grpc.BrokerStub(channel))  # type: ignore[no-untyped-call]


def admin_stub(channel: grpc.aio.Channel) -> AdminApi:
    """The generated Admin stub on ``channel``."""
    return cast(AdminApi, pb_grpc.AdminStub(channel))  # type: ignore[no-untyped-call]
