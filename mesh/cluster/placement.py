"""Placement policy: which pod loads a model that is loaded nowhere (pure functions, no I/O, no clock).

Order of preference, after ModelMesh's PLACEMENT_ORDER (modelmesh.md §3.2), simplified where noted:
  1. not shutting down; satisfies the type's required labels; not excluded; no recent failure of this model;
  2. has room for the model without evicting ("not full") over full;
  3. among full pods: the oldest LRU time first (evict the globally least recently used model);
  4. among pods with room: fewer models, then more free space;
  5. then fewer loads in progress, then lower request rate.
A shortlist of near-equal pods is kept (full: LRU within 45 s and within 10 % of the best's age; with room:
free ≥ ¼ of the best's and count ≤ max(10, 1.25 × best's); ModelMesh: count < 10 or ≤ 1.25×), pods carrying the type's preferred labels win,
busy pods (rpm ≥ 100 and > 3 × max(100, the quietest's rpm)) are dropped, and one is chosen at random, so that
concurrent misses spread instead of piling onto one pod whose published record is a few seconds old.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.errors import InvalidRequest
from mesh.kv.records import InstanceRecord


@dataclass(frozen=True, slots=True)
class TypeRule:
    required: frozenset[str] = frozenset()
    preferred: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class TypeConstraints:
    """``MM_TYPE_CONSTRAINTS`` JSON: {"<type>": {"required": [...], "preferred": [...]}, "_default": {...}}."""

    rules: dict[str, TypeRule] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> TypeConstraints:
        if not text.strip():
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"type constraints are not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidRequest("type constraints must be a JSON object")
        rules = {}
        for model_type, rule in data.items():
            if not isinstance(rule, dict):
                raise InvalidRequest(f"type constraint for {model_type!r} must be an object")
            rules[model_type] = TypeRule(
                frozenset(rule.get("required", ())), frozenset(rule.get("preferred", ()))
            )
        return cls(rules)

    def rule(self, model_type: str) -> TypeRule:
        return self.rules.get(model_type) or self.rules.get("_default") or TypeRule()


def eligible(
    instances: Mapping[str, InstanceRecord],
    *,
    model_type: str,
    exclude: set[str],
    constraints: TypeConstraints,
) -> dict[str, InstanceRecord]:
    rule = constraints.rule(model_type)
    if not rule.required:
        return {iid: rec for iid, rec in instances.items() if iid not in exclude and not rec.shutting_down}
    return {
        iid: rec
        for iid, rec in instances.items()
        if iid not in exclude and not rec.shutting_down and rule.required <= set(rec.labels)
    }


def choose_load_target(
    instances: Mapping[str, InstanceRecord],
    *,
    model_type: str,
    size: int,
    exclude: set[str],
    constraints: TypeConstraints | None = None,
    rng: random.Random | None = None,
    now_ms: int,
    full_spread: int = 1,
    busy_loads: int = 0,
) -> str | None:
    """The instance that should load a model of ``size`` bytes, or None if no pod qualifies.

    ``full_spread`` (≥ 1): when every pod is full, the shortlist holds at least this many of the oldest-LRU
    pods, not only those within the LRU window. ``busy_loads`` (0 = off): pods publishing at least this
    many loads in progress leave the shortlist while another remains. Both spread bursts of misses that
    would otherwise pile onto the one pod whose published LRU time is oldest (see docs/benchmarks.md,
    "Simulator"); the defaults keep ModelMesh's order.
    """
    constraints = constraints or TypeConstraints()
    rng = rng or random.Random()
    rule = constraints.rule(model_type)
    required = rule.required
    # One pass per branch over the pods, building plain tuples (no per-comparison lambdas, no property calls,
    # no intermediate dicts): this runs on every miss, for every live pod. The instance id makes keys total.
    roomy = [
        (r.count, r.used - r.capacity if r.used < r.capacity else 0, r.loads_in_progress, r.rpm, i)
        for i, r in instances.items()
        if r.capacity - r.used >= size
        and i not in exclude
        and not r.shutting_down
        and (not required or required <= set(r.labels))
    ]
    if roomy:
        roomy.sort()
        best_count, best_neg_free = roomy[0][0], roomy[0][1]
        limit = max(10, 1.25 * best_count)
        quarter = -best_neg_free / 4
        # (id, rpm, loads in progress)
        shortlist = [(k[4], k[3], k[2]) for k in roomy if -k[1] >= quarter and k[0] <= limit]
    else:
        full = sorted(
            (r.lru_time or now_ms, r.loads_in_progress, r.rpm, i)
            for i, r in instances.items()
            if i not in exclude and not r.shutting_down and (not required or required <= set(r.labels))
        )
        if not full:
            return None
        best_lru = full[0][0]
        window = min(45_000, (now_ms - best_lru) // 10)
        shortlist = [(k[3], k[2], k[1]) for k in full if k[0] - best_lru <= window]
        if len(shortlist) < full_spread:
            shortlist = [(k[3], k[2], k[1]) for k in full[:full_spread]]
    if busy_loads > 0:
        shortlist = [c for c in shortlist if c[2] < busy_loads] or shortlist
    if rule.preferred:
        preferred = [c for c in shortlist if rule.preferred & set(instances[c[0]].labels)]
        shortlist = preferred or shortlist
    min_load = max(100, min(c[1] for c in shortlist))
    busy = 3 * min_load
    shortlist = [c for c in shortlist if c[1] < 100 or c[1] <= busy] or shortlist
    return rng.choice(shortlist)[0]


def choose_copy(
    holders: list[str], loaded: Mapping[str, int], instances: Mapping[str, InstanceRecord], rng: random.Random
) -> str | None:
    """Pick a copy to forward to: a loaded copy at random (weighted towards lower rpm), else the oldest loading."""
    ready = [h for h in holders if h in loaded]
    if ready:
        if len(ready) == 1:
            return ready[0]
        a, b = rng.sample(ready, 2)  # power of two choices on published rpm
        return a if instances.get(a, InstanceRecord()).rpm <= instances.get(b, InstanceRecord()).rpm else b
    return holders[0] if holders else None
