"""Properties of storage-key resolution (puller.resolve, puller.storage_config, puller.confine).

Arbitrary model paths (``..``, NUL, unicode, absolute paths, URIs of every scheme, huge strings) and model
keys (any text, or JSON naming real and unknown storage keys with any ``storage_params``) against a real
directory tree with links inside and outside its root:

- resolution either raises a puller error / ``InvalidRequest`` (INVALID_ARGUMENT, FAILED_PRECONDITION,
  NOT_FOUND: never INTERNAL), or yields a source that is confined: a local path inside the root (really:
  its real path), an object in the administrator's endpoint with the administrator's credentials, an URL
  on the administrator's origin carrying the administrator's headers;
- ``storage_params`` never change a field the entry does not allow;
- resolving beneath a root never touches (lstat, stat, open) anything outside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.errors import MeshError
from puller.confine import Root, resolve_beneath
from puller.resolve import HttpSource, LocalSource, ObjectSource, parse_model_key, resolve
from puller.storage_config import PARAMS, StorageConfig, same_origin

pytestmark = pytest.mark.fuzz

SERVER_SIDE = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
ENTRIES = {
    "s3": {"type": "s3", "endpoint_url": "http://s3.internal:9000", "bucket": "models",
           "access_key_id": "AKIA", "secret_access_key": "s3cr3t"},
    "pinned": {"type": "s3", "endpoint_url": "http://s3.internal:9000", "bucket": "fixed", "allowed_params": []},
    "open": {"type": "minio", "endpoint_url": "http://s3.internal:9000", "allowed_params": ["region"]},
    "web": {"type": "http", "url": "https://files.internal/base", "headers": {"Authorization": "Bearer t"}},
    "default_onnx": {"type": "s3", "endpoint_url": "http://s3.internal:9000", "bucket": "onnx"},
}  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path, StorageConfig]:
    base = tmp_path_factory.mktemp("fuzz-storage")
    root, outside = base / "root", base / "outside"
    (root / "m" / "sub").mkdir(parents=True)
    (root / "m" / "model.onnx").write_bytes(b"x")
    (root / "m" / "sub" / "w.bin").write_bytes(b"y")
    (root / "m" / "in-link").symlink_to("sub/w.bin")
    (root / "out-link").symlink_to(outside)
    (root / "m" / "up").symlink_to("../..")
    (root / "loop").symlink_to("loop")
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    entries = {**ENTRIES, "vol": {"type": "local", "path": str(root)}}
    return root, outside, StorageConfig(entries, pvc_mounts_dir=base / "pvc")


components = st.one_of(
    st.sampled_from(["..", ".", "", "m", "sub", "model.onnx", "in-link", "out-link", "up", "loop", "secret",
                     "outside", "\0", "%2e%2e", "~", " "]),
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12),
)  # fmt: skip
relative_paths = st.lists(components, max_size=6).map("/".join)
model_paths = st.one_of(
    relative_paths,
    relative_paths.map(lambda p: "/" + p),
    st.sampled_from(["s3://", "s3://models/", "s3://other/k", "http://", "https://files.internal/base/m",
                     "https://files.internal/basement/m", "https://evil.example/base/m", "file://", "file:///",
                     "gs://b/k", "ftp://u:p@h/x", "http://u:p@files.internal/base/x"]).flatmap(
        lambda prefix: relative_paths.map(lambda p: prefix + p)),
    st.integers(4000, 70000).map(lambda n: "a/" * (n // 2)),
    st.text(max_size=50),
)  # fmt: skip
param_values = st.one_of(
    st.text(max_size=20), st.integers(), st.booleans(), st.none(),
    st.sampled_from(["s3", "local", "http", "minio", "/", "https://evil.example", "http://s3.internal:9000",
                     "https://files.internal/base/sub", "models", "fixed"]),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)  # fmt: skip
param_names = st.one_of(st.sampled_from(sorted(set().union(*PARAMS.values()))), st.text(max_size=10))
model_keys = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["[" * 3000, '{"storage_key": ' + "[" * 3000]),
    st.fixed_dictionaries(
        {},
        optional={
            "storage_key": st.one_of(st.sampled_from([*ENTRIES, "vol", "nope", ""]), st.integers()),
            "storage_params": st.one_of(
                st.dictionaries(param_names, param_values, max_size=4), st.integers()
            ),
            "bucket": st.one_of(st.sampled_from(["models", "fixed", "evil"]), st.text(max_size=5)),
            "model_type": st.one_of(st.sampled_from(["onnx", "sklearn", ""]), st.just({"name": "onnx"})),
        },
    ).map(json.dumps),
)


def _check_error(exc: BaseException) -> None:
    assert isinstance(exc, MeshError), f"{type(exc).__name__}: {exc}"
    assert exc.grpc_code not in SERVER_SIDE, f"{exc.grpc_code.name}: {exc}"


@given(path=model_paths, model_key=model_keys)
def test_resolution_is_refused_cleanly_or_confined(world, path, model_key) -> None:
    root, _, config = world
    try:
        source = resolve(path, parse_model_key(model_key), config, local_roots=(root,))
    except Exception as exc:  # the property is about which exceptions
        _check_error(exc)
        return
    if isinstance(source, LocalSource):
        real = source.path
        assert real == Path(os.path.realpath(real)), "not a real path"
        assert real == root or root in real.parents, f"{path!r} resolved outside the root: {real}"
    elif isinstance(source, ObjectSource):
        admin = config.entry(source.entry.storage_key)
        assert (source.entry.endpoint_url, source.entry.secret_access_key, source.entry.kind) == (
            admin.endpoint_url, admin.secret_access_key, admin.kind
        )  # fmt: skip
        assert source.bucket == admin.bucket or "bucket" in admin.allowed_params or not admin.bucket
    else:
        assert isinstance(source, HttpSource)
        admin = config.entry(source.entry.storage_key)
        assert same_origin(source.url, admin.url) and source.entry.headers == admin.headers


@given(
    key=st.sampled_from([*ENTRIES, "vol"]),
    params=st.dictionaries(param_names, param_values, max_size=5),
)
def test_storage_params_never_change_what_the_entry_does_not_allow(world, key, params) -> None:
    _, _, config = world
    admin = config.entry(key)
    try:
        entry = config.entry(key, params)
    except Exception as exc:
        _check_error(exc)
        return
    protected = {
        "kind": lambda e: e.kind,
        "client": lambda e: e.client,
        "endpoint_url": lambda e: e.endpoint_url,
        "access_key_id": lambda e: e.access_key_id,
        "secret_access_key": lambda e: e.secret_access_key,
        "certificate": lambda e: e.certificate,
        "headers": lambda e: e.headers,
        "path": lambda e: e.root,
        "region": lambda e: e.region,
    }
    for name, get in protected.items():
        if name not in admin.allowed_params:
            assert get(entry) == get(admin), f"{name} changed by {params!r}"
    if entry.kind == "http":
        assert same_origin(entry.url, admin.url)


@given(path=relative_paths)
def test_resolve_beneath_never_touches_outside(world, path) -> None:
    root, outside, _ = world
    touched: list[str] = []
    real_lstat, real_stat = os.lstat, os.stat

    def spy(fn):
        def inner(p, *a, **k):
            if os.fspath(p).startswith(str(outside)):
                touched.append(os.fspath(p))
            return fn(p, *a, **k)

        return inner

    with mock.patch.object(os, "lstat", spy(real_lstat)), mock.patch.object(os, "stat", spy(real_stat)):
        try:
            real = resolve_beneath(Root.of(root), path)
        except Exception as exc:
            _check_error(exc)
            real = None
    assert touched == []
    if real is not None:
        assert real == root or root in real.parents
