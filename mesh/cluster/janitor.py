"""Janitor (every pod) and Reaper (leader only): keep the registry and the caches in agreement.

Janitor, every ``interval_s``: a local copy whose record is gone is unloaded; a local copy missing from its
record is re-added (e.g. after an etcd outage or a reaper race); a record claiming a copy here that the cache
does not hold is corrected; copies idle longer than ``idle_unload_s`` (when set) are unloaded; the local
last-used time is pushed to a record when it is much newer (batched, bounded per run).

Reaper, on the leader: as soon as an instance record disappears (its lease ended), every ModelRecord that
lists it is corrected, and the same sweep runs periodically; expired failure records are removed.
"""

from __future__ import annotations

import asyncio
import logging

from mesh.cluster.registry import Registry
from mesh.cluster.view import ClusterView
from mesh.errors import MeshError
from mesh.kv.records import InstanceRecord
from mesh.local.cache import EntryState, LocalCache
from mesh.local.loader import Loader, now_ms

log = logging.getLogger(__name__)

LAST_USED_PUSH_AGE_MS = 3600 * 1000
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
        idle_unload_s: float = 0.0,
    ) -> None:
        self.instance_id = instance_id
        self.registry = registry
        self.cache = cache
        self.loader = loader
        self.interval_s = interval_s
        self.idle_unload_s = idle_unload_s

    async def run_once(self) -> None:
        me = self.instance_id
        now = now_ms()
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
                log.info("janitor: re-adding local copy of %s to its record", entry.model_id)
                await self.registry.mark_loaded(entry.model_id, me, entry.last_used)
            elif entry.last_used - rec.last_used > LAST_USED_PUSH_AGE_MS and touches < MAX_TOUCHES_PER_RUN:
                touches += 1
                await self.registry.touch(entry.model_id, entry.last_used)
        for model_id, rec in list(self.registry.items().items()):
            if me in rec.instances and model_id not in self.cache:
                log.info("janitor: removing stale claim of %s by this pod", model_id)
                await self.registry.remove_copy(model_id, me)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.run_once()
            except MeshError as exc:
                log.warning("janitor run failed: %s", exc)


class Reaper:
    def __init__(
        self, *, registry: Registry, view: ClusterView, failure_expiry_ms: int, interval_s: float
    ) -> None:
        self.registry = registry
        self.view = view
        self.failure_expiry_ms = failure_expiry_ms
        self.interval_s = interval_s
        self.is_leader = False
        self._kick = asyncio.Event()

    def on_instance_change(
        self, instance_id: str, old: InstanceRecord | None, new: InstanceRecord | None
    ) -> None:
        if new is None and old is not None:
            self._kick.set()

    async def sweep(self) -> int:
        """Remove dead instances from every record and expire old failures; returns records changed."""
        alive = self.view.alive()
        now = now_ms()
        changed = 0
        for model_id, rec in list(self.view.models().items()):
            dead = {i for i in rec.instances if i not in alive}
            if dead:
                log.info("reaper: removing dead instances %s from %s", sorted(dead), model_id)
                await self.registry.remove_instances(model_id, dead)
                changed += 1
            if len(rec.recent_failures(now, self.failure_expiry_ms)) != len(rec.failures):
                await self.registry.expire_failures(model_id, self.failure_expiry_ms)
                changed += 1
        return changed

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=self.interval_s)
            except TimeoutError:
                pass
            self._kick.clear()
            if not self.is_leader:
                continue
            try:
                await self.sweep()
            except MeshError as exc:
                log.warning("reaper sweep failed: %s", exc)
