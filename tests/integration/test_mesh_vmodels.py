"""vModel refs under concurrent writers: many vmodels created, moved and deleted at once over shared targets,
straight on the tables in the session etcd (no pods). Every multi-key transaction that loses a compare-and-swap
is re-planned, so a model's refs always equal the number of vmodels referencing it.

vModels through pods (create, resolve, transitions under traffic, owners, auto-delete, failed targets, the
leader completing a transition) are tested on in-process pods: tests/inprocess/test_vmodels.py.
"""

from __future__ import annotations

import asyncio

from mesh.kv.client import KvClient
from mesh.kv.keys import Keys
from mesh.kv.records import ModelRecord, VModelRecord
from tests.support.conditions import wait_until


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
        await wait_until(
            lambda: _gone(registry, "auto"), timeout=10, what="the auto-delete model to be removed"
        )
        await registry.unregister("shared")
    finally:
        await tasks.close()
        for t in (registry_table, vmodels_table):
            await t.stop()


async def _gone(registry, model_id: str) -> bool:
    return await registry.get_strong(model_id) is None
