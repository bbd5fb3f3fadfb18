"""Puller against a real S3 server (moto_server subprocess): boto3 and minio flavours, errors, sharing."""

# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from boto3.s3.transfer import TransferConfig

from puller import Puller, PullerSettings
from puller.errors import (
    AccessDenied,
    ArtifactNotFound,
    BucketNotFound,
    ClientNotInstalled,
    DiskBudgetExceeded,
    InvalidModelKey,
    ObjectTooLarge,
    PathEscapesRoot,
    StorageUnavailable,
    UnknownStorageKey,
)
from tests.support.conditions import wait_until
from tests.support.s3 import MotoServer, free_port, moto_auth_server, moto_server  # noqa: F401

SECRET = "testing-secret"


def write_config(path: Path, entries: dict) -> Path:
    path.write_text(json.dumps(entries))
    return path


def make_puller(tmp_path: Path, entries: dict, **kw) -> Puller:
    cfg = write_config(tmp_path / "storage.json", entries)
    kw.setdefault("max_attempts", 2)
    kw.setdefault("retry_backoff_s", 0.01)
    return Puller(PullerSettings(model_dir=tmp_path / "models", storage_config=cfg, **kw))


def leftovers(model_dir: Path) -> list[str]:
    return (
        sorted(p.name for p in model_dir.iterdir() if p.name != ".puller-certs") if model_dir.exists() else []
    )


@pytest.fixture
def bucket(moto_server: MotoServer) -> str:  # noqa: F811
    c = moto_server.client()
    name = moto_server.new_bucket(c)
    c.put_object(Bucket=name, Key="models/one/model.bin", Body=b"single-object-bytes")
    for rel, body in {"a.json": b"{}", "sub/b.bin": b"b" * 1000, "sub/deep/c.txt": b"c"}.items():
        c.put_object(Bucket=name, Key=f"models/dir/{rel}", Body=body)
    c.put_object(Bucket=name, Key="models/dir-v2/other.bin", Body=b"must not be pulled")
    return name


@pytest.mark.parametrize("flavour", [{}, {"client": "minio"}, {"type": "minio"}])
async def test_single_object_and_prefix(tmp_path, moto_server, bucket, flavour):  # noqa: F811
    puller = make_puller(tmp_path, {"s3main": moto_server.entry(bucket=bucket, **flavour)})
    try:
        key = json.dumps({"storage_key": "s3main"})
        one = await puller.pull("m-one", "models/one/model.bin", key)
        assert one.path == tmp_path / "models" / "m-one" / "model.bin"
        assert one.path.read_bytes() == b"single-object-bytes"
        assert one.disk_size_bytes == len(b"single-object-bytes")

        many = await puller.pull("m-dir", "models/dir", key)
        assert many.path == tmp_path / "models" / "m-dir"
        files = sorted(str(p.relative_to(many.path)) for p in many.path.rglob("*") if p.is_file())
        assert files == ["a.json", "sub/b.bin", "sub/deep/c.txt"]
        assert many.disk_size_bytes == 2 + 1000 + 1
        assert leftovers(tmp_path / "models") == ["m-dir", "m-one"]
    finally:
        await puller.close()


async def test_s3_uri_default_entry_and_bucket_in_model_key(tmp_path, moto_server, bucket):  # noqa: F811
    puller = make_puller(tmp_path, {"default": moto_server.entry()})
    try:
        a = await puller.pull("m-uri", f"s3://{bucket}/models/one/model.bin")
        assert a.path.read_bytes() == b"single-object-bytes"
        b = await puller.pull("m-bkt", "models/dir/a.json", json.dumps({"bucket": bucket}))
        assert b.path.read_bytes() == b"{}"
        c = await puller.pull(
            "m-params",
            "models/dir/a.json",
            json.dumps({"storage_key": "default", "storage_params": {"bucket": bucket}}),
        )
        assert c.path.read_bytes() == b"{}"
    finally:
        await puller.close()


async def test_bad_inputs_leave_nothing_behind(tmp_path, moto_server, bucket):  # noqa: F811
    c = moto_server.client()
    c.put_object(Bucket=bucket, Key="evil/../../escape.txt", Body=b"x")
    c.put_object(Bucket=bucket, Key="big/blob", Body=b"x" * 5000)
    puller = make_puller(
        tmp_path,
        {"s3main": moto_server.entry(bucket=bucket), "nobucket": moto_server.entry()},
        max_object_bytes=4096,
    )
    key = json.dumps({"storage_key": "s3main"})
    cases = [
        ("models/nothing-here", key, ArtifactNotFound, "not found"),
        ("models/one/model.bin", json.dumps({"storage_key": "nope"}), UnknownStorageKey, "'nope'"),
        ("models/one/model.bin", '{"storage_key": ', InvalidModelKey, "not valid JSON"),
        (
            "x",
            json.dumps({"storage_key": "s3main", "bucket": "no-such-bucket-xyz"}),
            BucketNotFound,
            "no-such-bucket-xyz",
        ),
        ("x", json.dumps({"storage_key": "nobucket"}), BucketNotFound, "no bucket"),
        ("evil", key, PathEscapesRoot, "escape"),
        ("big/blob", key, ObjectTooLarge, "5000 bytes"),
        (f"s3://{bucket}-other/x", "", UnknownStorageKey, "no s3 storage config entry"),
    ]
    try:
        for path, model_key, exc_type, text in cases:
            with pytest.raises(exc_type) as info:
                await puller.pull("bad", path, model_key)
            assert text in info.value.message
            assert SECRET not in info.value.message
            assert leftovers(tmp_path / "models") == []
        # Failures do not disturb other models.
        ok = await puller.pull("good", "models/one/model.bin", key)
        assert ok.path.read_bytes() == b"single-object-bytes"
    finally:
        await puller.close()


@pytest.mark.parametrize("flavour", [{}, {"client": "minio"}])
async def test_wrong_credentials(tmp_path, moto_auth_server, flavour, caplog):  # noqa: F811
    caplog.set_level("DEBUG", logger="puller")
    srv = moto_auth_server
    c = srv.client()
    name = srv.new_bucket(c)
    c.put_object(Bucket=name, Key="m/model.bin", Body=b"secret model")
    entries = {
        "good": srv.entry(bucket=name, **flavour),
        "badsecret": {**srv.entry(bucket=name, **flavour), "secret_access_key": "definitely-wrong-secret"},
        "badkey": {**srv.entry(bucket=name, **flavour), "access_key_id": "AKIAUNKNOWNUNKNOWN00"},
    }
    puller = make_puller(tmp_path, entries)
    try:
        assert (
            await puller.pull("ok", "m/model.bin", '{"storage_key":"good"}')
        ).path.read_bytes() == b"secret model"
        for entry, code in (("badsecret", "SignatureDoesNotMatch"), ("badkey", "InvalidAccessKeyId")):
            with pytest.raises(AccessDenied) as info:
                await puller.pull("denied", "m/model.bin", json.dumps({"storage_key": entry}))
            assert code in info.value.message
            assert "definitely-wrong-secret" not in info.value.message
            assert srv.secret_access_key not in info.value.message
        assert leftovers(tmp_path / "models") == ["ok"]
        assert "definitely-wrong-secret" not in caplog.text and srv.secret_access_key not in caplog.text
        assert "denied" in caplog.text  # the failure was logged, without the secret
    finally:
        await puller.close()


@pytest.mark.parametrize("flavour", [{}, {"client": "minio"}])
async def test_unreachable_endpoint(tmp_path, flavour):
    entry = {"type": "s3", "endpoint_url": f"http://127.0.0.1:{free_port()}", "bucket": "bkt",
             "access_key_id": "a", "secret_access_key": SECRET, **flavour}  # fmt: skip
    puller = make_puller(tmp_path, {"down": entry}, connect_timeout_s=1)
    try:
        with pytest.raises(StorageUnavailable) as info:
            await puller.pull("m", "x/model.bin", '{"storage_key":"down"}')
        assert (
            info.value.retryable and "127.0.0.1" in info.value.message and "2 attempt" in info.value.message
        )
        assert SECRET not in info.value.message
        assert leftovers(tmp_path / "models") == []
    finally:
        await puller.close()


async def test_concurrent_pulls_share_one_download_and_remove(tmp_path, moto_server, bucket):  # noqa: F811
    puller = make_puller(tmp_path, {"s3main": moto_server.entry(bucket=bucket)})
    key = json.dumps({"storage_key": "s3main"})
    log = Path(moto_server._log.name)
    before = log.read_text().count(f"GET /{bucket}/models/dir/sub/b.bin")
    try:
        results = await asyncio.gather(*(puller.pull("shared", "models/dir", key) for _ in range(8)))
        assert len({r.path for r in results}) == 1

        def gets() -> int:
            return log.read_text().count(f"GET /{bucket}/models/dir/sub/b.bin") - before

        await wait_until(lambda: gets() >= 1, what="the download in the server's access log")
        assert gets() == 1
        # A later pull of the completed model reuses it.
        again = await puller.pull("shared", "models/dir", key)
        assert again == results[0]
        await puller.remove("shared")
        assert not results[0].path.exists()
        await puller.remove("shared")  # idempotent
        assert leftovers(tmp_path / "models") == []
    finally:
        await puller.close()


async def test_config_change_is_picked_up_without_restart(tmp_path, moto_server, bucket):  # noqa: F811
    cfg_dir = tmp_path / "storage-config"  # a mounted-secret style directory
    cfg_dir.mkdir()
    puller = Puller(PullerSettings(model_dir=tmp_path / "models", storage_config=cfg_dir, max_attempts=1))
    key = '{"storage_key":"late"}'
    try:
        with pytest.raises(UnknownStorageKey):
            await puller.pull("m", "models/one/model.bin", key)
        (cfg_dir / "late").write_text(json.dumps(moto_server.entry(bucket="wrong-bucket-name")))
        with pytest.raises(BucketNotFound):
            await puller.pull("m", "models/one/model.bin", key)
        await asyncio.sleep(0.01)
        (cfg_dir / "late").write_text(json.dumps(moto_server.entry(bucket=bucket)))
        os.utime(cfg_dir / "late", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
        assert (
            await puller.pull("m", "models/one/model.bin", key)
        ).path.read_bytes() == b"single-object-bytes"
    finally:
        await puller.close()


async def test_large_object_streams_with_bounded_memory(tmp_path, moto_server, bucket):  # noqa: F811
    size = 40 * 1024 * 1024
    src = tmp_path / "big.bin"
    digest = hashlib.md5()
    with open(src, "wb") as f:
        block = os.urandom(1024 * 1024)
        for i in range(size // len(block)):
            chunk = bytes([i % 256]) + block[1:]
            digest.update(chunk)
            f.write(chunk)
    moto_server.client().upload_file(
        str(src), bucket, "large/model.bin", Config=TransferConfig(multipart_threshold=size * 2)
    )
    src.unlink()
    puller = make_puller(tmp_path, {"s3main": moto_server.entry(bucket=bucket)})
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        art = await puller.pull("large", "large/model.bin", '{"storage_key":"s3main"}')
    finally:
        stop.set()
        sampler.join()
        await puller.close()
    assert art.disk_size_bytes == size
    with open(art.path, "rb") as f:
        assert hashlib.file_digest(f, "md5").hexdigest() == digest.hexdigest()
    growth = peak[0] - base
    assert growth < size // 3, f"RSS grew by {growth} bytes while pulling a {size}-byte object"


async def test_disk_budget_refuses_models_that_do_not_fit(tmp_path, moto_server, bucket):  # noqa: F811
    puller = make_puller(tmp_path, {"s3main": moto_server.entry(bucket=bucket)}, disk_budget_bytes=1010)
    key = '{"storage_key":"s3main"}'
    try:
        await puller.pull("fits", "models/dir", key)  # 1003 bytes, in use until remove()
        with pytest.raises(DiskBudgetExceeded) as info:
            await puller.pull("too-much", "models/one/model.bin", key)  # 19 more bytes
        assert info.value.retryable
        assert leftovers(tmp_path / "models") == ["fits"]
        await puller.remove("fits")
        assert (await puller.pull("now-fits", "models/one/model.bin", key)).disk_size_bytes == 19
        assert leftovers(tmp_path / "models") == ["now-fits"]
    finally:
        await puller.close()


async def test_without_the_minio_extra(tmp_path, moto_server, bucket, monkeypatch):  # noqa: F811
    """Without the optional MinIO client, boto3 entries still pull and a minio entry says what is missing."""
    monkeypatch.setitem(sys.modules, "minio", None)  # `import minio` now fails as if it were not installed
    monkeypatch.delitem(sys.modules, "puller.providers.minio_client", raising=False)
    entries = {
        "s3main": moto_server.entry(bucket=bucket),
        "viaminio": moto_server.entry(bucket=bucket, type="minio"),
    }
    puller = make_puller(tmp_path, entries)
    try:
        one = await puller.pull("m-one", "models/one/model.bin", json.dumps({"storage_key": "s3main"}))
        assert Path(one.path).read_bytes() == b"single-object-bytes"
        with pytest.raises(ClientNotInstalled) as e:
            await puller.pull("m-two", "models/one/model.bin", json.dumps({"storage_key": "viaminio"}))
        assert e.value.grpc_code.name == "FAILED_PRECONDITION"
        assert e.value.message == (
            "storage 'viaminio' uses the MinIO client, which is not installed in this runtime: install the "
            "'minio' extra (pip install 'modelmesh-py[minio]'), or use an s3 entry with the default boto3 client"
        )
        assert leftovers(tmp_path / "models") == ["m-one"]
    finally:
        await puller.close()
