"""Holds N idle long-polling Lease calls on queue 'idle' against ADDR until killed.

    python idle_pollers.py 127.0.0.1:7070 10000

Each call waits up to 20 s and is re-issued when answered; the calls are spread over
one connection per 500 of them (a node allows 1,024 calls in flight per connection).
Used by idle_pollers.sh (benches/README.md, "Idle long-polling workers").
"""
import asyncio, sys
import grpc
from taskraft.v1 import taskraft_pb2 as pb, taskraft_pb2_grpc as rpc

async def poller(stub, i):
    while True:
        try:
            await stub.Lease(pb.LeaseRequest(queues=["idle"], worker_id=f"idle-{i}", max_jobs=1, visibility_timeout_ms=30000, wait_ms=20000), timeout=25)
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)

async def main(addr, n):
    k = max(8, n // 500)
    chans = [grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(k)]
    stubs = [rpc.BrokerStub(c) for c in chans]
    await asyncio.gather(*(poller(stubs[i % k], i) for i in range(n)))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
