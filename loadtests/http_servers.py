"""Which HTTP server library for the pod's REST listener: the same tiny V2-style handler under each candidate.

Owns the library choice behind ``mesh/dataplane/http.py`` (docs/benchmarks.md "REST listener: library
choice"). Each candidate serves ``POST /v2/models/m/infer`` on its own asyncio loop in a child process (the
pod's constraint: the server must run on the pod's event loop) and answers with a fixed JSON body after
``json.loads`` of the request, so the figures compare the HTTP layers, not the mesh. The client is a raw
keep-alive HTTP/1.1 driver (pre-built request bytes, ``httptools`` response parser) in this process, closed
loop at each concurrency; CPU is the server process's user+system time per request.

Candidates: ``aiohttp`` (aiohttp.web, its C parser), ``asyncio-httptools`` (an ``asyncio.Protocol`` with
httptools' parser: what a hand-written server would be), ``uvicorn`` (raw ASGI app, httptools parser,
``uvicorn.Server.serve()`` on the existing loop).

    python -m loadtests.http_servers [--seconds 5] [--concurrency 1 32] [--servers aiohttp ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import shlex
import sys
import time
from typing import Any

import httptools

from loadtests.common import (
    HttpKeepAlive,
    cpu_seconds,
    machine_info,
    markdown_table,
    percentile,
    write_results,
)
from mesh.devtools.cluster import free_port

BODY = json.dumps(
    {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}
).encode()
ANSWER = json.dumps(
    {"model_name": "m", "outputs": [{"name": "predict", "shape": [1], "datatype": "INT64", "data": [0]}]}
).encode()
SERVERS = ("aiohttp", "asyncio-httptools", "uvicorn")


def _answer(body: bytes) -> bytes:
    json.loads(body)
    return ANSWER


# --------------------------------------------------------------------------------------------- servers


async def _serve_aiohttp(port: int) -> None:
    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        return web.Response(body=_answer(await request.read()), content_type="application/json")

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


class _HttptoolsProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.body: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        out = _answer(b"".join(self.body))
        self.body = []
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(out), out)
        )


async def _serve_httptools(port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_server(_HttptoolsProtocol, "127.0.0.1", port)
    await asyncio.Event().wait()


async def _serve_uvicorn(port: int) -> None:
    import uvicorn

    async def app(scope, receive, send):  # a raw ASGI app: no framework on top
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        out = _answer(b"".join(chunks))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": out})

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False, http="httptools",
                            lifespan="off")  # fmt: skip
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # the pod owns its signals
    await server.serve()


def _run_server(kind: str, port: int) -> None:
    serve = {"aiohttp": _serve_aiohttp, "asyncio-httptools": _serve_httptools, "uvicorn": _serve_uvicorn}[
        kind
    ]
    asyncio.run(serve(port))


# --------------------------------------------------------------------------------------------- client


REQUEST = (
    b"POST /v2/models/m/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


async def _worker(port: int, stop_at: float, lat: list[float], errors: list[int]) -> None:
    conn = await HttpKeepAlive.open(port)
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            if await conn.exchange(REQUEST) != 200:
                errors[0] += 1
            lat.append(time.perf_counter() - t0)
    finally:
        conn.close()


async def drive(port: int, concurrency: int, seconds: float, warmup: float, pid: int) -> dict[str, Any]:
    scratch: list[float] = []
    errors = [0]
    await asyncio.gather(
        *(_worker(port, time.perf_counter() + warmup, scratch, errors) for _ in range(concurrency))
    )
    lat: list[float] = []
    errors = [0]
    before = cpu_seconds({"server": pid})["server"]
    t0 = time.perf_counter()
    await asyncio.gather(*(_worker(port, t0 + seconds, lat, errors) for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds({"server": pid})["server"] - before
    return {
        "requests": len(lat),
        "errors": errors[0],
        "throughput_rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(percentile(lat, 50) * 1e3, 3),
        "p99_ms": round(percentile(lat, 99) * 1e3, 3),
        "server_cpu_us_per_req": round(cpu / len(lat) * 1e6, 1) if lat else None,
    }


async def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.http_servers", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    rows = []
    ctx = mp.get_context("spawn")
    for kind in args.servers:
        port = free_port()
        proc = ctx.Process(target=_run_server, args=(kind, port), daemon=True)
        proc.start()
        try:
            asyncio.run(_wait_port(port))
            for conc in args.concurrency:
                print(f"  {kind} c={conc} …", file=sys.stderr, flush=True)
                row = asyncio.run(drive(port, conc, args.seconds, args.warmup, proc.pid))
                rows.append({"server": kind, "concurrency": conc, **row})
        finally:
            proc.terminate()
            proc.join(10)
    cols = ["server", "concurrency", "requests", "errors", "throughput_rps", "p50_ms", "p99_ms",
            "server_cpu_us_per_req"]  # fmt: skip
    print(markdown_table(rows, cols))
    command = "python -m loadtests.http_servers " + shlex.join(argv if argv is not None else sys.argv[1:])
    if not args.no_write:
        path = write_results(
            "http_servers",
            {
                "benchmark": "http_servers",
                "command": command.strip(),
                "machine": machine_info(),
                "rows": rows,
            },
        )
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
