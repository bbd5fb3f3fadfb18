"""Storage config parsing and reload, model key parsing, path resolution rules, settings from env."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from puller.errors import (
    ArtifactNotFound,
    BucketNotFound,
    InvalidModelKey,
    InvalidModelPath,
    InvalidStorageConfig,
    PathEscapesRoot,
    StorageParamNotAllowed,
    UnknownStorageKey,
)
from puller.resolve import HttpSource, LocalSource, ObjectSource, parse_model_key, resolve
from puller.settings import PullerSettings
from puller.storage_config import StorageConfig, StorageConfigStore

SECRET = "s3cr3t-value"
PVC = Path("/pvc_mounts")


def config(entries: dict) -> StorageConfig:
    return StorageConfig(entries, pvc_mounts_dir=PVC)


S3_ENTRY = {"type": "s3", "access_key_id": "AKIA", "secret_access_key": SECRET,
            "endpoint_url": "http://minio:9000", "default_bucket": "models"}  # fmt: skip


def test_entry_types_and_secret_free_repr():
    cfg = config({
        "s3": S3_ENTRY,
        "mini": {**S3_ENTRY, "type": "minio"},
        "flag": {**S3_ENTRY, "client": "minio"},
        "web": {"type": "https", "url": "https://h.example/base", "headers": {"Authorization": SECRET}},
        "vol": {"type": "pvc", "name": "models-pvc"},
        "asstring": json.dumps(S3_ENTRY),
    })  # fmt: skip
    s3 = cfg.entry("s3")
    assert (s3.kind, s3.client, s3.bucket) == ("s3", "boto3", "models")
    assert cfg.entry("mini").client == cfg.entry("flag").client == "minio"
    assert cfg.entry("web").headers == (("Authorization", SECRET),)
    assert cfg.entry("vol").root == PVC / "models-pvc"
    assert cfg.entry("asstring").bucket == "models"
    for key in cfg.keys():
        e = cfg.entry(key)
        assert SECRET not in repr(e) and SECRET not in str(e) and SECRET not in e.where()


def test_bad_entries_fail_alone():
    cfg = config({"gcs": {"type": "gcs"}, "nourl": {"type": "http"}, "ok": S3_ENTRY, "junk": "{not json"})
    assert cfg.entry("ok").bucket == "models"
    for key, text in (("gcs", "not supported"), ("nourl", "needs a url"), ("junk", "not valid JSON")):
        with pytest.raises(InvalidStorageConfig, match=text):
            cfg.entry(key)
    with pytest.raises(UnknownStorageKey, match=r"'missing'.*configured keys: gcs, junk, nourl, ok"):
        cfg.entry("missing")


def test_storage_params_override_only_what_the_entry_allows():
    cfg = config({"s3": S3_ENTRY, "open": {**S3_ENTRY, "allowed_params": ["bucket", "endpoint_url"]}})
    assert cfg.entry("s3", {"bucket": "other"}).bucket == "other"  # s3 entries allow bucket by default
    with pytest.raises(StorageParamNotAllowed, match=r"'endpoint_url' may not be set for storage key 's3'"):
        cfg.entry("s3", {"bucket": "other", "endpoint_url": "https://s3.example"})
    e = cfg.entry("open", {"bucket": "other", "endpoint_url": "https://s3.example"})
    assert (e.bucket, e.endpoint_url) == ("other", "https://s3.example")


def test_model_key_parsing():
    assert parse_model_key("").storage_key == ""
    k = parse_model_key(json.dumps({"storage_key": "s3", "bucket": "b", "model_type": {"name": "sklearn"}}))
    assert (k.storage_key, k.storage_params, k.model_type) == ("s3", {"bucket": "b"}, "sklearn")
    for bad, text in (("{", "not valid JSON"), ("[1]", "JSON object"), ('{"storage_params": 3}', "object")):
        with pytest.raises(InvalidModelKey, match=text):
            parse_model_key(bad)


def test_resolution_rules(tmp_path: Path):
    root = tmp_path / "root"
    (root / "m").mkdir(parents=True)
    cfg = config({"s3": S3_ENTRY, "web": {"type": "http", "url": "https://h.example/base"},
                  "web2": {"type": "http", "url": "https://h.example/base/deeper"}})  # fmt: skip
    roots = (root,)
    key = parse_model_key('{"storage_key":"s3"}')
    src = resolve("path/to/model", key, cfg, local_roots=roots)
    assert isinstance(src, ObjectSource) and (src.bucket, src.key) == ("models", "path/to/model")
    src = resolve(
        "s3://bkt/k/x", parse_model_key(""), config({"a": {**S3_ENTRY, "bucket": "bkt"}}), local_roots=roots
    )
    assert isinstance(src, ObjectSource) and (src.entry.storage_key, src.bucket, src.key) == (
        "a",
        "bkt",
        "k/x",
    )
    src = resolve("https://h.example/base/deeper/m.bin", parse_model_key(""), cfg, local_roots=roots)
    assert isinstance(src, HttpSource) and src.entry.storage_key == "web2"
    src = resolve("a/b.bin", parse_model_key('{"storage_key":"web"}'), cfg, local_roots=roots)
    assert isinstance(src, HttpSource) and src.url == "https://h.example/base/a/b.bin"
    # No key and no default: local.
    src = resolve("m", parse_model_key(""), cfg, local_roots=roots)
    assert isinstance(src, LocalSource) and src.path == root / "m"
    # default_<type> beats default, and a default makes plain paths storage-backed.
    both = config({"default": S3_ENTRY, "default_onnx": {**S3_ENTRY, "bucket": "onnx-models"}})
    assert (
        resolve("x", parse_model_key(""), both, local_roots=roots, model_type="onnx").bucket == "onnx-models"
    )
    assert resolve("x", parse_model_key(""), both, local_roots=roots).bucket == "models"


def test_resolution_errors(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    cfg = config(
        {"nob": {**S3_ENTRY, "default_bucket": ""}, "web": {"type": "http", "url": "https://h.example"}}
    )
    none = parse_model_key("")
    with pytest.raises(PathEscapesRoot):
        resolve("../outside", none, cfg, local_roots=(root,))
    with pytest.raises(PathEscapesRoot):
        resolve("link", none, cfg, local_roots=(root,))
    with pytest.raises(PathEscapesRoot):
        resolve(str(outside), none, cfg, local_roots=(root,))
    with pytest.raises(PathEscapesRoot):
        resolve(f"file://{outside}", none, cfg, local_roots=(root,))
    with pytest.raises(ArtifactNotFound):
        resolve("absent", none, cfg, local_roots=(root,))
    with pytest.raises(InvalidModelPath, match="no local roots"):
        resolve("m", none, cfg, local_roots=())
    with pytest.raises(BucketNotFound, match="no bucket"):
        resolve("x", parse_model_key('{"storage_key":"nob"}'), cfg, local_roots=())
    with pytest.raises(PathEscapesRoot):
        resolve("../etc/passwd", parse_model_key('{"storage_key":"web"}'), cfg, local_roots=())
    with pytest.raises(InvalidModelPath, match="unsupported URI scheme"):
        resolve("gs://b/k", none, cfg, local_roots=(root,))


def test_store_reloads_file_and_keeps_last_good(tmp_path: Path, caplog):
    path = tmp_path / "storage.json"
    path.write_text(json.dumps({"a": S3_ENTRY}))
    store = StorageConfigStore(path, pvc_mounts_dir=PVC)
    assert store.current().keys() == ["a"]
    path.write_text(json.dumps({"a": S3_ENTRY, "b": S3_ENTRY}))
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)
    assert store.current().keys() == ["a", "b"]
    path.write_text("{half written")
    os.utime(path, ns=(time.time_ns() + 2 * 10**9,) * 2)
    assert store.current().keys() == ["a", "b"]
    assert SECRET not in caplog.text


def test_store_directory_like_a_mounted_secret(tmp_path: Path):
    d = tmp_path / "storage-config"
    d.mkdir()
    (d / "..data").mkdir()
    (d / "s3").write_text(json.dumps(S3_ENTRY))
    store = StorageConfigStore(d, pvc_mounts_dir=PVC)
    assert store.current().keys() == ["s3"]
    (d / "web").write_text(json.dumps({"type": "http", "url": "http://x"}))
    assert store.current().keys() == ["s3", "web"]


def test_settings_from_env(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("ROOT_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("STORAGE_CONFIG", "/storage-config")
    monkeypatch.setenv("PULLER_LOCAL_ROOTS", f"/a{os.pathsep}/b")
    monkeypatch.setenv("PULLER_DISK_BUDGET_BYTES", "1000")
    s = PullerSettings.from_env(max_object_bytes=5)
    assert s.model_dir == tmp_path and s.storage_config == Path("/storage-config")
    assert (
        s.local_roots == (Path("/a"), Path("/b")) and s.disk_budget_bytes == 1000 and s.max_object_bytes == 5
    )
    monkeypatch.setenv("PULLER_MAX_ATTEMPTS", "many")
    with pytest.raises(ValueError) as e:
        PullerSettings.from_env()
    assert str(e.value) == "PULLER_MAX_ATTEMPTS: 'many' is not a number"
    monkeypatch.setenv("PULLER_MAX_ATTEMPTS", "0")
    with pytest.raises(ValueError) as e:
        PullerSettings.from_env()
    assert str(e.value) == "PULLER_MAX_ATTEMPTS: '0' is not a number between 1 and 100"
    monkeypatch.setenv("PULLER_MAX_ATTEMPTS", "2")
    monkeypatch.delenv("STORAGE_CONFIG")
    monkeypatch.setenv("STORAGE_CONFIG_DIR", "/storage-config-dir")  # ModelMesh's name
    assert PullerSettings.from_env().storage_config == Path("/storage-config-dir")
    monkeypatch.setenv("STORAGE_CONFIG", "/x")
    with pytest.raises(ValueError, match="STORAGE_CONFIG and STORAGE_CONFIG_DIR are both set"):
        PullerSettings.from_env()
