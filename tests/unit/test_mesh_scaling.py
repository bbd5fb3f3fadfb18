"""mesh.cluster.scaling.decide_copies: the copy rules as a pure function (table of cases)."""

from __future__ import annotations

from mesh.cluster.scaling import CopyRules, cluster_free_fraction, decide_copies
from mesh.kv.records import InstanceRecord, ModelRecord

NOW = 1_700_000_000_000
RULES = CopyRules.make(rpm_threshold=2000, interval_s=10, second_copy_after_s=420, extra_copy_idle_s=600)
OLD = NOW - 3_600_000


def _instances(**used: int) -> dict[str, InstanceRecord]:
    return {iid: InstanceRecord(capacity=100, used=u) for iid, u in used.items()}


def _decide(rec: ModelRecord, *, me: str = "a", instances=None, **kw):
    instances = instances if instances is not None else _instances(a=50, b=50, c=50)
    args = dict(
        instance_id=me,
        model_id="m",
        last_used=NOW - 1_000,
        inflight=0,
        rec=rec,
        alive=set(instances),
        instances=instances,
        rpm=0.0,
        in_use_since=None,
        cache_free=50,
        default_size=10,
        now=NOW,
    )
    args.update(kw)
    return decide_copies(RULES, **args)


def test_rules_make() -> None:
    assert RULES == CopyRules(
        rpm_threshold=2000, guard_ms=20_000, second_copy_after_ms=420_000, extra_copy_idle_ms=600_000
    )
    assert (
        CopyRules.make(
            rpm_threshold=1, interval_s=1, second_copy_after_s=1, extra_copy_idle_s=1
        ).rpm_threshold
        == 10
    )


def test_rate_adds_copies_capped_per_check_and_by_max_copies() -> None:
    one = ModelRecord(instances={"a": OLD})
    act = _decide(one, rpm=4500)
    assert (act.add, act.reason, act.holders) == (2, "rate", frozenset({"a"}))
    assert _decide(one, rpm=9000).add == 2  # at most 2 per check
    assert _decide(ModelRecord(instances={"a": OLD}, max_copies=2), rpm=9000).add == 1
    assert _decide(ModelRecord(instances={"a": OLD, "b": OLD}, max_copies=2), rpm=9000) is None
    # a copy loaded within the guard: its effect is not measured yet
    assert _decide(ModelRecord(instances={"a": OLD, "b": NOW - 5_000}), rpm=9000) is None


def test_min_copies_and_regular_use() -> None:
    act = _decide(ModelRecord(instances={"a": OLD}, min_copies=2))
    assert (act.add, act.reason) == (1, "min copies")
    act = _decide(ModelRecord(instances={"a": OLD}), in_use_since=NOW - 420_000)
    assert (act.add, act.reason) == (1, "regular use")
    assert _decide(ModelRecord(instances={"a": OLD}), in_use_since=NOW - 419_000) is None
    # regular use needs >= 10 % free in the cluster
    full = _instances(a=95, b=95, c=95)
    assert _decide(ModelRecord(instances={"a": OLD}), in_use_since=OLD, instances=full) is None
    assert cluster_free_fraction(full) < 0.1


def test_dead_holders_do_not_count() -> None:
    act = _decide(ModelRecord(instances={"a": OLD, "gone": OLD}), in_use_since=OLD)
    assert act.add == 1 and act.holders == frozenset({"a"})


def test_removal_idle_or_squeezed_only_by_the_fullest_holder_once() -> None:
    two = ModelRecord(instances={"a": OLD, "b": OLD})
    insts = _instances(a=80, b=50, c=10)
    idle = NOW - 600_001
    act = _decide(two, instances=insts, last_used=idle)
    assert act.remove and act.reason == "idle"
    assert _decide(two, me="b", instances=insts, last_used=idle) is None  # b is not the fullest holder
    assert _decide(two, instances=insts, last_used=idle, may_remove=False) is None
    assert _decide(two, instances=insts, last_used=idle, inflight=1) is None
    act = _decide(two, instances=insts, cache_free=5, rpm=100)
    assert act.remove and act.reason == "space"
    assert _decide(two, instances=insts, cache_free=5, rpm=700) is None  # busy copy stays
    # never below max(1, min_copies)
    assert _decide(ModelRecord(instances={"a": OLD}), instances=insts, last_used=idle) is None
    assert (
        _decide(ModelRecord(instances={"a": OLD, "b": OLD}, min_copies=2), instances=insts, last_used=idle)
        is None
    )


def test_copies_beyond_what_the_rules_justify_go() -> None:
    """A second copy nothing asked for (a race during an etcd outage: issue 12, bug 4) is removed by the fullest
    holder while the model is quiet here; one in regular use, a busy one, or one just added stays."""
    two = ModelRecord(instances={"a": OLD, "b": OLD})
    insts = _instances(a=80, b=50, c=10)
    act = _decide(two, instances=insts)  # used a second ago, but quiet and not in regular use
    assert act.remove and act.reason == "surplus"
    assert _decide(two, me="b", instances=insts) is None  # only the fullest holder acts
    assert _decide(two, instances=insts, in_use_since=NOW - 420_000) is None  # regular use: two are right
    assert _decide(two, instances=insts, rpm=700) is None  # not quiet (>= threshold / 3)
    just_added = ModelRecord(instances={"a": OLD, "b": NOW - 5_000})
    assert _decide(just_added, instances=insts) is None  # its effect is not measured yet
    three = ModelRecord(instances={"a": OLD, "b": OLD, "c": OLD})
    act = _decide(three, instances=insts, in_use_since=NOW - 420_000)
    assert act.remove and act.reason == "surplus"  # regular use justifies two, not three


def test_max_copies_is_enforced_whatever_the_use() -> None:
    """More live copies than an explicit max_copies (made during a partition: issue 12, bug 1): one goes per
    check even while the model is busy and in regular use, by the fullest holder."""
    over = ModelRecord(instances={"a": OLD, "b": OLD, "c": OLD}, max_copies=2)
    insts = _instances(a=80, b=50, c=10)
    act = _decide(over, instances=insts, rpm=5000, in_use_since=OLD, inflight=3)
    assert act.remove and act.reason == "above max copies"
    assert _decide(over, me="c", instances=insts, rpm=5000) is None
    at_max = ModelRecord(instances={"a": OLD, "b": OLD}, max_copies=2)
    assert _decide(at_max, instances=insts, rpm=700, in_use_since=OLD) is None
