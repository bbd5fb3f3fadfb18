"""mesh.cluster.proactive.plan_proactive_loads: spare capacity only, most recently used first, bounded."""

from __future__ import annotations

from mesh.cluster.placement import TypeConstraints
from mesh.cluster.proactive import ProactiveRules, plan_proactive_loads
from mesh.kv.records import InstanceRecord, ModelRecord

NOW = 1_700_000_000_000
CAP = 1_000


def _plan(models: dict[str, ModelRecord], instances: dict[str, InstanceRecord], **kw):
    kw.setdefault("rules", ProactiveRules(max_cluster_fraction=1.0))
    return plan_proactive_loads(
        models.items(), instances, now=NOW, default_size=100, failure_expiry_ms=900_000, **kw
    )


def test_fills_only_half_the_room_above_the_reserve() -> None:
    instances = {"a": InstanceRecord(capacity=CAP, used=475)}  # spare above 12.5 %: 400 -> budget 200
    models = {f"m{i}": ModelRecord(type="t", last_used=NOW - i * 1_000, size=60) for i in range(10)}
    plan = _plan(models, instances)
    assert [p.model_id for p in plan] == ["m0", "m1", "m2"]  # 3 x 60 <= 200 < 4 x 60
    assert all(p.target == "a" and p.size == 60 for p in plan)
    assert [p.last_used for p in plan] == [NOW, NOW - 1_000, NOW - 2_000]


def test_full_or_busy_or_leaving_pods_get_nothing() -> None:
    models = {"m": ModelRecord(type="t", last_used=NOW, size=10)}
    assert _plan(models, {"a": InstanceRecord(capacity=CAP, used=CAP - 100)}) == []  # inside the reserve
    assert _plan(models, {"a": InstanceRecord(capacity=CAP, loads_in_progress=2)}) == []
    assert _plan(models, {"a": InstanceRecord(capacity=CAP, shutting_down=True)}) == []
    assert [p.target for p in _plan(models, {"a": InstanceRecord(capacity=CAP)})] == ["a"]


def test_candidates_are_unloaded_recent_and_not_failing() -> None:
    instances = {"a": InstanceRecord(capacity=CAP), "b": InstanceRecord(capacity=CAP)}
    models = {
        "loaded": ModelRecord(type="t", last_used=NOW, instances={"a": NOW}),
        "copy-on-dead-pod": ModelRecord(type="t", last_used=NOW, instances={"gone": NOW}),
        "stale": ModelRecord(type="t", last_used=NOW - 3_600_001),
        "failing": ModelRecord(type="t", last_used=NOW, failures={"a": NOW - 1, "b": NOW - 1}),
        "failed-once": ModelRecord(type="t", last_used=NOW - 5, failures={"a": NOW - 1}),
    }
    plan = _plan(models, instances)
    assert [p.model_id for p in plan] == ["copy-on-dead-pod", "failed-once"]
    assert plan[1].target == "b"  # not where it failed


def test_spreads_by_placement_and_counts_planned_loads() -> None:
    instances = {i: InstanceRecord(capacity=CAP) for i in "abcd"}
    models = {f"m{i}": ModelRecord(type="t", last_used=NOW - i, size=100) for i in range(20)}
    plan = _plan(models, instances)
    # each pod's budget is (1000 - 125) / 2 = 437 bytes: 4 models; planned loads count against it
    per_pod = {i: sum(1 for p in plan if p.target == i) for i in "abcd"}
    assert per_pod == {"a": 4, "b": 4, "c": 4, "d": 4}
    assert [p.model_id for p in plan] == [f"m{i}" for i in range(16)]


def test_cluster_and_count_limits() -> None:
    instances = {i: InstanceRecord(capacity=CAP) for i in "ab"}
    models = {f"m{i}": ModelRecord(type="t", last_used=NOW - i, size=10) for i in range(100)}
    assert len(_plan(models, instances, rules=ProactiveRules())) == 10  # 5 % of 2,000 bytes = 100
    assert len(_plan(models, instances, rules=ProactiveRules(max_cluster_fraction=1, max_loads=7))) == 7
    # unknown size counts as the default size
    assert _plan({"x": ModelRecord(type="t", last_used=NOW)}, instances)[0].size == 100


def test_respects_type_constraints() -> None:
    instances = {"cpu": InstanceRecord(capacity=CAP), "gpu": InstanceRecord(capacity=CAP, labels=["gpu"])}
    rules = TypeConstraints.parse('{"big": {"required": ["gpu"]}}')
    models = {"m": ModelRecord(type="big", last_used=NOW, size=10)}
    assert [p.target for p in _plan(models, instances, constraints=rules)] == ["gpu"]
