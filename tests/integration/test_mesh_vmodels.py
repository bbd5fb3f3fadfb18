"""vModels end to end: two real pods (each with the built-in runtime) on the session etcd.

Create, resolve by ``mm-vmodel-id`` and by ``model_name``, move the target while requests flow through both
pods (no failed request; outputs switch from the old model to the new one), owner and
expectedTargetModelId checks, autoDeleteTargetModel, deleteVModel, refs blocking unregisterModel, and a
target that cannot load (TRANSITION_FAILED while the old model keeps serving). The "many" sample models
share one input row but give different predictions, which tells the models apart. One cluster serves the
whole module; each test uses its own vmodel and model ids.
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import numpy as np
import pytest

from mesh.client import MeshClientError, build_infer_request, decode_outputs
from mesh.kv.client import KvClient
from mesh.kv.keys import Keys
from mesh.kv.records import ModelRecord, VModelRecord
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def mesh(etcd_server, samples):  # noqa: F811
    cluster = make_cluster(etcd_server.endpoint, samples, pods=2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def many(samples):  # noqa: F811
    return [m for m in samples["models"] if m["group"] == "many"]


def inputs(sample) -> dict[str, np.ndarray]:
    inp = sample["input"]
    return {inp["name"]: np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])}


def expected(sample) -> float:
    return float(sample["expected"]["predict"]["data"][0])


def prediction(outputs) -> float:
    return float(np.asarray(outputs["predict"]).ravel()[0])


def infer_by_name(address: str, name: str, sample, channel: grpc.Channel | None = None) -> float:
    """ModelInfer with no mm-* header: the mesh reads ``model_name`` (field 1), which names the vmodel."""
    own = channel is None
    channel = channel or grpc.insecure_channel(address)
    try:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        request = build_infer_request(name, inputs(sample))
        return prediction(decode_outputs(stub.ModelInfer(request, timeout=30)))
    finally:
        if own:
            channel.close()


def _failed_status(st):
    return st if st["target_model_status"]["status"] == "LOADING_FAILED" else None


def set_vmodel(client, vmodel_id, sample, **kw):
    return client.set_vmodel(vmodel_id, sample["id"], sample["type"], sample["path"], **kw)


def code_of(fn) -> str:
    with pytest.raises(MeshClientError) as info:
        fn()
    return info.value.code


def which(value: float, old, new) -> str:
    for label, sample in (("old", old), ("new", new)):
        if abs(value - expected(sample)) < 1e-3 * max(1.0, abs(expected(sample))):
            return label
    return f"unexpected {value}"


def test_create_and_resolve_by_header_and_model_name(mesh, many):
    c0, c1 = mesh.client(0), mesh.client(1)
    m = many[0]
    st = set_vmodel(c0, "vm-create", m, load_now=True, sync=True)
    assert st["status"] == "DEFINED"
    assert (st["active_model_id"], st["target_model_id"]) == (m["id"], m["id"])
    assert st["active_model_status"]["status"] == "LOADED"
    for client in (c0, c1):
        assert prediction(client.infer("vm-create", inputs(m), vmodel=True)) == pytest.approx(
            expected(m), rel=1e-4
        )
    for pod in mesh.pods:
        assert infer_by_name(pod.address, "vm-create", m) == pytest.approx(expected(m), rel=1e-4)
    # the other pod's watch-fed view has it too
    wait_for(lambda: c1.vmodel_status("vm-create")["status"] == "DEFINED", what="vmodel on pod 1")
    # the concrete model id still works as itself
    assert prediction(c1.infer(m["id"], inputs(m))) == pytest.approx(expected(m), rel=1e-4)


def test_transition_under_traffic_has_no_failed_request(mesh, many):
    old, new = many[1], many[2]
    c0 = mesh.client(0)
    set_vmodel(c0, "vm-move", old, load_now=True, sync=True)
    stop = threading.Event()
    seen: list[list[str]] = [[], []]
    errors: list[str] = []

    def pump(index: int) -> None:
        client = mesh.client(index)
        address = mesh.pods[index].address
        n = 0
        with grpc.insecure_channel(address) as channel:
            while not stop.is_set():
                n += 1
                try:
                    if n % 2:
                        value = prediction(client.infer("vm-move", inputs(old), vmodel=True))
                    else:
                        value = infer_by_name(address, "vm-move", old, channel)
                    seen[index].append(which(value, old, new))
                except Exception as exc:  # any failure at all is what this test is about
                    errors.append(f"pod {index}: {exc!r}")

    threads = [threading.Thread(target=pump, args=(i,), daemon=True) for i in (0, 1)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: all(len(s) >= 5 for s in seen), what="requests before the move")
        st = set_vmodel(mesh.client(1), "vm-move", new, sync=True)
        assert st["status"] == "DEFINED", st
        assert st["active_model_id"] == new["id"]
        counts = [len(s) for s in seen]
        wait_for(
            lambda: all(len(s) >= n + 5 for s, n in zip(seen, counts, strict=True)),
            what="requests after the move",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[:5]
    for index, labels in enumerate(seen):
        assert set(labels) <= {"old", "new"}, labels
        assert labels[0] == "old" and labels[-1] == "new", (index, labels)
        # once a pod sends traffic to the new model it never goes back
        first_new = labels.index("new")
        assert all(label == "new" for label in labels[first_new:]), (index, labels)
    # without autoDelete the old model stays registered (and unreferenced)
    assert c0.status(old["id"])["status"] in ("LOADED", "NOT_LOADED")
    c0.unregister(old["id"])


def test_owner_expected_target_and_not_found(mesh, many):
    c0, c1 = mesh.client(0), mesh.client(1)
    a, b = many[3], many[4]
    st = set_vmodel(c0, "vm-owned", a, owner="isvc-a")
    assert st["owner"] == "isvc-a"
    assert st["target_model_status"] is None  # as ModelMesh: only while target != active
    # another owner may not change or see it, and deleting it as another owner does nothing (ModelMesh's answers)
    with pytest.raises(MeshClientError) as info:
        set_vmodel(c1, "vm-owned", b, owner="isvc-b")
    assert info.value.code == "ALREADY_EXISTS" and "isvc-a" in info.value.message
    c1.delete_vmodel("vm-owned", owner="isvc-b")  # OK without effect
    assert c0.vmodel_status("vm-owned", owner="isvc-b")["status"] == "NOT_FOUND"
    assert c0.vmodel_status("vm-owned", owner="isvc-a")["status"] == "DEFINED"
    assert c0.vmodel_status("vm-owned")["status"] == "DEFINED"  # no owner named: any vmodel
    # expectedTargetModelId is compare-and-swap on the target
    with pytest.raises(MeshClientError) as info:
        set_vmodel(c1, "vm-owned", b, owner="isvc-a", expected_target=b["id"])
    assert info.value.code == "FAILED_PRECONDITION" and a["id"] in info.value.message
    st = set_vmodel(c1, "vm-owned", b, owner="isvc-a", expected_target=a["id"], sync=True)
    assert (st["status"], st["active_model_id"]) == ("DEFINED", b["id"])
    # expectedTargetModelId does not stop the creation of a vmodel that does not exist yet (ModelMesh)
    st = set_vmodel(c0, "vm-new-cas", a, expected_target="anything")
    assert (st["status"], st["active_model_id"]) == ("DEFINED", a["id"])
    c0.delete_vmodel("vm-new-cas")  # a request naming no owner may delete it
    # updateOnly of a missing vmodel, and a target that is not registered without modelInfo
    assert code_of(lambda: set_vmodel(c0, "vm-missing", a, update_only=True)) == "NOT_FOUND"
    assert code_of(lambda: c0.set_vmodel("vm-missing", "never-registered")) == "NOT_FOUND"
    assert c0.vmodel_status("vm-missing")["status"] == "NOT_FOUND"
    c0.delete_vmodel("vm-owned", owner="isvc-a")
    assert c0.vmodel_status("vm-owned")["status"] == "NOT_FOUND"
    c0.delete_vmodel("vm-owned", owner="isvc-a")  # missing: no error


def test_auto_delete_target_model_and_delete_vmodel(mesh, many):
    c0, c1 = mesh.client(0), mesh.client(1)
    first, second = many[5], many[6]
    set_vmodel(c0, "vm-auto", first, auto_delete_target=True, load_now=True, sync=True)
    assert prediction(c1.infer("vm-auto", inputs(first), vmodel=True)) == pytest.approx(
        expected(first), rel=1e-4
    )
    st = set_vmodel(c1, "vm-auto", second, auto_delete_target=True, sync=True)
    assert (st["status"], st["active_model_id"]) == ("DEFINED", second["id"])
    wait_for(lambda: c0.status(first["id"])["status"] == "NOT_FOUND", what="old model auto-deleted")
    wait_for(
        lambda: not mesh.runtime_ready(0, first["id"]) and not mesh.runtime_ready(1, first["id"]),
        what="old model unloaded",
    )
    # still referenced: cannot be unregistered
    assert code_of(lambda: c0.unregister(second["id"])) == "FAILED_PRECONDITION"
    assert prediction(c0.infer("vm-auto", inputs(first), vmodel=True)) == pytest.approx(
        expected(second), rel=1e-4
    )
    c1.delete_vmodel("vm-auto")
    assert c1.vmodel_status("vm-auto")["status"] == "NOT_FOUND"
    wait_for(lambda: c0.status(second["id"])["status"] == "NOT_FOUND", what="last target auto-deleted")
    assert code_of(lambda: c0.infer("vm-auto", inputs(first), vmodel=True)) == "NOT_FOUND"


def test_referenced_model_cannot_be_unregistered(mesh, many):
    c0 = mesh.client(0)
    m = many[7]
    c0.register(m["id"], m["type"], m["path"])
    c0.set_vmodel("vm-ref", m["id"])  # no modelInfo: uses the registered model
    with pytest.raises(MeshClientError) as info:
        c0.unregister(m["id"])
    assert info.value.code == "FAILED_PRECONDITION" and "referenced" in info.value.message
    c0.delete_vmodel("vm-ref")
    # not autoDelete: deleting the vmodel leaves the model, now unreferenced and removable
    assert c0.status(m["id"])["status"] != "NOT_FOUND"
    c0.unregister(m["id"])
    assert c0.status(m["id"])["status"] == "NOT_FOUND"


def test_target_that_fails_to_load_keeps_the_old_model_serving(mesh, many):
    c0, c1 = mesh.client(0), mesh.client(1)
    good = many[8]
    set_vmodel(c0, "vm-fail", good, load_now=True, sync=True)
    st = c1.set_vmodel("vm-fail", "broken-model", good["type"], "many/does-not-exist", sync=True)
    assert st["status"] == "TRANSITION_FAILED", st
    assert (st["active_model_id"], st["target_model_id"]) == (good["id"], "broken-model")
    for client in (c0, c1):
        # the target's failure records reach each pod's registry view through its watch
        st = wait_for(
            lambda client=client: _failed_status(client.vmodel_status("vm-fail")),
            what="the load failure seen by both pods",
        )
        assert st["status"] == "TRANSITION_FAILED" and st["target_model_status"]["errors"], st
    for client in (c0, c1):
        assert prediction(client.infer("vm-fail", inputs(good), vmodel=True)) == pytest.approx(
            expected(good), rel=1e-4
        )
    # pointing the target back at the active model ends the transition and releases the broken model
    st = set_vmodel(c0, "vm-fail", good)
    assert (st["status"], st["target_model_id"]) == ("DEFINED", good["id"])
    c0.unregister("broken-model")
    assert c0.status("broken-model")["status"] == "NOT_FOUND"


def test_leader_completes_a_transition_nobody_drives(mesh, many, etcd_server):
    """A pod that wrote a new target and died before loading it: the leader loads it and switches."""
    c0 = mesh.client(0)
    old, new = many[9], many[10]
    set_vmodel(c0, "vm-orphan", old)
    c0.register(new["id"], new["type"], new["path"])
    keys = Keys.for_root(mesh.kv_root)

    async def write_target() -> None:
        kv = KvClient(etcd_server.endpoint)
        await kv.connect()
        try:
            ventry = await kv.get(keys.vmodel("vm-orphan"))
            mentry = await kv.get(keys.registry(new["id"]))
            vrec = VModelRecord.from_json(ventry.value).replace(target=new["id"])
            mrec = ModelRecord.from_json(mentry.value)
            ok = await kv.txn_cas(
                [
                    (keys.vmodel("vm-orphan"), vrec.to_json(), ventry.mod_revision),
                    (
                        keys.registry(new["id"]),
                        mrec.replace(refs=mrec.refs + 1).to_json(),
                        mentry.mod_revision,
                    ),
                ]
            )
            assert ok
        finally:
            await kv.close()

    asyncio.run(write_target())
    st = wait_for(
        lambda: (
            (s := c0.vmodel_status("vm-orphan"))["status"] == "DEFINED"
            and s["active_model_id"] == new["id"]
            and s
        ),
        what="the leader to complete the transition",
    )
    assert st["active_model_status"]["status"] == "LOADED"
    assert prediction(c0.infer("vm-orphan", inputs(old), vmodel=True)) == pytest.approx(
        expected(new), rel=1e-4
    )
    c0.delete_vmodel("vm-orphan")
    c0.unregister(old["id"])  # refs went back to 0: both models are removable
    c0.unregister(new["id"])


async def test_concurrent_writers_keep_refs_exact(kv: KvClient, kv_root: str):
    """Many vmodels created, moved and deleted at once over one target: every multi-key txn that loses a
    compare-and-swap is re-planned, so refs always equal the number of referencing vmodels (no pods here:
    VModels on its own tables, transitions completed with force)."""
    from mesh.cluster.registry import ModelSpec, Registry
    from mesh.cluster.status import ModelStatus
    from mesh.cluster.view import ViewHolder
    from mesh.cluster.vmodel_plans import SetRequest
    from mesh.cluster.vmodels import SetOptions, VModels
    from mesh.kv.table import Table
    from mesh.tasks import TaskSupervisor

    keys = Keys.for_root(kv_root)
    registry_table = Table(kv, keys.registry_prefix, ModelRecord.from_json, name="registry")
    vmodels_table = Table(kv, keys.vmodels_prefix, VModelRecord.from_json, name="vmodels")
    instances_table = Table(kv, keys.instances_prefix, lambda raw, rev: None, name="instances")
    for t in (registry_table, vmodels_table):
        await t.start()
    registry = Registry(registry_table)
    tasks = TaskSupervisor()

    async def no_load(model_id: str, sync: bool, last_used: int) -> None:
        """A forced switch asks for a load: no pods here."""

    vmodels = VModels(
        ViewHolder("test", instances_table, registry_table, vmodels_table),
        kv=kv,
        table=vmodels_table,
        registry=registry,
        availability=None,  # no transition is driven: every move is forced
        status_of=lambda model_id: ModelStatus("NOT_LOADED"),
        load=no_load,
        tasks=tasks,
    )

    spec = ModelSpec(type="sklearn", path="x")
    try:
        await registry.register("shared", spec, load_now=False)
        n = 12

        def set_vmodel(i: int, target: str, *, force: bool = False, auto_delete: bool = False):
            return vmodels.set_vmodel(
                SetRequest(vmodel_id=f"v{i}", target=target, force=force),
                SetOptions(create=spec, auto_delete=auto_delete),
            )

        await asyncio.gather(*(set_vmodel(i, "shared") for i in range(n)))
        assert (await registry.get_strong("shared")).refs == n
        # half of them move (forced) to an auto-delete model created by the first writer to get there
        await asyncio.gather(*(set_vmodel(i, "auto", force=True, auto_delete=True) for i in range(0, n, 2)))
        assert (await registry.get_strong("shared")).refs == n // 2
        auto = await registry.get_strong("auto")
        assert auto.refs == n // 2 and auto.auto_delete
        await asyncio.gather(*(vmodels.delete_vmodel(f"v{i}", "") for i in range(n)))
        assert (await registry.get_strong("shared")).refs == 0
        deadline = asyncio.get_running_loop().time() + 10
        while await registry.get_strong("auto") is not None:
            assert asyncio.get_running_loop().time() < deadline, "auto-delete model was not removed"
            await asyncio.sleep(0.1)
        await registry.unregister("shared")
    finally:
        await tasks.close()
        for t in (registry_table, vmodels_table):
            await t.stop()


def test_default_vmodel_owner(etcd_server, samples, many):  # noqa: F811
    """MM_DEFAULT_VMODEL_OWNER (ModelMesh's): a vModel set without an owner gets it; one that names an
    owner keeps its own."""
    cluster = make_cluster(etcd_server.endpoint, samples, env={"MM_DEFAULT_VMODEL_OWNER": "ksp"})
    with cluster, cluster.client(0) as c:
        m = many[0]
        c.register(m["id"], m["type"], m["path"])
        assert c.set_vmodel("v-default-owner", m["id"])["owner"] == "ksp"
        assert c.vmodel_status("v-default-owner", owner="ksp")["status"] != "NOT_FOUND"
        assert c.vmodel_status("v-default-owner", owner="someone-else")["status"] == "NOT_FOUND"
        assert c.set_vmodel("v-own-owner", m["id"], owner="team-a")["owner"] == "team-a"
