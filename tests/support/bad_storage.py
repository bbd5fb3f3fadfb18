"""A deliberately bad model storage: a local HTTP server (``http.server`` in threads), slow or hung on demand
(the chaos scenarios, the puller's abandoned-pull test).

Routes (the last path component is the file name the puller keeps):

- ``/file/<name>``: the bytes of ``files[<name>]``, at once (a healthy storage);
- ``/dribble/<name>``: announces ``DRIBBLE_BYTES`` and sends one byte every ``DRIBBLE_EVERY_S`` (a slow storage);
- ``/hang/<name>``: accepts the request and never answers (a hung storage);
- ``/big/<size>/<name>``: ``size`` zero bytes, as fast as the client reads (to fill a disk).

``tiny_disk`` mounts a small tmpfs (a disk that fills up) for the length of a ``with`` block.

Bounded: every handler returns when the server stops (``stop()`` sets an event the dribbling and hanging
handlers wait on, then joins the serving thread), so nothing outlives the scenario. Counts GETs per route.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

DRIBBLE_BYTES = 4096
DRIBBLE_EVERY_S = 0.25
BIG_CHUNK = 64 * 1024


class BadStorage:
    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        self.files = dict(files or {})
        self.gets: collections.Counter[str] = collections.Counter()
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                server.gets[parts[0]] += 1
                try:
                    server.route(self, parts)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the puller gave up (load timeout, abort): fine

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="chaos-storage", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> BadStorage:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def route(self, h: BaseHTTPRequestHandler, parts: list[str]) -> None:
        kind = parts[0]
        if kind == "file" and len(parts) == 2 and parts[1] in self.files:
            body = self.files[parts[1]]
            h.send_response(200)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        elif kind == "dribble":
            h.send_response(200)
            h.send_header("Content-Length", str(DRIBBLE_BYTES))
            h.end_headers()
            for _ in range(DRIBBLE_BYTES):
                if self.stopping.wait(DRIBBLE_EVERY_S):
                    return
                h.wfile.write(b"\0")
                h.wfile.flush()
        elif kind == "hang":
            self.stopping.wait(600)  # no status line, no headers: the client waits on its own timeouts
        elif kind == "big" and len(parts) == 3 and parts[1].isdigit():
            size = int(parts[1])
            h.send_response(200)
            h.send_header("Content-Length", str(size))
            h.end_headers()
            sent = 0
            while sent < size and not self.stopping.is_set():
                n = min(BIG_CHUNK, size - sent)
                h.wfile.write(bytes(n))
                sent += n
        else:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()


@contextlib.contextmanager
def tiny_disk(path: Path, size: int):
    """A ``size``-byte tmpfs mounted at ``path`` (unmounted on exit), or a skip saying why it cannot be."""
    if os.geteuid() != 0:
        pytest.skip("a full-disk test mounts a tmpfs: needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("a full-disk test mounts a tmpfs: no mount/umount command")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs at {path}: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)
