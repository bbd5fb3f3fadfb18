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
mod_revision, re-reading and re-planning on conflict.

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
from collections.abc import Callable
from dataclasses import dataclass

from mesh.cluster.placer import Placer
from mesh.cluster.registry import ModelSpec, Registry
from mesh.cluster.status import LOADED, LOADING, LOADING_FAILED, NOT_FOUND, ModelStatus
from mesh.cluster.view import ClusterView
from mesh.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidRequest,
    KvConflict,
    MeshError,
    ModelNotFound,
)
from mesh.ids import check_id
from mesh.kv.client import KvClient
from mesh.kv.records import ModelRecord, VModelRecord
from mesh.kv.table import Table
from mesh.local.loader import now_ms
from protos.mmesh import model_mesh_pb2 as pb

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

DEFINED = "DEFINED"
TRANSITIONING = "TRANSITIONING"
TRANSITION_FAILED = "TRANSITION_FAILED"
VNOT_FOUND = "NOT_FOUND"


# ---------------------------------------------------------------------------------------------------------
# Pure plans: functions of records, no I/O


@dataclass(frozen=True, slots=True)
class SetRequest:
    """The parts of ``SetVModelRequest`` that decide the new vmodel record."""

    vmodel_id: str
    target: str
    owner: str = ""
    update_only: bool = False
    expected_target: str = ""
    force: bool = False


def check_owner(vmodel_id: str, cur: VModelRecord | None, owner: str) -> None:
    if cur is not None and cur.owner and cur.owner != owner:
        raise FailedPrecondition(
            f"vmodel '{vmodel_id}' is owned by '{cur.owner}', not by '{owner}'"
            if owner
            else f"vmodel '{vmodel_id}' is owned by '{cur.owner}'; the request names no owner"
        )


def plan_set(cur: VModelRecord | None, req: SetRequest) -> VModelRecord:
    """The vmodel record after ``setVModel`` (``cur`` itself when nothing changes). Raises on owner
    mismatch, expectedTargetModelId mismatch and updateOnly of a missing vmodel."""
    check_owner(req.vmodel_id, cur, req.owner)
    if req.expected_target and (cur is None or cur.target != req.expected_target):
        actual = f"'{cur.target}'" if cur is not None else "none (the vmodel does not exist)"
        raise FailedPrecondition(
            f"vmodel '{req.vmodel_id}' target is {actual}, not the expected '{req.expected_target}'"
        )
    if cur is None:
        if req.update_only:
            raise ModelNotFound(req.vmodel_id, kind="vmodel")
        # Nothing else to serve: the new model is active at once, loaded or not.
        return VModelRecord(owner=req.owner, active=req.target, target=req.target)
    # Same target clears ``failed`` (retry); the active model as target abandons a pending transition.
    new = cur.replace(owner=cur.owner or req.owner, target=req.target, failed=False)
    if req.force:
        new = new.replace(active=new.target)
    return cur if new == cur else new


def plan_complete(cur: VModelRecord | None, target: str) -> VModelRecord | None:
    """Switch traffic to ``target`` if the vmodel is still transitioning to it."""
    if cur is None or cur.target != target or cur.active == target:
        return cur
    return cur.replace(active=target, failed=False)


def plan_fail(cur: VModelRecord | None, target: str) -> VModelRecord | None:
    """Mark the transition to ``target`` failed (the active model keeps serving)."""
    if cur is None or cur.target != target or cur.active == target or cur.failed:
        return cur
    return cur.replace(failed=True)


def plan_delete(vmodel_id: str, cur: VModelRecord | None, owner: str) -> None:
    check_owner(vmodel_id, cur, owner)
    return None


def referenced(rec: VModelRecord | None) -> set[str]:
    """Models a vmodel record holds a ref on (active and target, once each)."""
    if rec is None:
        return set()
    return {m for m in (rec.active, rec.target) if m}


def ref_deltas(old: VModelRecord | None, new: VModelRecord | None) -> dict[str, int]:
    """refs changes that keep ``refs(m) = #vmodels referencing m`` when ``old`` becomes ``new``."""
    before, after = referenced(old), referenced(new)
    deltas = {m: -1 for m in before - after}
    deltas.update({m: 1 for m in after - before})
    return deltas


def is_pending(rec: VModelRecord | None) -> bool:
    return rec is not None and rec.active != rec.target and not rec.failed


def vmodel_status(rec: VModelRecord | None) -> str:
    if rec is None:
        return VNOT_FOUND
    if rec.active == rec.target:
        return DEFINED
    return TRANSITION_FAILED if rec.failed else TRANSITIONING


# ---------------------------------------------------------------------------------------------------------


class VModels:
    def __init__(
        self,
        view: ClusterView,
        *,
        kv: KvClient | None = None,
        table: Table[VModelRecord] | None = None,
        registry: Registry | None = None,
        placer: Placer | None = None,
        status_of: Callable[[str], ModelStatus] | None = None,
        interval_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.view = view
        self._kv = kv
        self.table = table
        self.registry = registry
        self.placer = placer
        self._status_of = status_of
        self.interval_s = interval_s
        self._rng = rng or random.Random()
        self._kick = asyncio.Event()
        self._drivers: dict[str, tuple[str, asyncio.Task[None]]] = {}  # vmodel id -> (target, task)
        self._tasks: set[asyncio.Task] = set()
        self._waiters: dict[str, asyncio.Event] = {}  # target model id -> woken on its registry changes
        self._orphans_seen: dict[str, float] = {}  # autoDel model with refs 0 -> first seen (loop time)
        if table is not None:
            table.add_listener(self._on_vmodel_change)
        if registry is not None:
            registry.table.add_listener(self._on_model_change)

    # ---- management API

    async def set_vmodel(self, request: pb.SetVModelRequest, api) -> pb.VModelStatusInfo:
        vmodel_id = check_id(request.vModelId, what="vmodel id")
        target = check_id(request.targetModelId, what="target model id")
        if request.expectedTargetModelId:
            check_id(request.expectedTargetModelId, what="expected target model id")
        req = SetRequest(
            vmodel_id=vmodel_id,
            target=target,
            owner=request.owner,
            update_only=request.updateOnly,
            expected_target=request.expectedTargetModelId,
            force=request.force,
        )
        create: ModelRecord | None = None
        if request.HasField("modelInfo"):
            info = request.modelInfo
            if not info.type:
                raise InvalidRequest("modelInfo.type must not be empty")
            create = self._registry().new_record(
                ModelSpec(type=info.type, path=info.path, key=info.key),
                load_now=request.loadNow,
                auto_delete=request.autoDeleteTargetModel,
            )
        old, new = await self._commit(vmodel_id, lambda cur: plan_set(cur, req), create={target: create})
        assert new is not None
        if old is not None and old.target != new.target and old.target != new.active:
            log.info("vmodel %s: abandoned transition to %s for %s", vmodel_id, old.target, new.target)
        if is_pending(new):
            task = self._drive(vmodel_id, new.target)
            if request.sync:
                await asyncio.wait({task}, timeout=SYNC_WAIT_S)
        elif request.loadNow or (old is not None and old.active != new.active):
            # A new vmodel with loadNow, or a forced switch: the (new) active model should be loaded.
            last_used = now_ms() - (0 if old is not None else 3_600_000)
            await api.load_and_status(new.active, sync=request.sync, last_used=last_used)
        return self.status_proto(vmodel_id, request.owner, api)

    async def delete_vmodel(self, vmodel_id: str, owner: str) -> None:
        """Delete the vmodel and its refs (no effect if missing); autoDel models left unreferenced go too."""
        await self._commit(vmodel_id, lambda cur: plan_delete(vmodel_id, cur, owner))
        self._cancel_driver(vmodel_id)

    def status_proto(self, vmodel_id: str, owner: str, api) -> pb.VModelStatusInfo:
        rec = self.view.vmodel(vmodel_id)
        if rec is not None and owner and rec.owner != owner:
            rec = None  # ModelMesh answers NOT_FOUND to a non-matching owner
        if rec is None:
            return pb.VModelStatusInfo(status=pb.VModelStatusInfo.NOT_FOUND)
        from mesh.api.model_mesh import to_proto

        return pb.VModelStatusInfo(
            status=pb.VModelStatusInfo.VModelStatus.Value(vmodel_status(rec)),
            activeModelId=rec.active,
            targetModelId=rec.target,
            owner=rec.owner,
            activeModelStatus=to_proto(api.status_of(rec.active)) if rec.active else None,
            targetModelStatus=to_proto(api.status_of(rec.target)) if rec.target else None,
        )

    # ---- the one write path: vmodel record + refs in one txn

    def _registry(self) -> Registry:
        if self.registry is None or self.table is None or self._kv is None:
            raise MeshError("vmodels are not wired to etcd in this process")
        return self.registry

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
        registry = self._registry()
        assert self.table is not None and self._kv is not None
        vkey = self.table.prefix + vmodel_id
        for attempt in range(MAX_TXN_ATTEMPTS):
            cur = await self.table.get_strong(vmodel_id)
            new = plan(cur)
            if new is cur:
                return cur, cur
            deltas = ref_deltas(cur, new)
            ids = sorted(deltas)
            records = await asyncio.gather(*(registry.get_strong(m) for m in ids))
            ops: list[tuple[str, bytes | None, int]] = [
                (vkey, new.to_json() if new is not None else None, cur.revision if cur is not None else 0)
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
                ops.append((registry.table.prefix + model_id, updated.to_json(), expected))
            if await self._kv.txn_cas(ops):
                await asyncio.gather(self.table.get_strong(vmodel_id), *(registry.get_strong(m) for m in ids))
                if orphans:
                    self._track(self._auto_delete(orphans), f"mesh:vmodel-autodel:{vmodel_id}")
                log.info("vmodel %s: %s -> %s", vmodel_id, _describe(cur), _describe(new))
                return cur, new
            await asyncio.sleep(self._rng.uniform(0, 0.01 * (attempt + 1)))
        raise KvConflict(f"update of vmodel '{vmodel_id}' lost {MAX_TXN_ATTEMPTS} compare-and-swaps in a row")

    async def _auto_delete(self, model_ids: list[str]) -> None:
        await asyncio.sleep(AUTO_DELETE_GRACE_S)
        for model_id in model_ids:
            try:
                if await self._registry().delete_if_orphaned(model_id):
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
        task = asyncio.get_running_loop().create_task(
            self._advance(vmodel_id, target), name=f"mesh:vmodel:{vmodel_id}"
        )
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
        assert self.placer is not None and self._status_of is not None
        attempts = 0
        last_error = ""
        waiter = self._waiters.setdefault(target, asyncio.Event())
        try:
            while True:
                rec = self.view.vmodel(vmodel_id)
                if not is_pending(rec) or rec.target != target:  # type: ignore[union-attr]
                    return
                waiter.clear()
                status = self._status_of(target)
                if status.status == LOADED:
                    await self._commit(vmodel_id, lambda cur: plan_complete(cur, target))
                    return
                if status.status == LOADING:
                    await _wait(waiter, RECHECK_S)
                    continue
                if status.status == NOT_FOUND and await self._registry().get_strong(target) is not None:
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
                    await self.placer.ensure_loaded(target, last_used=now_ms())
                except MeshError as exc:
                    last_error = exc.message
                    if not exc.retryable:
                        attempts = MAX_LOAD_ATTEMPTS
                # A remote load's outcome (LOADED, or its failure record) reaches this pod's registry view
                # through the watch: give it time before judging the status again.
                waiter.clear()
                if self._status_of(target).status not in (LOADED, LOADING_FAILED):
                    await _wait(waiter, RECHECK_S)
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

    async def run(self, is_leader: Callable[[], bool]) -> None:
        """Leader duties: drive every pending transition; unregister autoDel models left unreferenced for
        longer than ``2 * AUTO_DELETE_GRACE_S`` (the pod that dropped their last ref may have died before
        deleting them). Cancelling this task also stops every driver and auto-delete this object started."""
        try:
            while True:
                try:
                    await asyncio.wait_for(self._kick.wait(), timeout=self.interval_s)
                except TimeoutError:
                    pass
                self._kick.clear()
                if not is_leader() or self.table is None:
                    self._orphans_seen.clear()
                    continue
                try:
                    for vmodel_id, rec in list(self.table.items().items()):
                        if is_pending(rec):
                            self._drive(vmodel_id, rec.target)
                    await self._sweep_orphans()
                except MeshError as exc:
                    log.info("vmodels leader check failed: %s", exc.message)
                except Exception:
                    log.exception("vmodels leader check failed")
        finally:
            await self.close()

    async def _sweep_orphans(self) -> None:
        registry = self._registry()
        now = asyncio.get_running_loop().time()
        orphans = {m for m, r in registry.items().items() if r.auto_delete and r.refs == 0}
        self._orphans_seen = {m: self._orphans_seen.get(m, now) for m in orphans}
        for model_id, since in sorted(self._orphans_seen.items()):
            if now - since < 2 * AUTO_DELETE_GRACE_S:
                continue
            if await registry.delete_if_orphaned(model_id):
                log.info("leader: auto-deleted unreferenced model %s", model_id)

    def _track(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        tasks = [t for _, t in self._drivers.values()] + list(self._tasks)
        self._drivers.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout=timeout)
    except TimeoutError:
        pass


def _describe(rec: VModelRecord | None) -> str:
    if rec is None:
        return "(none)"
    return (
        f"{rec.active}"
        + (f"=>{rec.target}" if rec.target != rec.active else "")
        + (" [failed]" if rec.failed else "")
    )
