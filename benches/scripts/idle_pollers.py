"""Holds N idle workers on queue 'idle' against ADDR until killed.

    python idle_pollers.py 127.0.0.1:7070 10000           # long-polling Lease calls
    python idle_pollers.py 127.0.0.1:7070 10000 stream    # Work sessions

A long-polling call waits up to 20 s and is re-issued when answered. A Work session
opens on 'idle', grants one credit (a worker with a free slot) and then only listens;
one that ends is opened again. Either kind is spread over one connection per 500 of
them (a node allows 1,024 calls in flight per connection). Used by idle_pollers.sh
(benches/README.md, "Idle long-polling workers").
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

async def session(stub, i):
    while True:
        ended = asyncio.Event()
        async def requests():
            yield pb.WorkRequest(open=pb.WorkOpen(queues=["idle"], worker_id=f"idle-{i}", visibility_timeout_ms=30000))
            yield pb.WorkRequest(credit=1)
            await ended.wait()  # our side stays open until the session ends
        try:
            async for _ in stub.Work(requests()):
                pass
        except grpc.aio.AioRpcError:
            pass
        ended.set()
        await asyncio.sleep(0.1)

async def main(addr, n, kind):
    k = max(8, n // 500)
    chans = [grpc.aio.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(k)]
    stubs = [rpc.BrokerStub(c) for c in chans]
    worker = session if kind == "stream" else poller
    await asyncio.gather(*(worker(stubs[i % k], i) for i in range(n)))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "poll"))
