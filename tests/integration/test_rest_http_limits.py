"""The REST listener's HTTP handling and its bounds (mesh.dataplane.http), over real loopback sockets.

The API behind it is a recording stand-in (the V2 routing is tested against real pods in test_mesh_rest.py):
this file is about the connection: keep-alive and pipelining order, 100-continue, and every limit (body size,
head size, read and idle timeouts, connection count) answered with its status and without growing state."""

from __future__ import annotations

import asyncio
import json

import pytest

from mesh.dataplane.http import MAX_HEAD_BYTES, HttpServer
from mesh.dataplane.rest import RestResponse
from tests.support.conditions import wait_until


class EchoApi:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []
        self.gate: asyncio.Event | None = None

    async def handle(self, method, target, headers, body):
        self.seen.append((method, target, len(body)))
        if self.gate is not None and target == "/slow":
            await self.gate.wait()
        return RestResponse(200, json.dumps({"target": target, "n": len(body)}).encode())


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers = {}
    while True:
        line = (await reader.readline()).decode().strip()
        if not line:
            break
        k, v = line.split(":", 1)
        headers[k.lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


@pytest.fixture
async def server():
    api = EchoApi()
    srv = HttpServer(api, max_body=1000, read_timeout_s=0.5, idle_timeout_s=0.5, max_connections=3)
    await srv.start("127.0.0.1", 0)
    yield srv, api
    await srv.stop(grace_s=1)


async def _connect(srv):
    return await asyncio.open_connection("127.0.0.1", srv.port)


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(server):
    srv, api = server
    api.gate = asyncio.Event()
    reader, writer = await _connect(srv)
    writer.write(
        b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    await wait_until(lambda: api.seen, what="the first request at the handler")
    await asyncio.sleep(0.05)  # room for a wrongly concurrent second one to arrive
    assert [t for _, t, _ in api.seen] == ["/slow"]  # one at a time, in order
    api.gate.set()
    answers = [await _read_response(reader) for _ in range(3)]
    assert [json.loads(b)["target"] for _, _, b in answers] == ["/slow", "/b", "/c"]
    assert json.loads(answers[1][2])["n"] == 3
    writer.close()


async def test_body_over_the_limit_is_413_before_it_is_read(server):
    srv, api = server
    reader, writer = await _connect(srv)
    writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n")
    status, headers, body = await _read_response(reader)
    assert status == 413 and "over the limit of 1000 bytes" in json.loads(body)["error"]
    assert headers.get("connection") == "close"
    assert api.seen == []
    # chunked bodies are cut off as they pass the limit
    reader, writer = await _connect(srv)
    writer.write(
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"3e8\r\n"
        + b"a" * 1000
        + b"\r\n"
    )
    writer.write(b"2\r\nab\r\n0\r\n\r\n")
    status, _, _ = await _read_response(reader)
    assert status == 413 and api.seen == []


async def test_oversized_head_is_431_and_garbage_is_400(server):
    srv, _ = server
    reader, writer = await _connect(srv)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n\r\n")
    status, _, _ = await _read_response(reader)
    assert status == 431
    reader, writer = await _connect(srv)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    status, _, body = await _read_response(reader)
    assert status == 400 and "malformed HTTP request" in json.loads(body)["error"]


async def test_expect_continue_is_answered_before_the_body(server):
    srv, _ = server
    reader, writer = await _connect(srv)
    writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert (await reader.readline()).startswith(b"HTTP/1.1 100")
    await reader.readline()
    writer.write(b"abcd")
    status, _, body = await _read_response(reader)
    assert status == 200 and json.loads(body)["n"] == 4


async def test_slow_requests_get_408_and_idle_connections_are_closed(server):
    srv, api = server
    reader, writer = await _connect(srv)
    writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")  # never finishes
    status, _, _ = await _read_response(reader)
    assert status == 408
    assert await reader.read() == b""  # closed
    reader, writer = await _connect(srv)
    assert await reader.read() == b""  # idle: closed without a request
    assert api.seen == [] and not srv.connections


async def test_connections_over_the_limit_get_503(server):
    srv, _ = server
    held = [await _connect(srv) for _ in range(3)]
    await wait_until(lambda: len(srv.connections) == 3, what="three connections accepted")
    reader, _ = await _connect(srv)
    status, _, body = await _read_response(reader)
    assert status == 503 and "too many connections" in json.loads(body)["error"]
    assert len(srv.connections) == 3
    for _, w in held:
        w.close()


async def test_upgrade_requests_are_refused(server):
    srv, _ = server
    reader, writer = await _connect(srv)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    status, _, _ = await _read_response(reader)
    assert status == 400
