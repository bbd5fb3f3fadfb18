"""HttpServer: the pod's HTTP/1.1 listener for the V2 REST API, an ``asyncio.Protocol`` on the pod's event loop.

Chosen by measurement (docs/benchmarks.md "REST listener: library choice", ``loadtests/http_servers.py``):
with the same handler it used about a fifth of aiohttp's server CPU per request and a third of uvicorn's, and
the pod's event loop is the one core the whole data plane shares. Parsing is ``httptools``
(llhttp, Node.js's parser); this module owns only connection handling, and bounds all of it:

- **body**: at most ``max_body`` bytes (the gRPC max message size). A larger ``Content-Length`` is refused
  with 413 before any body is read; a chunked body is cut off with 413 once it passes the limit;
- **head**: request line + headers at most ``MAX_HEAD_BYTES`` (64 KiB) and ``MAX_HEADERS`` (100), else 431;
- **time**: a request must arrive whole (head and body) within ``read_timeout_s`` of its first byte, and an idle
  keep-alive connection is closed after ``idle_timeout_s``: a slow or silent client holds a connection, never
  the loop;
- **connections**: at most ``max_connections`` open; more are answered 503 and closed;
- **pipelining**: requests on one connection are answered in order, one at a time; reading pauses while
  ``MAX_PIPELINE`` parsed requests wait, and while the client does not read its responses (write buffer
  high-water mark), so a client can never make the pod buffer without bound.

``Expect: 100-continue`` is answered before the body is read (curl sends it for bodies over 1 KiB).
Upgrade requests (WebSocket, h2c) are refused with 400. Nothing is kept per path.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http
import json
import logging
import ssl
from dataclasses import dataclass

import httptools

from mesh.dataplane.rest import RestApi, RestResponse

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_PIPELINE = 8
_REASONS = {s.value: s.phrase for s in http.HTTPStatus} | {499: "Client Closed Request"}


@dataclass(slots=True)
class _Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpServer:
    def __init__(
        self,
        api: RestApi,
        *,
        max_body: int,
        read_timeout_s: float = 30.0,
        idle_timeout_s: float = 60.0,
        max_connections: int = 1000,
    ) -> None:
        self.api = api
        self.max_body = max_body
        self.read_timeout_s = read_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen on ``host:port`` (HTTPS when ``ssl_context`` is given: the pod's TLS settings); returns the port."""
        loop = asyncio.get_running_loop()
        # a TLS handshake is held to the same bound as a request: a client that opens and stalls holds nothing long
        tls = {"ssl": ssl_context, "ssl_handshake_timeout": self.read_timeout_s} if ssl_context else {}
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True, **tls
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let requests being answered finish (up to ``grace_s``), close every connection."""
        if self._server is None:
            return
        self._server.close()
        busy = [c.task for c in self.connections if c.task is not None and not c.task.done()]
        if busy:
            await asyncio.wait(busy, timeout=grace_s)
        for conn in list(self.connections):
            conn.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.queue: collections.deque[_Request] = collections.deque()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.reading_paused = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.closing = False
        self._reset_message()

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.server.connections) >= self.server.max_connections:
            self._send_error(503, "too many connections", close=True)
            return
        self.server.connections.add(self)
        self._arm(self.server.idle_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        self._disarm()
        self.can_write.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client went away: stop routing its request (as a cancelled gRPC call)

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = self.loop.call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if self.in_message:
            self._send_error(408, "request not received in time", close=True)
        else:
            self.close()

    # ------------------------------------------------------------------ parsing
    def _reset_message(self) -> None:
        self.in_message = False
        self.url = bytearray()
        self.headers: dict[str, str] = {}
        self.head_bytes = 0
        self.body: list[bytes] = []
        self.body_size = 0
        self.reject: _Reject | None = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._send_error(400, "protocol upgrades are not supported", close=True)
        except httptools.HttpParserError as exc:
            reject = self.reject
            if reject is not None:
                self._send_error(reject.status, reject.message, close=True)
            else:
                self._send_error(400, f"malformed HTTP request: {exc}", close=True)

    def on_message_begin(self) -> None:
        self._reset_message()
        self.in_message = True
        self._arm(self.server.read_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        if len(self.headers) >= MAX_HEADERS:
            self._fail(431, f"more than {MAX_HEADERS} headers")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]},{text}" if key in self.headers else text

    def _count_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES:
            self._fail(431, f"request head larger than {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.server.max_body:
            self._fail(
                413, f"request body of {length} bytes is over the limit of {self.server.max_body} bytes"
            )
        if self.headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.server.max_body:
            self._fail(413, f"request body is over the limit of {self.server.max_body} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self._disarm()
        request = _Request(
            method=self.parser.get_method().decode("ascii", "replace"),
            target=self.url.decode("latin-1"),
            headers=self.headers,
            body=b"".join(self.body),
            keep_alive=self.parser.should_keep_alive(),
        )
        self._reset_message()
        self.queue.append(request)
        if len(self.queue) >= MAX_PIPELINE and self.transport is not None and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._answer_all(), name="mesh:http")

    def _fail(self, status: int, message: str) -> None:
        self.reject = _Reject(status, message)
        raise self.reject

    # ------------------------------------------------------------------ answering
    async def _answer_all(self) -> None:
        while self.queue and not self.closing:
            request = self.queue.popleft()
            if self.reading_paused and len(self.queue) < MAX_PIPELINE // 2 and self.transport is not None:
                self.transport.resume_reading()
                self.reading_paused = False
            response = await self.server.api.handle(
                request.method, request.target, request.headers, request.body
            )
            await self.can_write.wait()
            if self.closing:
                return
            self._write(response, close=not request.keep_alive)
            if not request.keep_alive:
                return
        if not self.closing and not self.in_message:
            self._arm(self.server.idle_timeout_s)

    def _write(self, response: RestResponse, *, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        head = [
            f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
        ]
        head.extend(f"{k}: {v}" for k, v in response.headers)
        if close:
            head.append("Connection: close")
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        if close:
            self.close()

    def _send_error(self, status: int, message: str, *, close: bool) -> None:
        self._disarm()
        body = json.dumps({"error": message}).encode()
        self._write(RestResponse(status, body), close=close)
        if close:
            self.close()
