"""VModels: owns ``vmodels/<vModelId>`` and is the only writer of ``ModelRecord.refs``.

A vmodel is an alias (``VModelRecord``: owner ``o``, active ``amid``, target ``tmid``, ``failed``) that the
data plane resolves to its *active* model from the watch-fed table (``Router.resolve_model_id``). Moving it to
a new model is a transition (ModelMesh ``VModelManager``, modelmesh.md §1.1):

1. ``setVModel`` writes ``target = new`` (active unchanged, so traffic keeps going to the old model) and
   ``refs(new) += 1`` in one etcd txn, then loads the target through the ``Placer``.
2. Once the target has a LOADED copy, one txn writes ``active = target`` and ``refs(old) -= 1``. An
   ``autoDel`` model whose refs reach 0 is unregistered shortly after (``AUTO_DELETE_GRACE_S``, so pods whose
   vmodels view lags their registry view by a few events never route to a model that just vanished).
3. If the target cannot be loaded (LOADING_FAILED everywhere it was tried), ``failed`` is set
   (TRANSITION_FAILED) and the old active model keeps serving until a new ``setVModel``.

Why refs live in the model records and change only in the same txn as the vmodel record: a model may be
unregistered only while no vmodel points at it (``Registry.unregister`` refuses while refs > 0), and that
check must never see a vmodel write without its matching refs write. The invariant kept by every txn here:
``refs(m)`` = number of vmodels whose ``{active, target}`` contains ``m``. Each change is a pure plan on the
vmodel record (``plan_set``, ``plan_complete``, ``plan_fail``, ``plan_delete``); ``ref_deltas`` derives the
refs changes from the old and new record, and ``_commit`` applies both with compare-and-swap on every key's
mod_revision, re-reading and re-planning on conflict. The plans are pure functions in
``mesh.cluster.vmodel_plans``; the transaction goes through ``mesh.kv.table.commit_all`` (keys from the
tables, which take them from ``mesh.kv.keys``); the protobuf answers are built by the API layer.

Who advances transitions: the pod that received ``setVModel`` starts a driver task, and the leader runs a
driver for every pending transition it sees (on vmodel changes, on becoming leader and every
``interval_s``), so a pod dying mid-transition leaves nothing stuck. Drivers wake on registry changes of
their target (a copy becoming LOADED completes the transition at once). Two drivers for the same transition
are harmless: loads are single-claimed by the loader and every commit re-plans on the current record.

Owner semantics: set and delete on a vmodel with a non-empty owner require the same owner
(FAILED_PRECONDITION otherwise); a vmodel without an owner takes the first one given. ``getVModelStatus``
with a non-matching, non-empty owner answers NOT_FOUND (as ModelMesh does); an empty owner reads any vmodel.

Choices where ModelMesh is silent or differs: a transition completes on the first LOADED copy of the target
(ModelMesh's docs say "scaled out to the same degree", its code also waits for one copy); autoDel models are
unregistered just after the txn that drops their last ref, not inside it; ``modelInfo`` naming an already
registered target with different type/path/key fails with ALREADY_EXISTS (like registerModel), and
``autoDeleteTargetModel`` only applies to a target this call creates; TRANSITION_FAILED stays until the next
``setVModel`` (same target = retry, the active model as target = cancel).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.cluster.availability import Availability
from mesh.cluster.registry import ModelSpec, Registry
from mesh.cluster.status import LOADED, LOADING, LOADING_FAILED, NOT_FOUND, ModelStatus
from mesh.cluster.view import ViewHolder
from mesh.cluster.vmodel_plans import (
    SetRequest,
    is_pending,
    plan_complete,
    plan_delete,
    plan_fail,
    plan_set,
    ref_deltas,
)
from mesh.errors import AlreadyExists, KvConflict, MeshError, ModelNotFound
from mesh.kv.client import KvClient
from mesh.kv.records import ModelRecord, VModelRecord
from mesh.kv.table import CasWrite, Table, commit_all
from mesh.tasks import TaskSupervisor, wait_event

log = logging.getLogger(__name__)

#: A ``sync`` setVModel waits at most this long for the transition (ModelMesh: 4 minutes).
SYNC_WAIT_S = 240.0
#: Delay between a model's refs reaching 0 and its auto-deletion (see the module docstring).
AUTO_DELETE_GRACE_S = 1.0
#: Load attempts (each one a full placement round) before a transition is marked failed.
MAX_LOAD_ATTEMPTS = 3
#: Multi-key txn attempts before giving up with KvConflict.
MAX_TXN_ATTEMPTS = 16
#: Driver re-check period while the target is loading (events usually wake it sooner).
RECHECK_S = 1.0

#: Loads a model (sync or not) on behalf of a vmodel (the management API's load path).
LoadModel = Callable[[str, bool, int], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class SetOptions:
    """The rest of ``SetVModelRequest``: what to create and load along with the vmodel change."""

    create: ModelSpec | None = None  # modelInfo: register the target with this spec if absent
    auto_delete: bool = False
    load_now: bool = False
    sync: bool = False


# ---------------------------------------------------------------------------------------------------------


class VModels:
    def __init__(
        self,
        views: ViewHolder,
        *,
        kv: KvClient,
        table: Table[VModelRecord],
        registry: Registry,
        availability: Availability,
        status_of: Callable[[str], ModelStatus],
        load: LoadModel,
        tasks: TaskSupervisor,
        interval_s: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self.views = views
        self._kv = kv
        self.table = table
        self.registry = registry
        self.availability = availability
        self._status_of = status_of
        self._load = load
        self.tasks = tasks
        self.interval_s = interval_s
        self.clock = clock
        self._rng = rng or random.Random()
        self._kick = asyncio.Event()
        self._drivers: dict[str, tuple[str, asyncio.Task[None]]] = {}  # vmodel id -> (target, task)
        self._waiters: dict[str, asyncio.Event] = {}  # target model id -> woken on its registry changes
        self._orphans_seen: dict[str, float] = {}  # autoDel model with refs 0 -> first seen (monotonic)
        table.add_listener(self._on_vmodel_change)
        registry.table.add_listener(self._on_model_change)

    # ---- management API

    async def set_vmodel(
        self, req: SetRequest, options: SetOptions
    ) -> tuple[VModelRecord | None, VModelRecord]:
        """Apply ``setVModel``: the record change and its refs in one txn, then drive the transition (or load
        the new active model). Returns (old, new) records; with ``options.sync`` it returns once the
        transition is done (or ``SYNC_WAIT_S`` passed)."""
        create: ModelRecord | None = None
        if options.create is not None:
            create = self.registry.new_record(
                options.create, load_now=options.load_now, auto_delete=options.auto_delete
            )
        old, new = await self._commit(
            req.vmodel_id, lambda cur: plan_set(cur, req), create={req.target: create}
        )
        assert new is not None
        if old is not None and old.target != new.target and old.target != new.active:
            log.info("vmodel %s: abandoned transition to %s for %s", req.vmodel_id, old.target, new.target)
        if is_pending(new):
            task = self._drive(req.vmodel_id, new.target)
            if options.sync:
                await asyncio.wait({task}, timeout=SYNC_WAIT_S)
        elif options.load_now or (old is not None and old.active != new.active):
            # A new vmodel with loadNow, or a forced switch: the (new) active model should be loaded.
            last_used = self.clock.now_ms() - (0 if old is not None else 3_600_000)
            await self._load(new.active, options.sync, last_used)
        return old, new

    async def delete_vmodel(self, vmodel_id: str, owner: str) -> None:
        """Delete the vmodel and its refs (no effect if missing); autoDel models left unreferenced go too."""
        _, new = await self._commit(vmodel_id, lambda cur: plan_delete(cur, owner))
        if new is None:
            self._cancel_driver(vmodel_id)

    def get(self, vmodel_id: str, owner: str) -> VModelRecord | None:
        """The vmodel as ``getVModelStatus`` sees it: absent for a non-matching owner (as ModelMesh)."""
        rec = self.views.current.vmodel(vmodel_id)
        if rec is not None and owner and rec.owner != owner:
            return None
        return rec

    # ---- the one write path: vmodel record + refs in one txn

    async def _commit(
        self,
        vmodel_id: str,
        plan: Callable[[VModelRecord | None], VModelRecord | None],
        *,
        create: dict[str, ModelRecord | None] | None = None,
    ) -> tuple[VModelRecord | None, VModelRecord | None]:
        """Apply ``plan`` to the vmodel record and the refs it implies in one txn (CAS on every key).

        Reads are strong (a stale cache must not decide NOT_FOUND or an owner check). On conflict everything
        is re-read and re-planned. ``create`` holds records for models that may be created in the same txn if
        absent (setVModel with modelInfo). Returns (old, new) vmodel records.
        """
        registry = self.registry
        for attempt in range(MAX_TXN_ATTEMPTS):
            cur = await self.table.get_strong(vmodel_id)
            new = plan(cur)
            if new is cur:
                return cur, cur
            deltas = ref_deltas(cur, new)
            ids = sorted(deltas)
            records = await asyncio.gather(*(registry.get_strong(m) for m in ids))
            writes: list[CasWrite] = [
                CasWrite(self.table, vmodel_id, new, cur.revision if cur is not None else 0)
            ]
            orphans: list[str] = []
            for model_id, rec in zip(ids, records, strict=True):
                delta = deltas[model_id]
                spec = (create or {}).get(model_id)
                if rec is None:
                    if delta < 0:
                        continue  # already gone; nothing to release
                    if spec is None:
                        raise ModelNotFound(model_id)
                    updated, expected = spec.replace(refs=delta), 0
                else:
                    if spec is not None and (rec.type, rec.path, rec.key) != (spec.type, spec.path, spec.key):
                        raise AlreadyExists(
                            f"model '{model_id}' is already registered with different info "
                            f"(type={rec.type!r}, path={rec.path!r})"
                        )
                    updated, expected = rec.replace(refs=max(0, rec.refs + delta)), rec.revision
                if updated.refs == 0 and updated.auto_delete:
                    orphans.append(model_id)
                writes.append(CasWrite(registry.table, model_id, updated, expected))
            if await commit_all(self._kv, writes):
                if orphans:
                    self.tasks.spawn(f"mesh:vmodel-autodel:{vmodel_id}", self._auto_delete(orphans))
                log.info("vmodel %s: %s -> %s", vmodel_id, _describe(cur), _describe(new))
                return cur, new
            await asyncio.sleep(self._rng.uniform(0, 0.01 * (attempt + 1)))
        raise KvConflict(f"update of vmodel '{vmodel_id}' lost {MAX_TXN_ATTEMPTS} compare-and-swaps in a row")

    async def _auto_delete(self, model_ids: list[str]) -> None:
        await asyncio.sleep(AUTO_DELETE_GRACE_S)
        for model_id in model_ids:
            try:
                if await self.registry.delete_if_orphaned(model_id):
                    log.info("auto-deleted model %s (no vmodel references it any more)", model_id)
            except MeshError as exc:
                log.info("auto-delete of %s postponed: %s", model_id, exc.message)

    # ---- transitions

    def _drive(self, vmodel_id: str, target: str) -> asyncio.Task[None]:
        """The running driver of this transition on this pod, started if needed."""
        running = self._drivers.get(vmodel_id)
        if running is not None and running[0] == target and not running[1].done():
            return running[1]
        if running is not None:
            running[1].cancel()
        task = self.tasks.spawn(f"mesh:vmodel:{vmodel_id}", self._advance(vmodel_id, target))
        self._drivers[vmodel_id] = (target, task)

        def done(t: asyncio.Task[None]) -> None:
            if self._drivers.get(vmodel_id, (None, None))[1] is t:
                del self._drivers[vmodel_id]
            if not t.cancelled() and t.exception() is not None:
                exc = t.exception()
                log.warning(
                    "vmodel %s: transition driver failed: %s", vmodel_id, getattr(exc, "message", exc)
                )

        task.add_done_callback(done)
        return task

    def _cancel_driver(self, vmodel_id: str) -> None:
        running = self._drivers.pop(vmodel_id, None)
        if running is not None:
            running[1].cancel()

    async def _advance(self, vmodel_id: str, target: str) -> None:
        """Load ``target`` and complete the transition once it has a LOADED copy, or mark it failed."""
        attempts = 0
        last_error = ""
        waiter = self._waiters.setdefault(target, asyncio.Event())
        try:
            while True:
                rec = self.views.current.vmodel(vmodel_id)
                if not is_pending(rec) or rec.target != target:  # type: ignore[union-attr]
                    return
                waiter.clear()
                status = self._status_of(target)
                if status.status == LOADED:
                    await self._commit(vmodel_id, lambda cur: plan_complete(cur, target))
                    return
                if status.status == LOADING:
                    await wait_event(waiter, RECHECK_S)
                    continue
                if status.status == NOT_FOUND and await self.registry.get_strong(target) is not None:
                    # The registry and vmodels views are fed by separate watches: a vmodel event can arrive
                    # before the event that created its target. The strong read refreshed the view.
                    continue
                if status.status == NOT_FOUND or attempts >= MAX_LOAD_ATTEMPTS:
                    log.warning(
                        "vmodel %s: transition to %s failed: %s",
                        vmodel_id,
                        target,
                        last_error or "; ".join(status.errors) or status.status,
                    )
                    await self._commit(vmodel_id, lambda cur: plan_fail(cur, target))
                    return
                attempts += 1
                try:
                    await self.availability.ensure_loaded(target, last_used=self.clock.now_ms())
                except MeshError as exc:
                    last_error = exc.message
                    if not exc.retryable:
                        attempts = MAX_LOAD_ATTEMPTS
                # A remote load's outcome (LOADED, or its failure record) reaches this pod's registry view
                # through the watch: give it time before judging the status again.
                waiter.clear()
                if self._status_of(target).status not in (LOADED, LOADING_FAILED):
                    await wait_event(waiter, RECHECK_S)
        finally:
            me = asyncio.current_task()
            if all(t != target for t, task in self._drivers.values() if task is not me):
                self._waiters.pop(target, None)

    # ---- listeners and the leader loop

    def _on_vmodel_change(self, vmodel_id: str, old: VModelRecord | None, new: VModelRecord | None) -> None:
        running = self._drivers.get(vmodel_id)
        if (
            running is not None
            and (new is None or new.target != running[0] or new.failed)
            and running[1] is not asyncio.current_task()
        ):
            running[1].cancel()  # deleted, retargeted or failed elsewhere: this driver's transition is moot
        if is_pending(new):
            self._kick.set()

    def _on_model_change(self, model_id: str, old: ModelRecord | None, new: ModelRecord | None) -> None:
        waiter = self._waiters.get(model_id)
        if waiter is not None:
            waiter.set()

    def kick(self) -> None:
        """Run the leader's check now (e.g. this pod just became leader)."""
        self._kick.set()

    async def leader_check(self, is_leader: Callable[[], bool]) -> None:
        """Leader duties, run every ``interval_s`` and on ``kick``: drive every pending transition; unregister
        autoDel models left unreferenced for longer than ``2 * AUTO_DELETE_GRACE_S`` (the pod that dropped
        their last ref may have died before deleting them)."""
        if not is_leader():
            self._orphans_seen.clear()
            return
        for vmodel_id, rec in list(self.table.snapshot().items()):
            if is_pending(rec):
                self._drive(vmodel_id, rec.target)
        await self._sweep_orphans()

    def start(self, is_leader: Callable[[], bool]) -> None:
        self.tasks.every(
            "mesh:vmodels", self.interval_s, lambda: self.leader_check(is_leader), kick=self._kick
        )

    async def _sweep_orphans(self) -> None:
        now = self.clock.monotonic()
        orphans = {m for m, r in self.registry.items().items() if r.auto_delete and r.refs == 0}
        self._orphans_seen = {m: self._orphans_seen.get(m, now) for m in orphans}
        for model_id, since in sorted(self._orphans_seen.items()):
            if now - since < 2 * AUTO_DELETE_GRACE_S:
                continue
            if await self.registry.delete_if_orphaned(model_id):
                log.info("leader: auto-deleted unreferenced model %s", model_id)


def _describe(rec: VModelRecord | None) -> str:
    if rec is None:
        return "(none)"
    return (
        f"{rec.active}"
        + (f"=>{rec.target}" if rec.target != rec.active else "")
        + (" [failed]" if rec.failed else "")
    )
