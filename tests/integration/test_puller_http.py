"""Puller against a real local HTTP server (http.server in a thread): headers, redirects, limits, truncation."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from puller import Puller, PullerSettings
from puller.errors import (
    AccessDenied,
    ArtifactNotFound,
    InvalidModelPath,
    ObjectTooLarge,
    TruncatedDownload,
    UnknownStorageKey,
)

TOKEN = "Bearer super-secret-token"
BODY = b"model-bytes-" * 1000


class Handler(BaseHTTPRequestHandler):
    gets: list[str] = []
    seen_auth: dict[str, str | None] = {}

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        Handler.gets.append(self.path)
        Handler.seen_auth[self.path] = self.headers.get("Authorization")
        if self.path == "/private/xredirect.bin" and self.headers.get("Authorization") == TOKEN:
            port = self.server.server_address[1]
            self.send_response(302)
            self.send_header("Location", f"http://localhost:{port}/files/elsewhere.bin")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if self.path.startswith("/private/") and self.headers.get("Authorization") != TOKEN:
            return self._send(401, b"no")
        if self.path == "/redirect/model.bin":
            self.send_response(302)
            self.send_header("Location", "/files/model.bin")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if self.path == "/truncated/model.bin":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[: len(BODY) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        if self.path == "/error/model.bin":
            return self._send(503, b"busy")
        if self.path in ("/files/model.bin", "/private/model.bin", "/files/elsewhere.bin"):
            return self._send(200, BODY)
        return self._send(404, b"missing")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="test-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def puller(tmp_path: Path, http_url: str) -> Iterator[Puller]:
    cfg = tmp_path / "storage.json"
    cfg.write_text(
        json.dumps(
            {
                "web": {"type": "http", "url": http_url},
                "private": {"type": "http", "url": f"{http_url}/private",
                            "headers": {"Authorization": TOKEN}},
                "small": {"type": "http", "url": http_url},
            }
        )
    )  # fmt: skip
    settings = PullerSettings(
        model_dir=tmp_path / "models", storage_config=cfg, max_attempts=2, retry_backoff_s=0.01
    )
    yield Puller(settings)


def leftovers(model_dir: Path) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir()) if model_dir.exists() else []


async def test_plain_relative_and_absolute_urls(puller, http_url, tmp_path):
    try:
        a = await puller.pull("m1", "files/model.bin", '{"storage_key":"web"}')
        assert a.path == tmp_path / "models" / "m1" / "model.bin"
        assert a.path.read_bytes() == BODY and a.disk_size_bytes == len(BODY)
        b = await puller.pull("m2", f"{http_url}/files/model.bin")  # matched by URL prefix, no key
        assert b.path.read_bytes() == BODY
    finally:
        await puller.close()


async def test_headers_sent_and_required(puller, http_url, tmp_path):
    try:
        a = await puller.pull("p1", f"{http_url}/private/model.bin")  # longest-prefix entry: "private"
        assert a.path.read_bytes() == BODY
        with pytest.raises(AccessDenied) as info:
            await puller.pull("p2", "private/model.bin", '{"storage_key":"web"}')
        assert "HTTP 401" in info.value.message and "super-secret" not in info.value.message
        assert "super-secret" not in repr(puller._store.current().entry("private"))
        assert leftovers(tmp_path / "models") == ["p1"]
    finally:
        await puller.close()


async def test_redirect_followed(puller):
    try:
        a = await puller.pull("r1", "redirect/model.bin", '{"storage_key":"web"}')
        assert a.path.read_bytes() == BODY
        assert a.path.name == "model.bin"
    finally:
        await puller.close()


async def test_cross_origin_redirect_drops_entry_headers(puller, http_url):
    try:
        a = await puller.pull("x1", f"{http_url}/private/xredirect.bin")
        assert a.path.read_bytes() == BODY
        assert Handler.seen_auth["/private/xredirect.bin"] == TOKEN
        assert Handler.seen_auth["/files/elsewhere.bin"] is None
    finally:
        await puller.close()


async def test_truncated_download_detected_and_cleaned(puller, tmp_path):
    try:
        with pytest.raises(TruncatedDownload) as info:
            await puller.pull("t1", "truncated/model.bin", '{"storage_key":"web"}')
        assert f"of {len(BODY)} bytes" in info.value.message
        assert leftovers(tmp_path / "models") == []
    finally:
        await puller.close()


async def test_errors(puller, http_url, tmp_path):
    puller._s.max_object_bytes = 1000
    try:
        with pytest.raises(ObjectTooLarge):
            await puller.pull("e1", "files/model.bin", '{"storage_key":"web"}')
        puller._s.max_object_bytes = 0
        with pytest.raises(ArtifactNotFound):
            await puller.pull("e2", "nothing/model.bin", '{"storage_key":"web"}')
        with pytest.raises(UnknownStorageKey):
            await puller.pull("e3", "http://example.invalid/model.bin")
        with pytest.raises(InvalidModelPath):  # a key's headers never go to another host
            await puller.pull("e4", "http://example.invalid/model.bin", '{"storage_key":"private"}')
        from puller.errors import StorageUnavailable

        with pytest.raises(StorageUnavailable) as info:
            await puller.pull("e5", "error/model.bin", '{"storage_key":"web"}')
        assert "HTTP 503" in info.value.message
        assert leftovers(tmp_path / "models") == []
    finally:
        await puller.close()
