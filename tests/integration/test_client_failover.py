"""Clients with several pod addresses keep working when a pod is killed (real 2-pod cluster, SIGKILL).

The sync client, the asyncio client and the CLI each get both addresses, the first one being the pod that
dies; every call after the kill must still succeed, served by the other pod, and the clients must say they
moved on (``failovers``). A client that knows only the dead pod fails with UNAVAILABLE: that is what the
second address saves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mesh.aio_client import AsyncMeshClient
from mesh.cli import main
from mesh.client import MeshClient, MeshClientError
from tests.support.mesh_cluster import make_cluster
from tests.support.samples import samples  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(300)  # hang guard only


def _inputs(sample):
    inp = sample["input"]
    return {inp["name"]: np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])}


def _check(sample, out):
    want = sample["expected"]["predict"]["data"]
    np.testing.assert_allclose(np.asarray(out["predict"]).ravel(), want, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def killed(etcd_server, samples):  # noqa: F811
    """A 2-pod cluster with the sample model loaded, and pod 0 killed (SIGKILL) before the tests run."""
    sample = next(m for m in samples["models"] if m["group"] != "many")
    cluster = make_cluster(etcd_server.endpoint, samples, pods=2)
    with cluster:
        with MeshClient(cluster.addresses) as c:
            c.register(sample["id"], sample["type"], sample["path"], load_now=True, sync=True)
            _check(sample, c.infer(sample["id"], _inputs(sample)))
        dead, alive = cluster.addresses
        cluster.kill(0)
        yield sample, dead, alive


def test_a_client_of_the_dead_pod_alone_fails(killed):
    _, dead, _ = killed
    with MeshClient(dead, timeout=5) as c, pytest.raises(MeshClientError) as e:
        c.status("anything")
    assert e.value.code == "UNAVAILABLE"


def test_sync_client_keeps_working(killed):
    sample, dead, alive = killed
    with MeshClient([dead, alive], timeout=60) as c:
        for _ in range(20):
            _check(sample, c.infer(sample["id"], _inputs(sample)))
            assert c.status(sample["id"])["status"] in ("LOADED", "LOADING")
        assert c.failovers == 1 and c.target == alive
        assert any(i["address"] == alive for i in c.cluster_status(include_models=False)["instances"])


async def test_async_client_keeps_working(killed):
    sample, dead, alive = killed
    async with AsyncMeshClient(f"{dead},{alive}", timeout=60) as c:
        for _ in range(20):
            _check(sample, await c.infer(sample["id"], _inputs(sample)))
        assert c.failovers == 1 and c.target == alive
        assert (await c.status(sample["id"]))["status"] in ("LOADED", "LOADING")


def test_cli_keeps_working(killed, capsys):
    sample, dead, alive = killed
    rc = main(["--address", f"{dead},{alive}", "--timeout", "60", "ensure-loaded", sample["id"], "--sync"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert json.loads(captured.out)["status"] == "LOADED"
    assert f"{sample['id']}: LOADED after " in captured.err  # the progress line
