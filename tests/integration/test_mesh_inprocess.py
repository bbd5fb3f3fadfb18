"""The built-in runtime inside the pod process (``MM_RUNTIME_INPROCESS``) and over a unix socket: the same
behaviour as a runtime process over TCP, through a real pod: lazy load on first inference with the right
prediction, a bad tensor answered INVALID_ARGUMENT by the runtime, an unknown model NOT_FOUND, unload and
reload, and the SPI's own errors (a missing artifact) recorded as LOADING_FAILED with the runtime's message."""

from __future__ import annotations

import uuid

import grpc
import numpy as np
import pytest

from mesh.client import MODEL_ID_HEADER, MeshClientError, build_infer_request
from tests.support.mesh_cluster import FAST_POD_ARGS, MeshTestCluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)


@pytest.fixture(params=["inprocess", "builtin-uds"], scope="module")
def cluster(request, etcd_server, samples):  # noqa: F811
    with MeshTestCluster(
        pods=1,
        capacity=2_000_000,
        models_dir=samples["dir"],
        etcd=etcd_server.endpoint,
        kv_root=f"/mmtest/{uuid.uuid4().hex}/",
        pod_args=FAST_POD_ARGS,
        runtime=request.param,
    ) as c:
        yield c


def _data(m: dict) -> dict:
    inp = m["input"]
    return {inp["name"]: np.asarray(inp["data"], np.float32).reshape(inp["shape"])}


def test_load_serve_unload_reload(cluster, samples):  # noqa: F811
    m = next(x for x in samples["models"] if x["group"] == "many")
    c = cluster.client()
    c.register(m["id"], m["type"], m["path"])
    out = c.infer(m["id"], _data(m))
    np.testing.assert_allclose(
        np.asarray(out["predict"]).ravel(), m["expected"]["predict"]["data"], rtol=1e-4, atol=1e-5
    )
    assert c.status(m["id"])["status"] == "LOADED"
    c.unregister(m["id"])
    wait_for(lambda: c.status(m["id"])["status"] == "NOT_FOUND", what="unregistered")
    c.register(m["id"], m["type"], m["path"])
    out = c.infer(m["id"], _data(m))  # loaded again
    assert np.asarray(out["predict"]).size


def test_runtime_errors_keep_their_codes(cluster, samples):  # noqa: F811
    m = [x for x in samples["models"] if x["group"] == "many"][1]
    c = cluster.client()
    c.register(m["id"], m["type"], m["path"])
    c.infer(m["id"], _data(m))
    bad = build_infer_request(m["id"], {m["input"]["name"]: np.zeros((1, 3), np.float32)})  # wrong width
    with grpc.insecure_channel(cluster.addresses[0]) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as err:
            call(bad.SerializeToString(), metadata=[(MODEL_ID_HEADER, m["id"])], timeout=20)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(MeshClientError) as nf:
        c.infer("never-registered-here", _data(m))
    assert nf.value.code == "NOT_FOUND"
    c.register("missing-artifact", "sklearn", "sklearn/does-not-exist")
    with pytest.raises(MeshClientError) as failed:
        c.infer("missing-artifact", _data(m))
    assert "does-not-exist" in failed.value.message
    assert c.status("missing-artifact")["status"] == "LOADING_FAILED"
