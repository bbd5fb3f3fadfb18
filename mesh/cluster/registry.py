"""Registry: owns ``registry/<modelId>`` (ModelRecords). Every write is a CAS loop through ``Table.update``.

Reads (``get``) come from the watch-fed table in memory; only registration, unregistration and the load
lifecycle (claim, loaded, failed, removed) write, and those happen on the management and cold paths, never
on a cache hit. Mutations are pure functions of the current record so a CAS retry simply re-applies them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.errors import AlreadyExists, FailedPrecondition, LoadedElsewhere, ModelNotFound
from mesh.kv.records import ModelRecord
from mesh.kv.table import Table

log = logging.getLogger(__name__)

# ModelMesh stamps new models in the past so they never displace models in active use (modelmesh.md §3.6).
LAST_USED_AGE_ON_ADD_MS = 6 * 3600 * 1000
LAST_USED_AGE_ON_ADD_LOADNOW_MS = 3600 * 1000


@dataclass(frozen=True, slots=True)
class ModelSpec:
    type: str
    path: str = ""
    key: str = ""
    min_copies: int = 0
    max_copies: int = 0
    owner: str = ""  # who manages the registration (`mesh apply`): the mm-owner header; "" = nobody said
    size_override: int = 0  # the mm-model-size header: planned size of a copy (mesh.cluster.sizes)


class Registry:
    def __init__(
        self,
        table: Table[ModelRecord],
        clock: Clock = SYSTEM_CLOCK,
        on_write: Callable[[], None] = lambda: None,
    ) -> None:
        self.table = table
        self._now = clock.now_ms
        self._on_write = on_write

    async def _update(
        self, model_id: str, fn: Callable[[ModelRecord | None], ModelRecord | None]
    ) -> ModelRecord | None:
        """Table.update, counting the writes it makes (for the etcd-writes metric)."""
        before = self.table.get(model_id)
        after = await self.table.update(model_id, fn)
        if (before is None) != (after is None) or (
            before is not None and after is not None and before.revision != after.revision
        ):
            self._on_write()
        return after

    # ---- reads
    def get(self, model_id: str) -> ModelRecord | None:
        return self.table.get(model_id)

    async def get_strong(self, model_id: str) -> ModelRecord | None:
        return await self.table.get_strong(model_id)

    def items(self) -> dict[str, ModelRecord]:
        return self.table.items()

    # ---- management
    async def register(
        self, model_id: str, spec: ModelSpec, *, load_now: bool, last_used: int = 0
    ) -> ModelRecord:
        fresh = self.new_record(spec, load_now=load_now, last_used=last_used)

        def apply(cur: ModelRecord | None) -> ModelRecord | None:
            if cur is not None:
                if (cur.type, cur.path, cur.key) != (spec.type, spec.path, spec.key):
                    raise AlreadyExists(
                        f"model '{model_id}' is already registered with different info "
                        f"(type={cur.type!r}, path={cur.path!r}); unregister it first"
                    )
                # Owner, as for vmodels: an owned model is re-registered only by its owner or by a request
                # naming none (ModelMesh clients send none); an unowned one takes the first owner given.
                if spec.owner and cur.owner and spec.owner != cur.owner:
                    raise FailedPrecondition(
                        f"model '{model_id}' is owned by '{cur.owner}', not by '{spec.owner}'"
                    )
                owner = cur.owner or spec.owner
                wanted = (spec.min_copies, spec.max_copies, owner, spec.size_override)
                if (cur.min_copies, cur.max_copies, cur.owner, cur.size_override) == wanted:
                    return cur
                return cur.replace(
                    min_copies=spec.min_copies,
                    max_copies=spec.max_copies,
                    owner=owner,
                    size_override=spec.size_override,
                )
            return fresh

        rec = await self._update(model_id, apply)
        assert rec is not None
        return rec

    async def unregister(self, model_id: str) -> ModelRecord | None:
        """Delete the record (no effect if absent). Fails while a vmodel still references it."""
        removed: list[ModelRecord] = []

        def apply(cur: ModelRecord | None) -> ModelRecord | None:
            if cur is None:
                return None
            if cur.refs > 0:
                raise FailedPrecondition(f"model '{model_id}' is still referenced by {cur.refs} vmodel(s)")
            removed[:] = [cur]
            return None

        await self._update(model_id, apply)
        return removed[0] if removed else None

    # ---- load lifecycle (cold path)
    async def claim(
        self, model_id: str, instance_id: str, *, exclusive: bool, alive: Collection[str]
    ) -> ModelRecord:
        """Add this instance as loading. With ``exclusive``, lose to any live claim by another pod."""
        now = self._now()

        def apply(cur: ModelRecord | None) -> ModelRecord | None:
            if cur is None:
                raise ModelNotFound(model_id)
            if instance_id in cur.instances:
                return cur
            others = [i for i in cur.instances if i != instance_id and i in alive]
            if exclusive and others:
                raise LoadedElsewhere(others)
            return cur.replace(instances={**cur.instances, instance_id: now})

        rec = await self._update(model_id, apply)
        assert rec is not None
        return rec

    async def mark_loaded(
        self, model_id: str, instance_id: str, last_used: int, *, size: int = 0
    ) -> ModelRecord | None:
        now = self._now()

        def apply(cur: ModelRecord | None) -> ModelRecord | None:
            if cur is None:
                raise ModelNotFound(model_id)
            instances = cur.instances if instance_id in cur.instances else {**cur.instances, instance_id: now}
            failures = {k: v for k, v in cur.failures.items() if k != instance_id}
            messages = {k: v for k, v in cur.failure_messages.items() if k != instance_id}
            return cur.replace(
                instances=instances,
                loaded={**cur.loaded, instance_id: now},
                failures=failures,
                failure_messages=messages,
                last_used=max(cur.last_used, last_used),
                size=size or cur.size,
            )

        return await self._update(model_id, apply)

    async def readd_copy(
        self, model_id: str, instance_id: str, *, alive: Collection[str], last_used: int
    ) -> bool:
        """Put back a copy this pod holds but the record forgot (it was taken for dead during a partition or an
        etcd outage), unless live pods already hold enough loaded copies without it: max(1, min_copies), the
        copies the cluster placed while this pod was gone. False = the copy is surplus (unload it).

        Decided inside the CAS, so two pods coming back with the same model never both re-add themselves."""
        now = self._now()
        surplus: list[bool] = []

        def apply(cur: ModelRecord | None) -> ModelRecord | None:
            surplus.clear()
            if cur is None:
                raise ModelNotFound(model_id)
            if instance_id in cur.loaded:
                return cur
            others = [i for i in cur.loaded if i != instance_id and i in alive]
            if instance_id not in cur.instances and len(others) >= max(1, cur.min_copies):
                surplus.append(True)
                return cur
            return cur.replace(
                instances={**cur.instances, instance_id: cur.instances.get(instance_id, now)},
                loaded={**cur.loaded, instance_id: now},
                last_used=max(cur.last_used, last_used),
            )

        await self._update(model_id, apply)
        return not surplus

    async def record_failure(self, model_id: str, instance_id: str, message: str) -> ModelRecord | None:
        now = self._now()

        def apply(cur: ModelRecord | None) -> ModelRecord | None:
            if cur is None:
                return None
            return cur.replace(
                instances={k: v for k, v in cur.instances.items() if k != instance_id},
                loaded={k: v for k, v in cur.loaded.items() if k != instance_id},
                failures={**cur.failures, instance_id: now},
                failure_messages={**cur.failure_messages, instance_id: message[:1000]},
            )

        return await self._update(model_id, apply)

    async def remove_copy(self, model_id: str, instance_id: str, last_used: int = 0) -> ModelRecord | None:
        """Drop this instance's copy (eviction, unload, runtime loss); pushes its last use into ``lu``."""
        now = self._now()

        def apply(cur: ModelRecord | None) -> ModelRecord | None:
            if cur is None or instance_id not in cur.instances:
                return cur
            return cur.replace(
                instances={k: v for k, v in cur.instances.items() if k != instance_id},
                loaded={k: v for k, v in cur.loaded.items() if k != instance_id},
                last_used=max(cur.last_used, last_used),
                last_unload=now,
            )

        return await self._update(model_id, apply)

    async def remove_instances(self, model_id: str, dead: set[str]) -> ModelRecord | None:
        """Reaper: remove copies held by instances that no longer exist."""

        def apply(cur: ModelRecord | None) -> ModelRecord | None:
            if cur is None or not (dead & set(cur.instances)):
                return cur
            return cur.replace(
                instances={k: v for k, v in cur.instances.items() if k not in dead},
                loaded={k: v for k, v in cur.loaded.items() if k not in dead},
            )

        return await self._update(model_id, apply)

    async def expire_failures(self, model_id: str, expiry_ms: int) -> ModelRecord | None:
        now = self._now()

        def apply(cur: ModelRecord | None) -> ModelRecord | None:
            if cur is None:
                return None
            keep = cur.recent_failures(now, expiry_ms)
            if len(keep) == len(cur.failures):
                return cur
            return cur.replace(
                failures=keep, failure_messages={k: v for k, v in cur.failure_messages.items() if k in keep}
            )

        return await self._update(model_id, apply)

    async def touch(self, model_id: str, last_used: int) -> ModelRecord | None:
        def apply(cur: ModelRecord | None) -> ModelRecord | None:
            if cur is None or cur.last_used >= last_used:
                return cur
            return cur.replace(last_used=last_used)

        return await self._update(model_id, apply)

    # ---- helpers for mesh.cluster.vmodels (the only writer of ``refs``)
    def new_record(
        self, spec: ModelSpec, *, load_now: bool, auto_delete: bool = False, last_used: int = 0
    ) -> ModelRecord:
        """The record ``register`` would create for ``spec`` (with ``auto_delete``), for a caller that writes
        it itself inside a multi-key txn (a vmodel created together with its target model)."""
        now = self._now()
        if not last_used:
            last_used = now - (LAST_USED_AGE_ON_ADD_LOADNOW_MS if load_now else LAST_USED_AGE_ON_ADD_MS)
        return ModelRecord(
            type=spec.type,
            path=spec.path,
            key=spec.key,
            last_used=last_used,
            registered_at=now,
            min_copies=spec.min_copies,
            max_copies=spec.max_copies,
            auto_delete=auto_delete,
            owner=spec.owner,
            size_override=spec.size_override,
        )

    async def delete_if_orphaned(self, model_id: str) -> bool:
        """Unregister ``model_id`` iff it is ``autoDel`` and no vmodel references it. True if deleted."""
        removed: list[bool] = []

        def apply(cur: ModelRecord | None) -> ModelRecord | None:
            removed.clear()
            if cur is None or not cur.auto_delete or cur.refs > 0:
                return cur
            removed.append(True)
            return None

        await self._update(model_id, apply)
        return bool(removed)


class LocalCopyRecords:
    """The registry side of this pod's loads (``mesh.local.loader.LoadHooks``): claim, loaded, failed,
    released, always for this pod's own instance id. ``alive`` gives the live pods whose claims count."""

    def __init__(self, registry: Registry, instance_id: str, alive: Callable[[], Collection[str]]) -> None:
        self.registry = registry
        self.instance_id = instance_id
        self.alive = alive

    async def claim(self, model_id: str, *, exclusive: bool, unreachable: frozenset[str]) -> None:
        alive = self.alive()
        if unreachable:
            alive = {i for i in alive if i not in unreachable}
        await self.registry.claim(model_id, self.instance_id, exclusive=exclusive, alive=alive)

    async def loaded(self, model_id: str, *, last_used: int, size: int) -> None:
        await self.registry.mark_loaded(model_id, self.instance_id, last_used, size=size)

    async def failed(self, model_id: str, cause: str) -> None:
        await self.registry.record_failure(model_id, self.instance_id, cause)

    async def released(self, model_id: str, *, last_used: int) -> None:
        await self.registry.remove_copy(model_id, self.instance_id, last_used)
