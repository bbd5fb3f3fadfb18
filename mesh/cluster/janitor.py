"""Janitor (every pod) and Reaper (leader only): keep the registry and the caches in agreement.

Janitor, every ``interval_s``: a local copy whose record is gone is unloaded; a local copy missing from its
record (this pod was taken for dead during a partition or an etcd outage) is re-added, unless live pods
already hold enough loaded copies without it, in which case it is surplus and unloaded (``readd_copy``
decides inside the CAS); a record claiming a copy here that the cache does not hold is corrected; copies idle longer than ``idle_unload_s`` (when set) are unloaded; the local
last-used time is pushed to a record when it is much newer (batched, bounded per run).

Reaper, on the leader (``is_leader`` is asked at every sweep, so a pod that wins the election while its
session is still recovering starts leader work as soon as it is the leader in fact): as soon as an instance
record disappears (its lease ended), every ModelRecord that
lists it is corrected (seconds, not ModelMesh's 10–17 minutes), a model whose only loaded copies were on the
dead pod is loaded elsewhere at once, models below their ``min_copies`` are topped up, and expired failure
records are removed. The same sweep also runs periodically. A model is not reloaded or topped up again within
``RETRY_AFTER_S`` of the last attempt, so attempts that end at once cannot make the sweep spin; a failed
attempt brings the next sweep forward to ``RETRY_AFTER_S`` later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.cluster.availability import Availability
from mesh.cluster.placement import TypeConstraints
from mesh.cluster.proactive import plan_proactive_loads
from mesh.cluster.registry import Registry
from mesh.cluster.view import ViewHolder
from mesh.kv.records import InstanceRecord, ModelRecord
from mesh.local.cache import EntryState, LocalCache
from mesh.local.loader import Loader
from mesh.tasks import TaskSupervisor

log = logging.getLogger(__name__)

LAST_USED_PUSH_AGE_MS = 3600 * 1000
MAX_PARALLEL_RELOADS = 4
# A model whose reload or top-up was started this recently is left to a later sweep: attempts that end at once
# (the target's runtime is restarting) must not turn the sweep-on-completion kick into a busy loop.
RETRY_AFTER_S = 2.0
MAX_TOUCHES_PER_RUN = 50


class Janitor:
    def __init__(
        self,
        *,
        instance_id: str,
        registry: Registry,
        cache: LocalCache,
        loader: Loader,
        interval_s: float,
        alive: Callable[[], Collection[str]],
        idle_unload_s: float = 0.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.instance_id = instance_id
        self.alive = alive
        self.registry = registry
        self.cache = cache
        self.loader = loader
        self.interval_s = interval_s
        self.idle_unload_s = idle_unload_s
        self.clock = clock

    async def run_once(self) -> None:
        me = self.instance_id
        now = self.clock.now_ms()
        touches = 0
        for entry in self.cache.entries():
            if entry.state is not EntryState.ACTIVE:
                continue
            rec = self.registry.get(entry.model_id)
            if rec is None:
                await self.loader.unload(entry.model_id, reason="no longer registered", update_registry=False)
                continue
            if (
                self.idle_unload_s
                and now - entry.last_used > self.idle_unload_s * 1000
                and entry.inflight == 0
            ):
                await self.loader.unload(entry.model_id, reason=f"idle > {self.idle_unload_s:.0f}s")
                continue
            if me not in rec.loaded:
                if await self.registry.readd_copy(
                    entry.model_id, me, alive=self.alive(), last_used=entry.last_used
                ):
                    log.info("janitor: re-added local copy of %s to its record", entry.model_id)
                else:
                    await self.loader.unload(
                        entry.model_id, reason="surplus: placed elsewhere while this pod was gone"
                    )
            elif entry.last_used - rec.last_used > LAST_USED_PUSH_AGE_MS and touches < MAX_TOUCHES_PER_RUN:
                touches += 1
                await self.registry.touch(entry.model_id, entry.last_used)
        for model_id, rec in list(self.registry.items().items()):
            if me in rec.instances and model_id not in self.cache:
                log.info("janitor: removing stale claim of %s by this pod", model_id)
                await self.registry.remove_copy(model_id, me)


class Reaper:
    def __init__(
        self,
        *,
        registry: Registry,
        views: ViewHolder,
        failure_expiry_ms: int,
        interval_s: float,
        availability: Availability,
        tasks: TaskSupervisor,
        is_leader: Callable[[], bool],
        replace_lost: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.registry = registry
        self.views = views
        self.failure_expiry_ms = failure_expiry_ms
        self.interval_s = interval_s
        self.availability = availability
        self.tasks = tasks
        self.replace_lost = replace_lost
        self.clock = clock
        self.is_leader = is_leader
        self.kick = asyncio.Event()
        self._reloads: set[asyncio.Task] = set()
        # Models with a reload or top-up in flight: a sweep during a slow load (the new copy not claimed in the
        # registry yet) must not start a second one (issue 12: minCopies 2 ended with 3 copies).
        self._in_flight: set[str] = set()
        self._deferred = False  # work skipped at the parallel-reload bound: sweep again when a slot frees
        self._tried: dict[str, float] = {}  # model id -> when its last reload/top-up started (monotonic)
        self._retry: asyncio.Task | None = None  # a sweep due RETRY_AFTER_S after a failed attempt

    def on_instance_change(
        self, instance_id: str, old: InstanceRecord | None, new: InstanceRecord | None
    ) -> None:
        if new is None and old is not None:
            self.kick.set()

    def on_record_change(self, model_id: str, old: ModelRecord | None, new: ModelRecord | None) -> None:
        """A model that dropped below its ``min_copies`` (a copy released, a pod restarted and cleared its
        claims) is topped up at once, not at the next periodic sweep."""
        if new is None or not new.min_copies or not self.is_leader():
            return
        alive = self.views.current.alive()
        if sum(1 for i in new.instances if i in alive) < new.min_copies:
            self.kick.set()

    async def sweep(self) -> int:
        """Remove dead instances from every record, reload elsewhere the models that lost their only copies,
        top up models below their minimum copies, and expire old failures; returns records changed."""
        view = self.views.current
        alive = view.alive()
        now = self.clock.now_ms()
        changed = 0
        since = self.clock.monotonic() - RETRY_AFTER_S
        self._tried = {m: t for m, t in self._tried.items() if t > since}
        for model_id, rec in list(view.models.items()):
            dead = {i for i in rec.instances if i not in alive}
            if dead:
                log.info("reaper: removing dead instances %s from %s", sorted(dead), model_id)
                await self.registry.remove_instances(model_id, dead)
                changed += 1
                lost_loaded = bool(dead & set(rec.loaded))
                if lost_loaded and len(rec.instances) == len(dead) and self.replace_lost:
                    self._reload(model_id, rec.last_used or now)
            live = [i for i in rec.instances if i in alive]
            if rec.min_copies and len(live) < rec.min_copies:
                self._top_up(model_id, rec.min_copies - len(live), set(live))
            if len(rec.recent_failures(now, self.failure_expiry_ms)) != len(rec.failures):
                await self.registry.expire_failures(model_id, self.failure_expiry_ms)
                changed += 1
        return changed

    def _may_start(self, model_id: str) -> bool:
        """Whether a reload/top-up of ``model_id`` may start now (and, if so, note that it did)."""
        if model_id in self._in_flight:
            return False  # one in flight already (its copy may not be claimed in the registry yet)
        if model_id in self._tried:
            return False  # tried less than RETRY_AFTER_S ago: a later sweep comes back to it
        if len(self._reloads) >= MAX_PARALLEL_RELOADS:
            self._deferred = True
            return False
        self._tried[model_id] = self.clock.monotonic()
        return True

    def _reload(self, model_id: str, last_used: int) -> None:
        if not self._may_start(model_id):
            return
        log.info("reaper: %s lost its only copy with a dead pod; loading it elsewhere", model_id)
        self._track(
            model_id,
            self.availability.ensure_loaded(model_id, last_used=last_used),
            f"mesh:reload:{model_id}",
        )

    def _top_up(self, model_id: str, missing: int, holders: set[str]) -> None:
        if not self._may_start(model_id):
            return
        size = self.availability.default_size

        async def add() -> None:
            for _ in range(missing):
                target = await self.availability.add_copy(
                    model_id, size=size, last_used=self.clock.now_ms(), exclude=holders
                )
                if target is None:
                    return
                holders.add(target)

        self._track(model_id, add(), f"mesh:min-copies:{model_id}")

    def _track(self, model_id: str, coro, name: str) -> None:
        task = self.tasks.spawn(name, coro)
        self._reloads.add(task)
        self._in_flight.add(model_id)
        task.add_done_callback(lambda t: self._reload_done(t, model_id))

    def _reload_done(self, task: asyncio.Task, model_id: str) -> None:
        self._reloads.discard(task)
        self._in_flight.discard(model_id)
        if self._deferred:
            self._deferred = False
            self.kick.set()
        elif not task.cancelled() and task.exception() is not None and self._retry is None:
            # failed (e.g. the target's runtime was restarting): sweep again once it may be tried again,
            # rather than at the next periodic sweep (max(5 s, lease TTL))
            self._retry = self.tasks.spawn("mesh:reaper-retry", self._kick_after(RETRY_AFTER_S))

    async def _kick_after(self, delay_s: float) -> None:
        try:
            await asyncio.sleep(delay_s)
            self.kick.set()
        finally:
            self._retry = None

    async def sweep_if_leader(self) -> None:
        if self.is_leader():
            await self.sweep()


MAX_PARALLEL_FILLS = 4


class SpareFiller:
    """The leader's proactive loads (``MM_PROACTIVE_LOADING``, off by default): recently used models with no
    copy are loaded into spare room (``mesh.cluster.proactive.plan_proactive_loads`` decides which and where;
    ``Availability.fill`` loads without evicting and loses to any concurrent claim). At most
    ``MAX_PARALLEL_FILLS`` in flight; nothing happens while etcd is lost."""

    def __init__(
        self,
        *,
        views: ViewHolder,
        availability: Availability,
        tasks: TaskSupervisor,
        is_leader: Callable[[], bool],
        kv_healthy: Callable[[], bool],
        failure_expiry_ms: int,
        constraints: TypeConstraints,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.views = views
        self.availability = availability
        self.tasks = tasks
        self.is_leader = is_leader
        self.kv_healthy = kv_healthy
        self.failure_expiry_ms = failure_expiry_ms
        self.constraints = constraints
        self.clock = clock
        self._in_flight: set[asyncio.Task] = set()

    async def run_once(self) -> int:
        """Start the planned loads; returns how many started."""
        if not self.is_leader() or not self.kv_healthy() or len(self._in_flight) >= MAX_PARALLEL_FILLS:
            return 0
        view = self.views.current
        plans = plan_proactive_loads(
            view.models.items(),
            view.instances,
            now=self.clock.now_ms(),
            default_size=self.availability.default_size,
            failure_expiry_ms=self.failure_expiry_ms,
            constraints=self.constraints,
        )
        started = 0
        for plan in plans[: MAX_PARALLEL_FILLS - len(self._in_flight)]:
            task = self.tasks.spawn(
                f"mesh:fill:{plan.model_id}",
                self.availability.fill(plan.model_id, plan.target, last_used=plan.last_used),
            )
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            started += 1
        if started:
            log.info("leader: proactive loads of %d model(s) into spare room", started)
        return started
