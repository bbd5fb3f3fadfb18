"""MeshClient and AsyncMeshClient: the same API, several addresses, failover on UNAVAILABLE only.

Real gRPC over loopback against a tiny ModelMesh servicer (no mesh behind it): one address nobody listens
on, one server that answers UNAVAILABLE, one that answers."""

from __future__ import annotations

import inspect
import socket

import grpc
import pytest

from mesh.aio_client import AsyncMeshClient
from mesh.client import MeshClient, MeshClientError, parse_addresses
from protos.mmesh import model_mesh_pb2 as mm
from protos.mmesh import model_mesh_pb2_grpc as mm_grpc


class Servicer(mm_grpc.ModelMeshServicer):
    def __init__(self, name: str, code: grpc.StatusCode | None = None) -> None:
        self.name, self.code, self.calls = name, code, 0

    async def getModelStatus(self, request, context):
        self.calls += 1
        if self.code is not None:
            await context.abort(self.code, f"{self.name} says no")
        info = mm.ModelStatusInfo(status=mm.ModelStatusInfo.LOADED)
        info.modelCopyInfos.add(location=self.name, copyStatus=mm.ModelStatusInfo.LOADED)
        return info


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed again when the socket goes


@pytest.fixture
async def servers():
    out = {}
    started = []
    for name, code in (
        ("up", None),
        ("busy", grpc.StatusCode.UNAVAILABLE),
        ("nf", grpc.StatusCode.NOT_FOUND),
    ):
        server = grpc.aio.server()
        servicer = Servicer(name, code)
        mm_grpc.add_ModelMeshServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        started.append(server)
        out[name] = (f"127.0.0.1:{port}", servicer)
    yield out
    for server in started:
        await server.stop(0)


def test_same_api_surface() -> None:
    """Every method of one client is on the other with the same signature, awaited there; the methods
    declared once (``Rpc``) carry their builder's parameters and docs."""
    sync, aio = MeshClient("127.0.0.1:1"), AsyncMeshClient("127.0.0.1:1")
    public = {n for n in dir(sync) if not n.startswith("_")}
    assert public == {n for n in dir(aio) if not n.startswith("_")}
    methods = 0
    for name in public:
        a, b = getattr(sync, name), getattr(aio, name)
        if callable(a):
            methods += 1
            assert not inspect.iscoroutinefunction(a) and inspect.iscoroutinefunction(b), name
            assert inspect.signature(a) == inspect.signature(b), name
            assert a.__name__ == b.__name__ == name and a.__doc__ == b.__doc__, name
    assert methods == 13  # 10 declared once (Rpc), cluster_status, wait_ready, close
    assert list(inspect.signature(sync.register).parameters)[:3] == ["model_id", "model_type", "path"]
    assert "mm-min-copies" in sync.register.__doc__
    sync.close()


def test_parse_addresses() -> None:
    assert parse_addresses("a:1, b:2,,") == ["a:1", "b:2"]
    assert parse_addresses(["a:1"]) == ["a:1"]
    with pytest.raises(MeshClientError):
        parse_addresses(" , ")


async def test_sync_client_fails_over_on_unavailable_only(servers) -> None:
    up, up_servicer = servers["up"]
    busy, busy_servicer = servers["busy"]
    dead = closed_port()

    def run():
        with MeshClient([dead, busy, up], timeout=10) as c:
            first = c.status("m")
            assert first["copies"][0]["location"] == "up" and c.failovers == 2
            assert c.target == up  # later calls go straight to the address that answered
            c.status("m")
            assert c.failovers == 2
        with MeshClient(f"{servers['nf'][0]},{up}", timeout=10) as c:
            with pytest.raises(MeshClientError) as e:
                c.status("m")
            assert e.value.code == "NOT_FOUND" and c.failovers == 0  # an answer, not an outage
        with MeshClient([dead, busy], timeout=10) as c:
            with pytest.raises(MeshClientError) as e:
                c.status("m")
            assert e.value.code == "UNAVAILABLE"

    import asyncio

    await asyncio.to_thread(run)
    assert up_servicer.calls == 2 and busy_servicer.calls == 2


async def test_async_client_fails_over_on_unavailable_only(servers) -> None:
    up, _ = servers["up"]
    busy, _ = servers["busy"]
    async with AsyncMeshClient([closed_port(), busy, up], timeout=10) as c:
        assert (await c.status("m"))["copies"][0]["location"] == "up"
        assert c.failovers == 2 and c.target == up
    async with AsyncMeshClient([servers["nf"][0], up], timeout=10) as c:
        with pytest.raises(MeshClientError) as e:
            await c.status("m")
        assert e.value.code == "NOT_FOUND" and c.failovers == 0
