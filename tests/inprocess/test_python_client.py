"""The synchronous Python client (``mesh.client.MeshClient``) against in-process pods: every call it offers,
run in a worker thread (it blocks) while the pods serve on the test's event loop. Tensors go through the
client's encoder; the fake runtime answers with the model it served (no outputs to decode)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mesh.client import MeshClient, MeshClientError, build_infer_request
from tests.support.inprocess import FAKE_TYPE


async def call(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


async def test_every_call_of_the_python_client(cluster) -> None:
    mesh = await cluster(pods=2)
    with MeshClient(mesh[0].address, timeout=20) as c:
        await call(c.wait_ready, 10)
        st = await call(c.register, "m", FAKE_TYPE, "some/path", min_copies=1, max_copies=2)
        # min copies 1: the leader starts a load as soon as it sees the record (which may already be running)
        assert st["status"] in {"NOT_LOADED", "LOADING"}, st
        rec = mesh[0].pod.registry.get("m")
        assert (rec.min_copies, rec.max_copies, rec.path) == (1, 2, "some/path")
        assert (await call(c.ensure_loaded, "m", sync=True))["status"] == "LOADED"
        assert await call(c.infer, "m", {"x": np.zeros((1, 4), np.float32)}) == {}
        request = build_infer_request("m", [[1.0, 2.0]], raw=True)
        assert (await call(c.infer_raw, request)).model_name == "m"
        st = await call(c.set_vmodel, "vm", "m", owner="team-a", sync=True)
        assert (st["status"], st["active_model_id"], st["owner"]) == ("DEFINED", "m", "team-a")
        assert (await call(c.vmodel_status, "vm", owner="team-a"))["active_model_id"] == "m"
        assert await call(c.infer, "vm", [[1.0]], vmodel=True) == {}
        assert mesh[0].runtime.served["m"] + mesh[1].runtime.served["m"] == 3
        status = await call(c.cluster_status)
        assert {i["instance_id"] for i in status["instances"]} == {"pod-0", "pod-1"}
        assert [m["model_id"] for m in status["models"]] == ["m"]
        await call(c.delete_vmodel, "vm", owner="team-a")
        await call(c.unregister, "m")
        assert (await call(c.status, "m"))["status"] == "NOT_FOUND"
        with pytest.raises(MeshClientError) as err:
            await call(c.infer, "m", [[1.0]])
        assert err.value.code == "NOT_FOUND" and "'m'" in err.value.message
