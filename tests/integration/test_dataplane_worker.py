"""A data-plane worker (mesh.dataplane.worker) against its owner's local service, over real gRPC.

The worker runs in this process on a free port; its owner is the real ``meshlocal.PodLocal`` servicer of
``mesh.workers`` (feed, reports) on a unix socket, beside a stand-in for the pod's own services that answers
every inference with ``owner``; the runtime is a stand-in that answers ``runtime`` (or NOT_FOUND for the
models it is told it lost). So each answer says who served it, and the owner's table can be changed at will:
the worker serves only models its table shows ACTIVE, passes everything else on, passes everything on while
its stream is lost, follows a restarted owner, and reports its usage.
"""

from __future__ import annotations

import asyncio
import shutil

import grpc
import pytest
from prometheus_client import CollectorRegistry

from mesh.dataplane.local_table import RuntimeRoute
from mesh.dataplane.worker import Worker, parse_args
from mesh.devtools.cluster import free_port
from mesh.local.cache import EntryState, LocalCache
from mesh.local.stats import RequestStats
from mesh.metrics_merge import MergedMetrics
from mesh.workers import DataPlaneWorkers, WorkerFeed, _PodLocalServicer
from protos.meshlocal import local_pb2_grpc as pb_grpc

INFER = "/inference.GRPCInferenceService/ModelInfer"


def _model_id(context: grpc.aio.ServicerContext) -> str:
    return dict(context.invocation_metadata()).get("mm-model-id", "")


class _Answering(grpc.GenericRpcHandler):
    """Answers every unary call with ``name:<model id>``; NOT_FOUND for the ids in ``lost``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lost: set[str] = set()

    def service(self, details):
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            model_id = _model_id(context)
            if model_id in self.lost:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"model {model_id} not found")
            return f"{self.name}:{model_id}".encode()

        return grpc.unary_unary_rpc_method_handler(handle)


class Owner:
    """The owner's side: the real PodLocal servicer with a feed over ``cache``, on the workers' socket."""

    def __init__(self, workers: DataPlaneWorkers) -> None:
        self.workers = workers
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_Answering("owner"),))
        pb_grpc.add_PodLocalServicer_to_server(_PodLocalServicer(self.workers), server)
        assert server.add_insecure_port(self.workers.address)
        await server.start()
        self.server = server

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop(0)


def _active(cache: LocalCache, model_id: str) -> None:
    entry, _ = cache.reserve(model_id, 10, 1, 1)
    entry.state = EntryState.ACTIVE


def _workers(
    cache: LocalCache, route: RuntimeRoute, stats: RequestStats, address: str = ""
) -> DataPlaneWorkers:
    feed = WorkerFeed(
        instance_id="pod-0",
        peer_token="secret",
        cache=cache,
        runtime_route=lambda: route,
        vmodels={"vm": "m1"},
    )
    workers = DataPlaneWorkers(
        processes=2,
        feed=feed,
        cache=cache,
        stats=stats,
        metrics=MergedMetrics(CollectorRegistry(), requests_family="requests"),
        worker_args=[],
    )
    if address:  # the same socket as an earlier owner (a restart)
        shutil.rmtree(workers.socket.parent, ignore_errors=True)
        workers.address = address
    return workers


async def _until(predicate, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


@pytest.fixture
async def runtime():
    handler = _Answering("runtime")
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield handler, RuntimeRoute(f"127.0.0.1:{port}", {}, True)
    await server.stop(0)


async def test_the_worker_serves_its_table_passes_the_rest_on_and_follows_a_restarted_owner(runtime) -> None:
    runtime_handler, route = runtime
    cache, stats = LocalCache(10_000), RequestStats(window_s=60, tick_s=10)
    for m in ("m1", "m3"):
        _active(cache, m)
    workers = _workers(cache, route, stats)
    owner = Owner(workers)
    await owner.start()
    port = free_port()
    worker = Worker(
        parse_args(["--owner", workers.address, "--slot", "1", "--host", "127.0.0.1", "--port", str(port)])
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await _until(lambda: worker.server is not None and 1 in workers.serving)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(INFER)

            async def ask(model_id: str, header: str = "mm-model-id") -> str:
                return (await call(b"", metadata=((header, model_id),), timeout=10)).decode()

            assert await ask("m1") == "runtime:m1"  # ACTIVE in the owner's cache: served here
            assert await ask("vm", "mm-vmodel-id") == "runtime:m1"  # a vModel's active model
            assert await ask("m2") == "owner:m2"  # not here: the owner decides
            # usage reaches the owner: requests counted, last-used time moved forward
            await _until(lambda: cache.get("m1").last_used > 1)
            stats.roll()
            assert stats.model_rpm["m1"] > 0

            # the runtime lost m3 behind the table's back: passed on, and dropped from the table
            runtime_handler.lost.add("m3")
            assert await ask("m3") == "owner:m3"
            assert "m3" not in worker.table.active

            # an eviction at the owner reaches the worker's table at once
            cache.remove("m1")
            workers.feed.poke()
            await _until(lambda: "m1" not in worker.table.active)
            assert await ask("m1") == "owner:m1"

            # the owner goes away: nothing is served from a table that can no longer be trusted
            _active(cache, "m1")
            workers.feed.poke()
            await _until(lambda: "m1" in worker.table.active)
            await owner.stop()
            await _until(lambda: not worker.table.synced)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ask("m1")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "owner process" in err.value.details()

            # a restarted owner (m1 not loaded there): the worker follows it and passes m1 on to it
            fresh_cache = LocalCache(10_000)
            restarted = Owner(_workers(fresh_cache, route, RequestStats(), address=workers.address))
            await restarted.start()
            await _until(lambda: worker.table.synced)
            assert await ask("m1") == "owner:m1"
            _active(fresh_cache, "m1")
            restarted.workers.feed.poke()
            await _until(lambda: "m1" in worker.table.active)
            assert await ask("m1") == "runtime:m1"
            stop.set()
            await asyncio.wait_for(running, 15)
            await restarted.stop()
    finally:
        stop.set()
        if not running.done():
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
        shutil.rmtree(workers.socket.parent, ignore_errors=True)
