"""Issue 11 through real pods: the per-model size override at registration (``mm-model-size``), and the
leader's proactive loads into spare room (``MM_PROACTIVE_LOADING``), which never evict."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from mesh.client import MeshClientError
from protos.mmesh import model_mesh_pb2 as mm
from protos.mmesh import model_mesh_pb2_grpc as mm_grpc
from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)


def _many(samples) -> list[dict]:  # noqa: F811
    return [m for m in samples["models"] if m["group"] == "many"]


def _register(address: str, m: dict, model_id: str, *, size: str | None = None) -> mm.ModelStatusInfo:
    metadata = [("mm-model-size", size)] if size is not None else []
    with grpc.insecure_channel(address) as ch:
        return mm_grpc.ModelMeshStub(ch).registerModel(
            mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type=m["type"], path=m["path"])),
            metadata=metadata,
            timeout=20,
        )


def _infer(client, m: dict, model_id: str):
    inp = m["input"]
    return client.infer(model_id, {inp["name"]: np.asarray(inp["data"], np.float32).reshape(inp["shape"])})


def test_size_override_plans_the_load(etcd_server, samples):  # noqa: F811
    """The override wins over every prediction: a model declared larger than the whole cache is refused with
    RESOURCE_EXHAUSTED naming both sizes (its real size would fit); a bad header is INVALID_ARGUMENT."""
    m = _many(samples)[0]
    with make_cluster(etcd_server.endpoint, samples, capacity=2_000_000) as c:
        client = c.client()
        _register(c.addresses[0], m, "planned-huge", size=str(50_000_000))
        with pytest.raises(MeshClientError) as err:
            _infer(client, m, "planned-huge")
        assert err.value.code == "RESOURCE_EXHAUSTED"
        assert "50000000" in err.value.message and "2000000" in err.value.message
        _register(c.addresses[0], m, "planned-small", size=str(30_000))
        _infer(client, m, "planned-small")  # the same artifact loads when declared to fit
        with pytest.raises(grpc.RpcError) as bad:
            _register(c.addresses[0], m, "planned-bad", size="12GB")
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "mm-model-size" in bad.value.details()


@pytest.mark.parametrize("proactive", [True, False])
def test_proactive_loads_bring_back_a_recently_used_model(etcd_server, samples, proactive):  # noqa: F811
    """A model in use loses its only copy with its pod (SIGKILL), and the leader is told not to reload lost
    models at once (``--replace-lost-models false``): with proactive loading the leader loads it into the
    surviving pod's spare room by itself; without it (the control) the model stays unloaded."""
    hot = _many(samples)[1]
    with make_cluster(
        etcd_server.endpoint,
        samples,
        pods=2,
        extra=(
            "--proactive-loading", str(proactive).lower(),
            "--replace-lost-models", "false",
            "--scale-check-interval-s", "1",
        ),
    ) as c:  # fmt: skip
        client = c.client(0)
        client.register(hot["id"], hot["type"], hot["path"])
        _infer(client, hot, hot["id"])
        holder = next(x["location"] for x in client.status(hot["id"])["copies"])
        victim = int(holder.rsplit("-", 1)[1])
        survivor = c.client(1 - victim)
        c.kill(victim)
        wait_for(lambda: not survivor.status(hot["id"])["copies"], what="the dead pod's copy gone")
        if proactive:
            wait_for(lambda: survivor.status(hot["id"])["status"] == "LOADED", what="loaded back proactively")
            assert [x["location"] for x in survivor.status(hot["id"])["copies"]] == [f"pod-{1 - victim}"]
        else:
            with pytest.raises(AssertionError):
                wait_for(
                    lambda: survivor.status(hot["id"])["status"] == "LOADED", timeout=8, what="no reload"
                )
