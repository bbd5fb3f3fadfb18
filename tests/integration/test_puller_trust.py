"""What a registration may not do to a storage entry, and what never leaks, against real servers.

Two real HTTP servers (``http.server`` in threads) stand for the administrator's storage and for a host a
registration chose; moto_server is the S3 storage. Every attack of issue 13 item 2 is tried through
``storage_params`` and must be refused before any I/O: the chosen host receives **nothing**. Each attack
has a positive control (the same request against an entry that explicitly allows the parameter), which
shows the counting server would have seen the leak. Credentials in storage URLs never reach an error
message or a log line (item 3).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from puller import Puller, PullerSettings
from puller.errors import (
    ArtifactNotFound,
    InvalidModelPath,
    InvalidStorageConfig,
    StorageParamNotAllowed,
    StorageUnavailable,
)
from tests.support.s3 import free_port, moto_server  # noqa: F401  (fixture)

TOKEN = "Bearer stored-token-0123456789"
PW = "url-password-hunter2"
BODY = b"model" * 100


class Recorder(ThreadingHTTPServer):
    """A real HTTP server that records (path, Authorization header) of every request it receives."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str | None]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def auth_received(self) -> int:
        return sum(1 for _, auth in self.seen if auth)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, body: bool = True) -> None:
        server: Recorder = self.server  # type: ignore[assignment]
        server.seen.append((self.path, self.headers.get("Authorization")))
        status, data = (200, BODY) if self.path.endswith("model.bin") else (404, b"no")
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


@pytest.fixture
def servers() -> Iterator[tuple[Recorder, Recorder]]:
    started = [Recorder(), Recorder()]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in started]
    for t in threads:
        t.start()
    try:
        yield started[0], started[1]
    finally:
        for s in started:
            s.shutdown()
            s.server_close()


def make_puller(tmp_path: Path, config: dict, **settings) -> Puller:
    path = tmp_path / "storage.json"
    path.write_text(json.dumps(config))
    defaults = {
        "max_attempts": 2,
        "retry_backoff_s": 0.01,
        "retry_backoff_max_s": 0.02,
        "connect_timeout_s": 2,
    }
    return Puller(
        PullerSettings(model_dir=tmp_path / "models", storage_config=path, **{**defaults, **settings})
    )


def key(storage_key: str, **params) -> str:
    return json.dumps({"storage_key": storage_key, "storage_params": params})


async def test_http_entry_headers_never_reach_a_host_a_registration_chose(tmp_path, servers):
    legit, attacker = servers
    web = {"type": "http", "url": f"{legit.url}/files", "headers": {"Authorization": TOKEN}}
    puller = make_puller(tmp_path, {"web": web, "open": {**web, "allowed_params": ["url"]}})
    try:
        for params, name in (
            ({"url": f"{attacker.url}/files"}, "url"),
            ({"url": f"{legit.url.replace('127.0.0.1', 'localhost')}/files"}, "url"),  # another origin
            ({"url": f"{legit.url}/other"}, "url"),  # same host, outside the entry's path
            ({"headers": {"Authorization": "mine"}}, "headers"),
            ({"type": "s3", "endpoint_url": attacker.url}, "type"),
        ):
            with pytest.raises(StorageParamNotAllowed) as info:
                await puller.pull("m", "model.bin", key("web", **params))
            assert info.value.grpc_code.name == "INVALID_ARGUMENT"
            assert f"'{name}' may not be set for storage key 'web'" in info.value.message
        with pytest.raises(InvalidModelPath, match="not on the host"):  # a full URL elsewhere
            await puller.pull("m", f"{attacker.url}/files/model.bin", key("web"))
        assert attacker.seen == [], "the attacker's server received a request"
        assert legit.seen == [], "refusals must come before any I/O"

        # Narrowing is allowed: a url below the entry's own (ModelMesh's controller sends the storage URI).
        a = await puller.pull("narrow", "model.bin", key("web", url=f"{legit.url}/files/sub", type="https"))
        assert a.path.read_bytes() == BODY and legit.seen == [("/files/sub/model.bin", TOKEN)]
        # Positive control: an entry that explicitly allows "url" does send its header there.
        await puller.pull("control", "model.bin", key("open", url=f"{attacker.url}/x"))
        assert attacker.auth_received() == 1
    finally:
        await puller.close()


async def test_s3_endpoint_type_and_bucket_overrides(tmp_path, servers, moto_server):  # noqa: F811
    _, attacker = servers
    s3 = moto_server.client()
    bucket = moto_server.new_bucket(s3)
    s3.put_object(Bucket=bucket, Key="m/model.bin", Body=BODY)
    local_root = tmp_path / "local"
    local_root.mkdir()
    entry = moto_server.entry(bucket=bucket)
    config = {
        "s3": entry,
        "pinned": {**entry, "allowed_params": []},
        "open": {**entry, "allowed_params": ["endpoint_url", "bucket"]},
        "vol": {"type": "local", "path": str(local_root)},
    }
    puller = make_puller(tmp_path, config, local_roots=(local_root,))
    try:
        for storage_key, params, name in (
            ("s3", {"endpoint_url": attacker.url}, "endpoint_url"),
            ("s3", {"type": "local", "path": "/"}, "type"),
            ("s3", {"secret_access_key": "x", "access_key_id": "y"}, "secret_access_key"),
            ("s3", {"certificate": "/etc/ssl/evil.pem"}, "certificate"),
            ("pinned", {"bucket": "another-bucket"}, "bucket"),
            ("vol", {"path": "/"}, "path"),
            ("vol", {"type": "s3", "endpoint_url": attacker.url}, "type"),
        ):
            with pytest.raises(StorageParamNotAllowed, match=f"'{name}' may not be set for '?storage key"):
                await puller.pull("m", "m/model.bin", key(storage_key, **params))
        with pytest.raises(StorageParamNotAllowed, match="'bucket'"):  # an s3:// URI's bucket counts too
            await puller.pull("m", "s3://another-bucket/m/model.bin", key("pinned"))
        assert attacker.seen == []

        # The same value, a type of the same kind and the default-allowed bucket are fine.
        ok = key("s3", bucket=bucket, type="s3", endpoint_url=moto_server.url)
        assert (await puller.pull("same", "m/model.bin", ok)).path.read_bytes() == BODY
        # Positive control: the chosen server does receive signed S3 requests where the entry allows it.
        await puller.pull("control", "m/model.bin", key("open", endpoint_url=attacker.url))
        assert attacker.auth_received() >= 1
        assert all(auth.startswith("AWS4-HMAC-SHA256") for _, auth in attacker.seen if auth)
    finally:
        await puller.close()


async def test_no_credential_in_errors_or_logs(tmp_path, servers, caplog):
    legit, _ = servers
    closed = free_port()
    config = {
        "down": {"type": "http", "url": f"http://alice:{PW}@127.0.0.1:{closed}/base"},
        "web": {"type": "http", "url": f"http://alice:{PW}@127.0.0.1:{legit.server_address[1]}/base",
                "headers": {"Authorization": TOKEN}},
        "s3userinfo": {"type": "s3", "endpoint_url": f"http://key:{PW}@127.0.0.1:{closed}", "bucket": "b"},
    }  # fmt: skip
    puller = make_puller(tmp_path, config)
    caplog.set_level(logging.INFO, logger="puller")
    messages = []
    try:
        with pytest.raises(StorageUnavailable) as info:
            await puller.pull("m1", "model.bin", key("down"))
        assert info.value.message.startswith("http storage 'down' at 127.0.0.1:")
        assert "unreachable after 2 attempt(s): cannot connect" in info.value.message
        messages.append(info.value.message)
        with pytest.raises(ArtifactNotFound) as info:
            await puller.pull("m2", "absent", key("web"))
        messages.append(info.value.message)
        with pytest.raises(InvalidStorageConfig, match="must not hold user:password@") as info:
            await puller.pull("m3", "x", key("s3userinfo"))
        messages.append(info.value.message)
        with pytest.raises(InvalidModelPath) as info:  # a password in the registered path itself
            await puller.pull("m4", f"ftp://bob:{PW}@h/x", "")
        messages.append(info.value.message)
        # the real request carried credentials (requests prefers the URL's user:password to the header)
        assert [path for path, _ in legit.seen] == ["/base/absent"] and legit.auth_received() == 1
    finally:
        await puller.close()
    for text in (*messages, caplog.text):
        assert PW not in text and TOKEN not in text and "stored-token" not in text, text
    assert "pull of model 'm1' failed" in caplog.text  # the failures were logged, scrubbed
