"""CopyScaler: how many copies each model has, decided by every pod for the models it holds.

Rules, checked every ``interval_s`` from in-memory request rates (never per request):
  * scale up by rate: a copy serving ≥ ``rpm_threshold`` requests/min asks for ⌊rpm / threshold⌋ more copies
    (at most 2 per check, never above the model's ``max_copies``), unless another copy of the model was
    loaded within the last ``guard_s`` (its effect is not measured yet) — ModelMesh §3.4;
  * second copy for models in regular use: a single-copy model requested in every tick for
    ``second_copy_after_s`` gets a second copy when the cluster has ≥ 10 % free capacity. Continuous use
    counts (ModelMesh's marker was reset by each use, so busy models never got one: its issue #151);
  * per-model minimum: fewer live copies than ``min_copies`` → add one (here and in the leader's sweep);
  * never above ``max_copies``: a model with more live copies than its explicit maximum (copies made during a
    partition or an etcd outage) loses one per check (issue 12, bug 1);
  * no copies beyond what the rules justify: a model with more copies than max(1, min_copies), two when it is
    in regular use, loses one per check while its rate here is below ⅓ of the threshold and no copy was added
    within the guard time — copies a race made (a request that found no live holder in the moment between
    two pods re-publishing after an etcd outage) do not stay (issue 12, bug 4);
  * scale down slowly: an extra copy (beyond max(1, min_copies)) unused for ``extra_copy_idle_s``, or any
    extra copy below ⅓ of the threshold while this pod is full, is removed.
  Every removal is one per check, and only by the holder with the most used space, so two holders never
  drop the same model's copies at once.

The decision for one local copy is the pure function ``decide_copies`` (no I/O, time passed in), so the
simulator (``loadtests/sim``) runs exactly these rules; ``CopyScaler`` feeds it live state entry by entry and
carries out what it returns (placing copies through ``Availability.add_copy``, unloading through the Loader).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.cluster.availability import Availability
from mesh.cluster.view import ViewHolder
from mesh.errors import MeshError
from mesh.kv.records import InstanceRecord, ModelRecord
from mesh.local.cache import EntryState, LocalCache
from mesh.local.loader import Loader
from mesh.local.stats import RequestStats

log = logging.getLogger(__name__)

MAX_ADDS_PER_CHECK = 2


@dataclass(frozen=True, slots=True)
class CopyRules:
    """The thresholds of the copy rules (module docstring), in the units ``decide_copies`` compares."""

    rpm_threshold: int
    guard_ms: int
    second_copy_after_ms: int
    extra_copy_idle_ms: int

    @classmethod
    def make(
        cls, *, rpm_threshold: int, interval_s: float, second_copy_after_s: float, extra_copy_idle_s: float
    ) -> CopyRules:
        return cls(
            rpm_threshold=max(10, rpm_threshold),
            guard_ms=int((interval_s + 10) * 1000),
            second_copy_after_ms=int(second_copy_after_s * 1000),
            extra_copy_idle_ms=int(extra_copy_idle_s * 1000),
        )


@dataclass(frozen=True, slots=True)
class CopyAction:
    """Add ``add`` copies (placed away from ``holders``), or remove this pod's copy (``remove``)."""

    model_id: str
    holders: frozenset[str]
    add: int = 0
    remove: bool = False
    reason: str = ""


def cluster_free_fraction(instances: Mapping[str, InstanceRecord]) -> float:
    recs = instances.values()
    cap = sum(r.capacity for r in recs)
    return sum(r.free for r in recs) / cap if cap else 0.0


def is_least_desirable_holder(
    instance_id: str, live: list[str], instances: Mapping[str, InstanceRecord]
) -> bool:
    """True when this pod is the holder with the most used space (ties by id), the one that drops a copy."""

    def rank(iid: str) -> tuple[int, str]:
        rec = instances.get(iid)
        return (rec.used if rec else 0, iid)

    return max(live, key=rank) == instance_id


def decide_copies(
    rules: CopyRules,
    *,
    instance_id: str,
    model_id: str,
    last_used: int,
    inflight: int,
    rec: ModelRecord,
    alive: Collection[str],
    instances: Mapping[str, InstanceRecord],
    rpm: float,
    in_use_since: int | None,
    cache_free: int,
    default_size: int,
    now: int,
    may_remove: bool = True,
) -> CopyAction | None:
    """What to do about this pod's ACTIVE copy of ``model_id`` (the module docstring's rules), or None.

    ``alive``: live instance ids; ``instances``: their records (cluster free space, who holds the most);
    ``rpm``/``in_use_since``: this pod's request rate of the model and the start of its continuous use;
    ``cache_free``: this pod's free bytes; ``may_remove``: False once a copy was removed in this check.
    """
    live = [i for i in rec.instances if i in alive or i == instance_id]
    copies = len(live)
    max_copies = rec.max_copies or len(alive) or 1
    recently_loaded = any(now - t < rules.guard_ms for t in rec.instances.values())
    want = 0
    reason = ""
    if rpm >= rules.rpm_threshold and not recently_loaded:
        want = min(int(rpm // rules.rpm_threshold), MAX_ADDS_PER_CHECK)
        reason = "rate"
    elif copies < rec.min_copies and not recently_loaded:
        want = 1
        reason = "min copies"
    elif (
        copies == 1
        and now - (now if in_use_since is None else in_use_since) >= rules.second_copy_after_ms
        and cluster_free_fraction(instances) >= 0.10
    ):
        want = 1
        reason = "regular use"
    want = min(want, max_copies - copies)
    if want > 0:
        return CopyAction(model_id, frozenset(live), add=want, reason=reason)
    floor = max(1, rec.min_copies)
    if not may_remove or copies <= floor:
        return None
    if not is_least_desirable_holder(instance_id, live, instances):
        return None
    if rec.max_copies and copies > rec.max_copies:
        return CopyAction(model_id, frozenset(live), remove=True, reason="above max copies")
    if inflight:
        return None
    idle = now - last_used > rules.extra_copy_idle_ms
    quiet = rpm < rules.rpm_threshold / 3
    squeezed = cache_free < default_size and quiet
    in_regular_use = in_use_since is not None and now - in_use_since >= rules.second_copy_after_ms
    justified = max(floor, 2 if in_regular_use else 1)
    surplus = copies > justified and quiet and not recently_loaded
    if idle or squeezed or surplus:
        reason = "idle" if idle else "space" if squeezed else "surplus"
        return CopyAction(model_id, frozenset(live), remove=True, reason=reason)
    return None


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
        self.rules = CopyRules.make(
            rpm_threshold=rpm_threshold,
            interval_s=interval_s,
            second_copy_after_s=second_copy_after_s,
            extra_copy_idle_s=extra_copy_idle_s,
        )
        self.rpm_threshold = self.rules.rpm_threshold
        self.interval_s = interval_s
        self.guard_ms = self.rules.guard_ms
        self.second_copy_after_ms = self.rules.second_copy_after_ms
        self.extra_copy_idle_ms = self.rules.extra_copy_idle_ms
        self._now = clock.now_ms

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
            action = decide_copies(
                self.rules,
                instance_id=self.instance_id,
                model_id=entry.model_id,
                last_used=entry.last_used,
                inflight=entry.inflight,
                rec=rec,
                alive=alive,
                instances=view.instances,
                rpm=self.stats.model_rpm.get(entry.model_id, 0.0),
                in_use_since=self.stats.in_use_since.get(entry.model_id),
                cache_free=self.cache.free,
                default_size=self.loader.default_size,
                now=now,
                may_remove=not removed,
            )
            if action is None:
                continue
            if action.add:
                await self._add(entry.model_id, entry.size, entry.last_used, set(action.holders), action.add)
            elif action.remove:
                log.info("removing extra copy of %s (%s)", entry.model_id, action.reason)
                await self.loader.unload(entry.model_id, reason="extra copy " + action.reason)
                removed = True

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
