"""etcd with authentication enabled (a real etcd, its Auth API): the client with a username and password,
with a token and a token file, what it says when credentials are missing or wrong, and a pod serving models
with credentials from its environment, which never shows them in its log or hands them to its runtime."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import numpy as np
import psutil
import pytest

from mesh.devtools.etcd import EmbeddedEtcd
from mesh.errors import KvAuthExpired, KvError, KvUnavailable
from mesh.kv.client import KvClient
from tests.support.mesh_cluster import make_cluster
from tests.support.samples import samples  # noqa: F401  (fixture)

ROOT_PW = "root-pw-" + uuid.uuid4().hex[:8]
MESH_PW = "mesh-pw-" + uuid.uuid4().hex[:8]
PREFIX = "/mmauth/"


@pytest.fixture(scope="module")
def auth_etcd():
    with EmbeddedEtcd() as server:
        server.enable_auth(ROOT_PW, {"mesh": (MESH_PW, PREFIX)})
        yield server


async def _roundtrip(kv: KvClient, root: str) -> None:
    """Every kind of call a pod makes: put/get, CAS txn, lease + keepalive, a watch that sees a put."""
    rev = await kv.put(root + "a", b"1")
    entry = await kv.get(root + "a")
    assert entry is not None and entry.value == b"1" and entry.mod_revision == rev
    ok, _ = await kv.cas_put(root + "a", b"2", rev)
    assert ok
    lease = await kv.lease_grant(5)
    assert await kv.lease_keepalive_once(lease) > 0
    await kv.put(root + "leased", b"x", lease=lease)
    watch = kv.watch_prefix(root, 0)
    assert await anext(watch) == []
    await kv.put(root + "b", b"3")
    events = await asyncio.wait_for(anext(watch), 10)
    assert [(e.kind, e.key) for e in events] == [("put", root + "b")]
    await watch.aclose()
    await kv.lease_revoke(lease)


async def test_auth_is_on(auth_etcd):
    kv = KvClient(auth_etcd.endpoint, username="root", password=ROOT_PW)
    try:
        await kv.connect()
        assert await kv.auth_enabled()
    finally:
        await kv.close()


async def test_username_and_password(auth_etcd, caplog):
    caplog.set_level(logging.DEBUG)
    kv = KvClient(auth_etcd.endpoint, username="mesh", password=MESH_PW, home=PREFIX)
    try:
        await kv.connect()
        await _roundtrip(kv, f"{PREFIX}{uuid.uuid4().hex}/")
        # the role covers the cluster's prefix only
        with pytest.raises(KvError, match="permission denied"):
            await kv.put("/elsewhere/a", b"1")
        assert MESH_PW not in repr(kv)
    finally:
        await kv.close()
    assert MESH_PW not in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "user name is empty"),
        ({"username": "mesh", "password": "wrong"}, "invalid user ID or password"),
        ({"token": "not-a-token"}, "invalid auth token"),
    ],
)
async def test_missing_or_wrong_credentials_say_so(auth_etcd, kwargs, message):
    kv = KvClient(auth_etcd.endpoint, timeout=5.0, home=PREFIX, **kwargs)
    try:
        with pytest.raises(KvError, match=message) as e:
            await kv.connect()
        assert not isinstance(e.value, KvUnavailable)  # a credential problem, not an outage
    finally:
        await kv.close()


async def test_token(auth_etcd):
    admin = KvClient(auth_etcd.endpoint, username="mesh", password=MESH_PW, home=PREFIX)
    try:
        await admin.connect()
        token = await admin.authenticate("mesh", MESH_PW)
    finally:
        await admin.close()
    kv = KvClient(auth_etcd.endpoint, token=token, home=PREFIX)
    try:
        await kv.connect()
        await _roundtrip(kv, f"{PREFIX}{uuid.uuid4().hex}/")
        assert token not in repr(kv)
    finally:
        await kv.close()


async def test_token_file_is_read_again_when_rejected(auth_etcd, tmp_path: Path):
    path = tmp_path / "etcd-token"
    path.write_text("stale-token\n")
    kv = KvClient(auth_etcd.endpoint, token_file=str(path), home=PREFIX)
    try:
        with pytest.raises(KvAuthExpired):
            await kv.connect()
        admin = KvClient(auth_etcd.endpoint, username="mesh", password=MESH_PW, home=PREFIX)
        try:
            await admin.connect()
            path.write_text(await admin.authenticate("mesh", MESH_PW) + "\n")  # the rotation
        finally:
            await admin.close()
        await kv.connect()
        await _roundtrip(kv, f"{PREFIX}{uuid.uuid4().hex}/")
    finally:
        await kv.close()


def test_pod_serves_with_credentials_from_its_environment(auth_etcd, samples):  # noqa: F811
    sample = next(m for m in samples["models"] if m["group"] != "many")
    env = {"MM_ETCD_USERNAME": "mesh", "MM_ETCD_PASSWORD": MESH_PW, "MM_LOG_LEVEL": "DEBUG"}
    cluster = make_cluster(auth_etcd.endpoint, samples, env=env)
    cluster.kv_root = f"{PREFIX}{uuid.uuid4().hex}/"
    with cluster:
        with cluster.client(0) as client:
            client.register(sample["id"], sample["type"], sample["path"], load_now=True, sync=True)
            inp = sample["input"]
            data = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
            out = client.infer(sample["id"], {inp["name"]: data})
            np.testing.assert_allclose(
                np.asarray(out["predict"]).ravel(),
                sample["expected"]["predict"]["data"],
                rtol=1e-4,
                atol=1e-5,
            )
            assert client.status(sample["id"])["status"] == "LOADED"
        pod = psutil.Process(cluster.pods[0].pid)
        runtimes = pod.children(recursive=True)
        assert runtimes, "the pod started its runtime"
        for child in runtimes:
            environ = child.environ()
            assert "MM_ETCD_PASSWORD" not in environ and MESH_PW not in environ.values()
        log = cluster.log(0)
    assert "registered" in log or sample["id"] in log  # the log is the pod's, at DEBUG
    assert MESH_PW not in log


def test_pod_without_credentials_fails_clearly(auth_etcd, samples):  # noqa: F811
    cluster = make_cluster(auth_etcd.endpoint, samples, startup_timeout=30.0)
    cluster.kv_root = f"{PREFIX}{uuid.uuid4().hex}/"
    with pytest.raises(Exception, match="user name is empty"):
        cluster.start()
