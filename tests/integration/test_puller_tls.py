"""Custom CA certificates for storage over TLS: an S3-compatible server (moto) and an HTTPS server, both
serving a certificate from a test CA that the system does not trust. With the storage entry's
``certificate`` the pull succeeds; without it, or with the wrong CA, it fails with a clear message."""

from __future__ import annotations

import functools
import http.server
import json
import ssl
import threading
from pathlib import Path

import pytest

from puller import Puller, PullerSettings
from puller.errors import PullError
from tests.support.pki import make_pki
from tests.support.s3 import MotoServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    files = make_pki(tmp_path_factory.mktemp("pki"))
    return {**files, "ca_pem": Path(files["ca"]).read_text()}


@pytest.fixture(scope="module")
def tls_moto(pki):
    cert, key = pki["server"]
    server = MotoServer(tls=(cert, key, pki["ca"])).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def https_dir(pki, tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*pki["server"])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield root, f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _puller(tmp_path: Path, config: dict) -> Puller:
    cfg = tmp_path / "storage.json"
    cfg.write_text(json.dumps(config))
    return Puller(PullerSettings(model_dir=tmp_path / "models", storage_config=cfg))


async def test_s3_over_tls_needs_the_custom_ca(tls_moto, pki, tmp_path):
    s3 = tls_moto.client()
    bucket = tls_moto.new_bucket(s3)
    s3.put_object(Bucket=bucket, Key="m/model.bin", Body=b"x" * 1000)
    puller = _puller(
        tmp_path,
        {
            "good": tls_moto.entry(bucket=bucket, certificate=pki["ca_pem"]),
            "good-minio": tls_moto.entry(bucket=bucket, certificate=pki["ca"], client="minio"),
            "untrusted": tls_moto.entry(bucket=bucket),
            "wrong-ca": tls_moto.entry(bucket=bucket, certificate=pki["other_ca"]),
        },
    )
    try:
        for key in ("good", "good-minio"):
            art = await puller.pull(f"tls-{key}", "m/model.bin", json.dumps({"storage_key": key}))
            assert art.disk_size_bytes == 1000
        for key in ("untrusted", "wrong-ca"):
            with pytest.raises(PullError) as err:
                await puller.pull(f"tls-{key}", "m/model.bin", json.dumps({"storage_key": key}))
            msg = err.value.message.lower()
            assert "certificate" in msg or "tls" in msg or "ssl" in msg, err.value.message
            assert tls_moto.secret_access_key not in err.value.message
            assert not (tmp_path / "models" / f"tls-{key}").exists()
    finally:
        await puller.close()


async def test_https_needs_the_custom_ca(https_dir, pki, tmp_path):
    root, url = https_dir
    (root / "model.bin").write_bytes(b"y" * 2000)
    puller = _puller(
        tmp_path,
        {
            "good": {"type": "http", "url": url, "certificate": pki["ca"]},
            "untrusted": {"type": "http", "url": url},
        },
    )
    try:
        art = await puller.pull("https-good", f"{url}/model.bin", json.dumps({"storage_key": "good"}))
        assert art.disk_size_bytes == 2000
        with pytest.raises(PullError) as err:
            await puller.pull("https-untrusted", f"{url}/model.bin", json.dumps({"storage_key": "untrusted"}))
        assert "certificate" in err.value.message.lower() or "tls" in err.value.message.lower()
    finally:
        await puller.close()
