"""vModels end to end on two in-process pods: create, resolve by ``mm-vmodel-id`` and by ``model_name``, move
the target while requests flow through both pods (no failed request; answers switch from the old model to the
new one and never back), owner and expectedTargetModelId checks, autoDeleteTargetModel, deleteVModel, refs
blocking unregisterModel, a target that cannot load (TRANSITION_FAILED while the old model keeps serving), and
a transition the leader completes. The fake runtimes answer with the model they served, which tells models
apart. (Moved from the subprocess suite; the refs bookkeeping under concurrent writers is
tests/integration/test_mesh_vmodels.py.)
"""

from __future__ import annotations

import asyncio

import pytest

from mesh.client import MeshClientError
from mesh.kv.records import ModelRecord, VModelRecord
from tests.inprocess.conftest import Failed, outcome, registry_writes_done
from tests.support.conditions import wait_until
from tests.support.inprocess import FAKE_TYPE, InProcessCluster, PodClient, Served


async def two_pods(cluster) -> InProcessCluster:
    return await cluster(pods=2)


async def set_vmodel(client: PodClient, vmodel_id: str, target: str, **kw) -> dict:
    return await client.set_vmodel(vmodel_id, target, FAKE_TYPE, **kw)


async def code_of(call) -> str:
    got = await outcome(call)
    assert isinstance(got, Failed), got
    return got.code


async def test_create_and_resolve_by_header_and_model_name(cluster) -> None:
    mesh = await two_pods(cluster)
    c0, c1 = mesh[0].client, mesh[1].client
    st = await set_vmodel(c0, "vm", "m", load_now=True, sync=True)
    assert st["status"] == "DEFINED"
    assert (st["active_model_id"], st["target_model_id"]) == ("m", "m")
    assert st["active_model_status"]["status"] == "LOADED"
    await wait_until(
        lambda: mesh[1].pod.views.current.vmodel("vm") is not None, what="vmodel in pod-1's view"
    )
    for client in (c0, c1):
        assert (await client.infer(vmodel="vm")).model == "m"
        assert (await client.infer(by_name="vm")).model == "m"
    # the runtime is told the concrete id, in the header and in model_name (its idInjectionPath), never "vm"
    holder = next(p for p in mesh.pods if p.runtime.served["m"])
    assert all(md.get("mm-model-id") == "m" for md in holder.runtime.infer_metadata)
    assert (await c1.vmodel_status("vm"))["status"] == "DEFINED"
    assert (await c1.infer("m")).model == "m"  # the concrete id still works as itself
    assert sum(p.runtime.total_loads for p in mesh.pods) == 1


async def test_transition_under_traffic_has_no_failed_request(cluster) -> None:
    mesh = await two_pods(cluster)
    await set_vmodel(mesh[0].client, "vm", "old", load_now=True, sync=True)
    await wait_until(
        lambda: mesh[1].pod.views.current.vmodel("vm") is not None, what="vmodel in pod-1's view"
    )
    stop = asyncio.Event()
    seen: list[list[str]] = [[], []]
    errors: list[object] = []

    async def pump(index: int) -> None:
        client = mesh[index].client
        n = 0
        while not stop.is_set():
            n += 1
            got = await outcome(client.infer(vmodel="vm") if n % 2 else client.infer(by_name="vm"))
            if isinstance(got, Served):
                seen[index].append(got.model)
            else:
                errors.append((index, got))  # any failure at all is what this test is about
            await asyncio.sleep(0)

    pumps = [asyncio.create_task(pump(i)) for i in (0, 1)]
    try:
        await wait_until(lambda: all(len(s) >= 5 for s in seen), what="requests before the move")
        st = await set_vmodel(mesh[1].client, "vm", "new", sync=True)
        assert (st["status"], st["active_model_id"]) == ("DEFINED", "new"), st
        counts = [len(s) for s in seen]
        await wait_until(
            lambda: all(len(s) >= n + 5 for s, n in zip(seen, counts, strict=True)),
            what="requests after the move",
        )
    finally:
        stop.set()
        await asyncio.gather(*pumps)
    assert not errors, errors[:5]
    for index, labels in enumerate(seen):
        assert set(labels) <= {"old", "new"}, labels
        assert labels[0] == "old" and labels[-1] == "new", (index, labels)
        first_new = labels.index("new")
        assert all(label == "new" for label in labels[first_new:]), (index, labels)  # never goes back
    # without autoDelete the old model stays registered (and unreferenced)
    assert (await mesh[0].client.status("old"))["status"] in ("LOADED", "NOT_LOADED")
    await mesh[0].client.unregister("old")


async def test_owner_expected_target_and_not_found(cluster) -> None:
    mesh = await two_pods(cluster)
    c0, c1 = mesh[0].client, mesh[1].client
    st = await set_vmodel(c0, "vm", "a", owner="isvc-a")
    assert st["owner"] == "isvc-a"
    assert st["target_model_status"] is None  # as ModelMesh: only while target != active
    # another owner may not change or see it, and deleting it as another owner does nothing (ModelMesh's
    # answers)
    with pytest.raises(MeshClientError) as info:
        await set_vmodel(c1, "vm", "b", owner="isvc-b")
    assert info.value.code == "ALREADY_EXISTS" and "isvc-a" in info.value.message
    await c1.delete_vmodel("vm", owner="isvc-b")  # OK without effect
    assert (await c0.vmodel_status("vm", owner="isvc-b"))["status"] == "NOT_FOUND"
    assert (await c0.vmodel_status("vm", owner="isvc-a"))["status"] == "DEFINED"
    assert (await c0.vmodel_status("vm"))["status"] == "DEFINED"  # no owner named: any vmodel
    # expectedTargetModelId is compare-and-swap on the target
    with pytest.raises(MeshClientError) as info:
        await set_vmodel(c1, "vm", "b", owner="isvc-a", expected_target="b")
    assert info.value.code == "FAILED_PRECONDITION" and "'a'" in info.value.message
    st = await set_vmodel(c1, "vm", "b", owner="isvc-a", expected_target="a", sync=True)
    assert (st["status"], st["active_model_id"]) == ("DEFINED", "b")
    # expectedTargetModelId does not stop the creation of a vmodel that does not exist yet (ModelMesh)
    st = await set_vmodel(c0, "vm-new-cas", "a", expected_target="anything")
    assert (st["status"], st["active_model_id"]) == ("DEFINED", "a")
    await c0.delete_vmodel("vm-new-cas")  # a request naming no owner may delete it
    assert (await c0.vmodel_status("vm-new-cas"))["status"] == "NOT_FOUND"
    # updateOnly of a missing vmodel, and a target that is not registered without modelInfo
    assert await code_of(set_vmodel(c0, "vm-missing", "a", update_only=True)) == "NOT_FOUND"
    assert await code_of(c0.set_vmodel("vm-missing", "never-registered")) == "NOT_FOUND"
    assert (await c0.vmodel_status("vm-missing"))["status"] == "NOT_FOUND"
    await c0.delete_vmodel("vm", owner="isvc-a")
    assert (await c0.vmodel_status("vm"))["status"] == "NOT_FOUND"
    await c0.delete_vmodel("vm", owner="isvc-a")  # missing: no error


async def test_auto_delete_target_model_and_delete_vmodel(cluster) -> None:
    mesh = await two_pods(cluster)
    c0, c1 = mesh[0].client, mesh[1].client
    await set_vmodel(c0, "vm", "first", auto_delete_target=True, load_now=True, sync=True)
    await wait_until(
        lambda: mesh[1].pod.views.current.vmodel("vm") is not None, what="vmodel in pod-1's view"
    )
    assert (await c1.infer(vmodel="vm")).model == "first"
    st = await set_vmodel(c1, "vm", "second", auto_delete_target=True, sync=True)
    assert (st["status"], st["active_model_id"]) == ("DEFINED", "second")
    await wait_until(lambda: _status_is(c0, "first", "NOT_FOUND"), what="old model auto-deleted")
    await wait_until(
        lambda: all("first" not in p.runtime.loaded for p in mesh.pods), what="old model unloaded everywhere"
    )
    assert await code_of(c0.unregister("second")) == "FAILED_PRECONDITION"  # still referenced
    assert (await c0.infer(vmodel="vm")).model == "second"
    await c1.delete_vmodel("vm")
    assert (await c1.vmodel_status("vm"))["status"] == "NOT_FOUND"
    await wait_until(lambda: _status_is(c0, "second", "NOT_FOUND"), what="last target auto-deleted")
    await wait_until(
        lambda: mesh[0].pod.views.current.vmodel("vm") is None, what="vmodel gone from pod-0's view"
    )
    assert await code_of(c0.infer(vmodel="vm")) == "NOT_FOUND"


async def test_referenced_model_cannot_be_unregistered(cluster) -> None:
    mesh = await two_pods(cluster)
    c0 = mesh[0].client
    await c0.register("m")
    await c0.set_vmodel("vm", "m")  # no modelInfo: uses the registered model
    with pytest.raises(MeshClientError) as info:
        await c0.unregister("m")
    assert info.value.code == "FAILED_PRECONDITION" and "referenced" in info.value.message
    await c0.delete_vmodel("vm")
    # not autoDelete: deleting the vmodel leaves the model, now unreferenced and removable
    assert (await c0.status("m"))["status"] != "NOT_FOUND"
    await c0.unregister("m")
    assert (await c0.status("m"))["status"] == "NOT_FOUND"


async def test_target_that_fails_to_load_keeps_the_old_model_serving(cluster) -> None:
    mesh = await two_pods(cluster)
    c0, c1 = mesh[0].client, mesh[1].client
    for p in mesh.pods:
        p.runtime.behave("broken", fail="artifact of 'broken' does not exist")
    await set_vmodel(c0, "vm", "good", load_now=True, sync=True)
    st = await set_vmodel(c1, "vm", "broken", sync=True)
    assert st["status"] == "TRANSITION_FAILED", st
    assert (st["active_model_id"], st["target_model_id"]) == ("good", "broken")
    for client in (c0, c1):
        # the target's failure records reach each pod's view through its watch
        st = await wait_until(
            lambda client=client: _failed(client), what="the load failure seen by both pods"
        )
        assert st["status"] == "TRANSITION_FAILED" and st["target_model_status"]["errors"], st
        assert any("does not exist" in e for e in st["target_model_status"]["errors"])
    for client in (c0, c1):
        assert (await client.infer(vmodel="vm")).model == "good"
    # pointing the target back at the active model ends the transition and releases the broken model
    st = await set_vmodel(c0, "vm", "good")
    assert (st["status"], st["target_model_id"]) == ("DEFINED", "good")
    await c0.unregister("broken")
    assert (await c0.status("broken"))["status"] == "NOT_FOUND"


async def test_leader_completes_a_transition_nobody_drives(cluster) -> None:
    """A pod that wrote a new target and died before loading it: the leader loads it and switches."""
    mesh = await two_pods(cluster)
    c0 = mesh[0].client
    await set_vmodel(c0, "vm", "old")
    await c0.register("new")
    kv, keys = mesh[0].pod.kv, mesh.keys
    ventry = await kv.get(keys.vmodel("vm"))
    mentry = await kv.get(keys.registry("new"))
    vrec = VModelRecord.from_json(ventry.value).replace(target="new")
    mrec = ModelRecord.from_json(mentry.value)
    assert await kv.txn_cas(
        [
            (keys.vmodel("vm"), vrec.to_json(), ventry.mod_revision),
            (keys.registry("new"), mrec.replace(refs=mrec.refs + 1).to_json(), mentry.mod_revision),
        ]
    )

    async def switched():
        st = await c0.vmodel_status("vm")
        return st if st["status"] == "DEFINED" and st["active_model_id"] == "new" else None

    st = await wait_until(switched, what="the leader to complete the transition")
    assert st["active_model_status"]["status"] == "LOADED"
    assert (await c0.infer(vmodel="vm")).model == "new"
    await c0.delete_vmodel("vm")
    await c0.unregister("old")  # refs went back to 0: both models are removable
    await c0.unregister("new")


async def _status_is(client: PodClient, model_id: str, status: str) -> bool:
    return (await client.status(model_id))["status"] == status


async def _failed(client: PodClient):
    st = await client.vmodel_status("vm")
    target = st["target_model_status"]  # None until this pod's view has the new target (target != active)
    return st if target is not None and target["status"] == "LOADING_FAILED" else None


async def test_a_transition_waits_for_a_slow_target_while_the_old_model_serves(cluster) -> None:
    mesh = await two_pods(cluster)
    c0, c1 = mesh[0].client, mesh[1].client
    await set_vmodel(c0, "vm", "old", load_now=True, sync=True)
    for p in mesh.pods:
        p.runtime.behave("new", hang=True)
    st = await set_vmodel(c0, "vm", "new")
    assert (st["status"], st["active_model_id"], st["target_model_id"]) == ("TRANSITIONING", "old", "new")
    await wait_until(lambda: sum(p.runtime.loads["new"] for p in mesh.pods) == 1, what="the target loading")
    assert (await c1.infer(vmodel="vm")).model == "old"  # requests keep going to the active model
    for p in mesh.pods:
        p.runtime.release("new")
    await wait_until(lambda: _active_is(c1, "new"), what="the transition to complete")
    assert (await c1.infer(vmodel="vm")).model == "new"


async def test_a_newer_target_replaces_a_pending_one(cluster) -> None:
    mesh = await two_pods(cluster)
    c0 = mesh[0].client
    await set_vmodel(c0, "vm", "a", load_now=True, sync=True)
    for p in mesh.pods:
        p.runtime.behave("b", hang=True)
    await set_vmodel(c0, "vm", "b")
    await wait_until(lambda: sum(p.runtime.loads["b"] for p in mesh.pods) == 1, what="b loading")
    st = await set_vmodel(mesh[1].client, "vm", "c", sync=True)
    assert (st["status"], st["active_model_id"], st["target_model_id"]) == ("DEFINED", "c", "c")
    await wait_until(lambda: _active_is(c0, "c"), what="pod-0's view to have the new target")
    for p in mesh.pods:
        p.runtime.release("b")
    await wait_until(lambda: _status_is(c0, "b", "LOADED"), what="the abandoned target's load to finish")
    await registry_writes_done()
    # the record itself (not a pod's view): the late load of b did not move the vmodel back
    vrec = VModelRecord.from_json((await mesh[0].pod.kv.get(mesh.keys.vmodel("vm"))).value)
    assert (vrec.active, vrec.target) == ("c", "c"), vrec
    st = await c0.vmodel_status("vm")
    assert (st["status"], st["active_model_id"], st["target_model_id"]) == ("DEFINED", "c", "c")
    assert (await c0.infer(vmodel="vm")).model == "c"
    await c0.unregister("b")  # no longer referenced


async def _active_is(client: PodClient, model_id: str) -> bool:
    st = await client.vmodel_status("vm")
    return st["status"] == "DEFINED" and st["active_model_id"] == model_id


async def test_default_vmodel_owner(cluster) -> None:
    """MM_DEFAULT_VMODEL_OWNER (ModelMesh's): a vModel set without an owner gets it; one that names an owner
    keeps its own."""
    mesh = await cluster(pods=1, settings={"default_vmodel_owner": "ksp"})
    c = mesh[0].client
    await c.register("m")
    assert (await c.set_vmodel("v-default-owner", "m"))["owner"] == "ksp"
    assert (await c.vmodel_status("v-default-owner", owner="ksp"))["status"] != "NOT_FOUND"
    assert (await c.vmodel_status("v-default-owner", owner="someone-else"))["status"] == "NOT_FOUND"
    assert (await c.set_vmodel("v-own-owner", "m", owner="team-a"))["owner"] == "team-a"
