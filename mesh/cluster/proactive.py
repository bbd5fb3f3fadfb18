"""Proactive loading: which unloaded models the leader loads into spare cluster capacity (pure policy).

ModelMesh's reaper "fills spare capacity" (modelmesh.md §3.5); this is that rule as a pure function, no I/O
and no clock (time is passed in), so the leader's periodic task and the simulator run the same code:

  * candidates are models with no live copy, fewer than ``max_failures`` recent load failures, and a last
    use (``lu``, pushed into the record by every eviction) within ``max_age_ms``: recently evicted models
    that were in use; the most recently used first (ModelMesh's order), smaller first on ties;
  * a pod takes proactive loads only into the free space above a reserve of ``reserve_fraction`` of its
    capacity, and only ``fill_fraction`` of that per run (ModelMesh: half of the free space above 12.5 %), so
    room for request-driven loads is always left; shutting-down pods and pods with ``busy_loads`` or more
    loads in progress are skipped;
  * at most ``max_cluster_fraction`` of the cluster's capacity (5 %) and ``max_loads`` loads per run;
  * the pod for each model is chosen by the placement policy (``choose_load_target``) among the pods whose
    budget holds the model, with each planned load counted against its pod;
  * it never evicts: the caller loads with ``LocalCache.reserve(..., evict=False)`` and the model's own
    ``lu`` as its last-used time, so a load that finds the room gone fails instead of displacing anything.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mesh.cluster.placement import TypeConstraints, choose_load_target
from mesh.kv.records import InstanceRecord, ModelRecord


@dataclass(frozen=True, slots=True)
class ProactiveRules:
    reserve_fraction: float = 0.125
    fill_fraction: float = 0.5
    max_cluster_fraction: float = 0.05
    max_age_ms: int = 3_600_000
    max_failures: int = 2
    max_loads: int = 50
    busy_loads: int = 2


@dataclass(frozen=True, slots=True)
class ProactiveLoad:
    model_id: str
    target: str
    size: int
    last_used: int


def plan_proactive_loads(
    candidates: Iterable[tuple[str, ModelRecord]],
    instances: Mapping[str, InstanceRecord],
    *,
    now: int,
    default_size: int,
    failure_expiry_ms: int,
    rules: ProactiveRules = ProactiveRules(),
    constraints: TypeConstraints | None = None,
    rng: random.Random | None = None,
) -> list[ProactiveLoad]:
    """The loads to start now (module docstring). ``candidates`` may be every model record; callers that
    already track unloaded models may pass only those."""
    budget: dict[str, int] = {}
    for iid, rec in instances.items():
        if rec.shutting_down or rec.loads_in_progress >= rules.busy_loads or rec.capacity <= 0:
            continue
        spare = rec.capacity - rec.used - int(rules.reserve_fraction * rec.capacity)
        if spare > 0:
            budget[iid] = int(spare * rules.fill_fraction)
    cluster_budget = int(rules.max_cluster_fraction * sum(r.capacity for r in instances.values()))
    if not budget or cluster_budget <= 0:
        return []
    oldest = now - rules.max_age_ms
    wanted: list[tuple[int, int, str, ModelRecord]] = []
    for model_id, rec in candidates:
        if rec.last_used < oldest or any(i in instances for i in rec.instances):
            continue
        if len(rec.recent_failures(now, failure_expiry_ms)) >= rules.max_failures:
            continue
        wanted.append((-rec.last_used, rec.size or default_size, model_id, rec))
    wanted.sort(key=lambda w: (w[0], w[1], w[2]))
    planned: list[ProactiveLoad] = []
    pending: dict[str, tuple[int, int]] = {}  # pod -> (bytes, models) planned in this run
    for _neg_lu, size, model_id, rec in wanted:
        if len(planned) >= rules.max_loads or not budget:
            break
        if size > cluster_budget:
            continue
        fits = {}
        for iid, left in budget.items():
            if left >= size:
                extra, count = pending.get(iid, (0, 0))
                base = instances[iid]
                fits[iid] = dataclasses.replace(base, used=base.used + extra, count=base.count + count)
        if not fits:
            continue
        recent = rec.recent_failures(now, failure_expiry_ms)
        target = choose_load_target(
            fits,
            model_type=rec.type,
            size=size,
            exclude=set(recent),
            constraints=constraints,
            rng=rng or random.Random(0),
            now_ms=now,
        )
        if target is None:
            continue
        planned.append(ProactiveLoad(model_id, target, size, rec.last_used))
        budget[target] -= size
        if budget[target] <= 0:
            del budget[target]
        extra, count = pending.get(target, (0, 0))
        pending[target] = (extra + size, count + 1)
        cluster_budget -= size
    return planned
