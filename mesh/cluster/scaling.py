"""CopyScaler: how many copies each model has, decided by every pod for the models it holds.

Rules, checked every ``interval_s`` from in-memory request rates (never per request):
  * scale up by rate: a copy serving ≥ ``rpm_threshold`` requests/min asks for ⌊rpm / threshold⌋ more copies
    (at most 2 per check, never above the model's ``max_copies``), unless another copy of the model was
    loaded within the last ``guard_s`` (its effect is not measured yet) — ModelMesh §3.4;
  * second copy for models in regular use: a single-copy model requested in every tick for
    ``second_copy_after_s`` gets a second copy when the cluster has ≥ 10 % free capacity. Continuous use
    counts (ModelMesh's marker was reset by each use, so busy models never got one: its issue #151);
  * per-model minimum: fewer live copies than ``min_copies`` → add one (here and in the leader's sweep);
  * scale down slowly: an extra copy (beyond max(1, min_copies)) unused for ``extra_copy_idle_s``, or any
    extra copy below ⅓ of the threshold while this pod is full, is removed — one per check, and only by the
    holder with the most used space, so two holders never drop the same model's copies at once.
"""

from __future__ import annotations

import logging

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.cluster.availability import Availability
from mesh.cluster.view import ViewHolder
from mesh.errors import MeshError
from mesh.local.cache import EntryState, LocalCache
from mesh.local.loader import Loader
from mesh.local.stats import RequestStats

log = logging.getLogger(__name__)

MAX_ADDS_PER_CHECK = 2


class CopyScaler:
    def __init__(
        self,
        *,
        instance_id: str,
        views: ViewHolder,
        cache: LocalCache,
        stats: RequestStats,
        availability: Availability,
        loader: Loader,
        rpm_threshold: int,
        interval_s: float,
        second_copy_after_s: float,
        extra_copy_idle_s: float,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.instance_id = instance_id
        self.views = views
        self.cache = cache
        self.stats = stats
        self.availability = availability
        self.loader = loader
        self.rpm_threshold = max(10, rpm_threshold)
        self.interval_s = interval_s
        self.guard_ms = int((interval_s + 10) * 1000)
        self.second_copy_after_ms = int(second_copy_after_s * 1000)
        self.extra_copy_idle_ms = int(extra_copy_idle_s * 1000)
        self._now = clock.now_ms

    def _cluster_free_fraction(self) -> float:
        recs = self.views.current.instances.values()
        cap = sum(r.capacity for r in recs)
        return sum(r.free for r in recs) / cap if cap else 0.0

    async def run_once(self) -> None:
        now = self._now()
        view = self.views.current
        alive = view.alive()
        removed = False
        for entry in self.cache.entries():
            if entry.state is not EntryState.ACTIVE:
                continue
            rec = view.model(entry.model_id)
            if rec is None:
                continue
            live = [i for i in rec.instances if i in alive or i == self.instance_id]
            copies = len(live)
            max_copies = rec.max_copies or len(alive) or 1
            rpm = self.stats.model_rpm.get(entry.model_id, 0.0)
            recently_loaded = any(now - t < self.guard_ms for t in rec.instances.values())
            want = 0
            if rpm >= self.rpm_threshold and not recently_loaded:
                want = min(int(rpm // self.rpm_threshold), MAX_ADDS_PER_CHECK)
            elif copies < rec.min_copies and not recently_loaded:
                want = 1
            elif (
                copies == 1
                and now - self.stats.in_use_since.get(entry.model_id, now) >= self.second_copy_after_ms
                and self._cluster_free_fraction() >= 0.10
            ):
                want = 1
            want = min(want, max_copies - copies)
            if want > 0:
                await self._add(entry.model_id, entry.size, entry.last_used, set(live), want)
                continue
            floor = max(1, rec.min_copies)
            if removed or copies <= floor or entry.inflight:
                continue
            idle = now - entry.last_used > self.extra_copy_idle_ms
            squeezed = self.cache.free < self.loader.default_size and rpm < self.rpm_threshold / 3
            if (idle or squeezed) and self._is_least_desirable_holder(live):
                log.info("removing extra copy of %s (%s)", entry.model_id, "idle" if idle else "space")
                await self.loader.unload(entry.model_id, reason="extra copy " + ("idle" if idle else "space"))
                removed = True

    def _is_least_desirable_holder(self, live: list[str]) -> bool:
        instances = self.views.current.instances

        def rank(iid: str) -> tuple[int, str]:
            rec = instances.get(iid)
            return (rec.used if rec else 0, iid)

        return max(live, key=rank) == self.instance_id

    async def _add(self, model_id: str, size: int, last_used: int, holders: set[str], count: int) -> None:
        for _ in range(count):
            try:
                target = await self.availability.add_copy(
                    model_id, size=size, last_used=last_used, exclude=holders
                )
            except MeshError as exc:
                log.info("could not add a copy of %s: %s", model_id, exc.message)
                return
            if target is None:
                return
            holders.add(target)
