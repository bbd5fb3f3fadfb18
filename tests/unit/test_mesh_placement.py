"""mesh.cluster.placement: choose_load_target / choose_copy / TypeConstraints as table tests
(placement order after modelmesh.md §3.2)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from mesh.cluster.placement import TypeConstraints, TypeRule, choose_copy, choose_load_target
from mesh.errors import InvalidRequest
from mesh.kv.records import InstanceRecord

NOW = 1_700_000_000_000
MIN = 60_000
GB = 1 << 30


def pod(
    *,
    cap: int = 10 * GB,
    used: int = 0,
    count: int = 0,
    lru: int = 0,
    rpm: int = 0,
    labels=(),
    lip: int = 0,
    shutting_down: bool = False,
) -> InstanceRecord:
    return InstanceRecord(
        address="h:1",
        capacity=cap,
        used=used,
        count=count,
        lru_time=lru,
        rpm=rpm,
        labels=list(labels),
        loads_in_progress=lip,
        shutting_down=shutting_down,
    )


FULL = dict(cap=10 * GB, used=10 * GB - 1)  # no room for a 1 GB model

CONSTRAINTS = TypeConstraints.parse(
    '{"sklearn": {"required": ["mt:sklearn"], "preferred": ["fast"]},'
    ' "onnx": {"required": ["mt:onnx", "pv:grpc"]},'
    ' "_default": {"required": ["_no_runtime"]}}'
)


def outcomes(instances, *, seeds: int = 200, **kw) -> set[str | None]:
    kw.setdefault("model_type", "t")
    kw.setdefault("size", GB)
    kw.setdefault("exclude", set())
    return {choose_load_target(instances, rng=random.Random(seed), now_ms=NOW, **kw) for seed in range(seeds)}


CASES = [
    pytest.param({}, {}, {None}, id="no-instances"),
    pytest.param({"a": pod(shutting_down=True), "b": pod(used=5 * GB)}, {}, {"b"}, id="shutting-down"),
    pytest.param({"a": pod(shutting_down=True)}, {}, {None}, id="only-shutting-down"),
    pytest.param({"a": pod(), "b": pod(count=3)}, {"exclude": {"a"}}, {"b"}, id="excluded"),
    pytest.param({"a": pod(), "b": pod()}, {"exclude": {"a", "b"}}, {None}, id="all-excluded"),
    pytest.param(
        {"a": pod(labels=["mt:onnx"]), "b": pod(labels=["mt:sklearn", "x"])},
        {"model_type": "sklearn", "constraints": CONSTRAINTS},
        {"b"},
        id="required-label",
    ),
    pytest.param(
        {"a": pod(labels=["mt:onnx"]), "b": pod(labels=["mt:onnx", "pv:grpc"])},
        {"model_type": "onnx", "constraints": CONSTRAINTS},
        {"b"},
        id="required-all-labels",
    ),
    pytest.param(
        {"a": pod(labels=["mt:onnx"]), "b": pod(labels=["mt:sklearn"])},
        {"model_type": "tensorflow", "constraints": CONSTRAINTS},
        {None},
        id="default-rule-unsatisfied",
    ),
    pytest.param(
        {"a": pod(labels=["_no_runtime"]), "b": pod()},
        {"model_type": "tensorflow", "constraints": CONSTRAINTS},
        {"a"},
        id="default-rule",
    ),
    pytest.param(
        {"a": pod(labels=[]), "b": pod(labels=["z"])},
        {"model_type": "anything", "constraints": TypeConstraints.parse('{"sklearn": {"required": ["q"]}}')},
        {"a", "b"},
        id="no-rule-no-default",
    ),
    pytest.param(
        {"old-full": pod(lru=NOW - 600 * MIN, **FULL), "roomy": pod(count=30, used=9 * GB, lru=NOW)},
        {},
        {"roomy"},
        id="room-beats-full",
    ),
    pytest.param(
        {"many": pod(count=60), "few": pod(count=40, used=GB)},
        {},
        {"few"},
        id="fewer-models",
    ),
    pytest.param(
        {"lots": pod(count=5, used=0), "little": pod(count=5, used=int(8.5 * GB))},
        {},
        {"lots"},
        id="more-free",
    ),
    pytest.param(
        {"a": pod(count=3, used=GB), "b": pod(count=8, used=3 * GB), "c": pod(count=10, used=2 * GB)},
        {},
        {"a", "b", "c"},
        id="roomy-near-equal-shortlist",
    ),
    pytest.param(
        {
            "oldest": pod(lru=NOW - 120 * MIN, **FULL),
            "near": pod(lru=NOW - 119.5 * MIN, **FULL),  # within 45 s and within 10 % of the oldest's age
            "5-min-younger": pod(lru=NOW - 115 * MIN, **FULL),  # within 10 % but not within 45 s
            "recent": pod(lru=NOW - 60 * MIN, **FULL),
        },
        {},
        {"oldest", "near"},
        id="all-full-oldest-lru",
    ),
    pytest.param(
        {
            "a": pod(lru=NOW - 20 * MIN, **FULL),
            "b": pod(lru=NOW - 20 * MIN + 40_000, **FULL),  # 40 s younger: within 45 s and 10 % of 20 min
            "c": pod(lru=NOW - 2 * MIN, **FULL),
        },
        {},
        {"a", "b"},
        id="all-full-45s-window",
    ),
    pytest.param(
        {"a": pod(lru=NOW - 2 * MIN, **FULL), "b": pod(lru=NOW - 2 * MIN + 50_000, **FULL)},
        {},
        {"a"},
        id="all-full-outside-45s",
    ),
    pytest.param(
        {"a": pod(labels=["mt:sklearn"]), "b": pod(labels=["mt:sklearn", "fast"])},
        {"model_type": "sklearn", "constraints": CONSTRAINTS},
        {"b"},
        id="preferred-label",
    ),
    pytest.param(
        {"a": pod(labels=["mt:sklearn"]), "b": pod(labels=["mt:sklearn"])},
        {"model_type": "sklearn", "constraints": CONSTRAINTS},
        {"a", "b"},
        id="preferred-label-absent",
    ),
    pytest.param(
        {"quiet": pod(rpm=100), "busy": pod(rpm=301)},
        {},
        {"quiet"},
        id="busy-dropped",
    ),
    pytest.param(
        {"quiet": pod(rpm=100), "ok": pod(rpm=300)},
        {},
        {"quiet", "ok"},
        id="busy-threshold-inclusive",
    ),
    pytest.param(
        {"a": pod(rpm=20), "b": pod(rpm=50)},
        {},
        {"a", "b"},
        id="low-rpm-not-busy",
    ),
    pytest.param(
        {"a": pod(), "b": pod(), "failed-here": pod()},
        {"exclude": {"failed-here"}},
        {"a", "b"},
        id="failed-ids-via-exclude",
    ),
]


@pytest.mark.parametrize(("instances", "kwargs", "expected"), CASES)
def test_choose_load_target(instances, kwargs, expected) -> None:
    assert outcomes(instances, **kwargs) == expected


def test_busy_pod_dropped_next_to_idle_pods() -> None:
    assert outcomes({"idle": pod(rpm=0), "idle2": pod(rpm=10), "busy": pod(rpm=1_000)}) == {"idle", "idle2"}


def test_full_pod_without_lru_time_counts_as_newest() -> None:
    instances = {"zero": pod(lru=0, **FULL), "old": pod(lru=NOW - 60 * MIN, **FULL)}
    assert outcomes(instances) == {"old"}


def test_model_size_decides_room() -> None:
    instances = {"small-free": pod(cap=10 * GB, used=8 * GB, lru=NOW - 60 * MIN), "big-free": pod(count=50)}
    assert outcomes(instances, size=GB) == {"small-free"}  # fewer models wins while both have room
    assert outcomes(instances, size=3 * GB) == {"big-free"}


def test_random_choice_spreads_over_equal_pods() -> None:
    instances = {f"p{i}": pod(count=2, used=GB) for i in range(4)}
    rng = random.Random(42)
    picks = Counter(
        choose_load_target(instances, model_type="t", size=GB, exclude=set(), rng=rng, now_ms=NOW)
        for _ in range(800)
    )
    assert set(picks) == set(instances)
    assert min(picks.values()) > 150  # ~200 each


def test_seeded_choice_is_deterministic() -> None:
    instances = {f"p{i}": pod() for i in range(6)}
    first = [
        choose_load_target(instances, model_type="t", size=1, exclude=set(), rng=random.Random(s), now_ms=NOW)
        for s in range(20)
    ]
    second = [
        choose_load_target(instances, model_type="t", size=1, exclude=set(), rng=random.Random(s), now_ms=NOW)
        for s in range(20)
    ]
    assert first == second


def test_works_without_rng_or_constraints() -> None:
    assert choose_load_target({"a": pod()}, model_type="t", size=1, exclude=set(), now_ms=NOW) == "a"


# ---------------------------------------------------------------------------------------------------------
# TypeConstraints


def test_type_constraints_parse() -> None:
    assert TypeConstraints.parse("").rules == {}
    assert TypeConstraints.parse("  \n").rules == {}
    tc = TypeConstraints.parse('{"a": {"required": ["x", "y"]}, "_default": {"preferred": ["p"]}, "b": {}}')
    assert tc.rule("a") == TypeRule(frozenset({"x", "y"}), frozenset())
    assert tc.rule("b") == TypeRule()  # an explicit empty rule does not fall back to _default
    assert tc.rule("unknown") == TypeRule(frozenset(), frozenset({"p"}))
    assert TypeConstraints().rule("x") == TypeRule()


@pytest.mark.parametrize("text", ["{", "not json", '{"a": ', "[1, 2]", '"str"', "3", '{"a": []}', '{"a": 1}'])
def test_type_constraints_bad_json(text: str) -> None:
    with pytest.raises(InvalidRequest):
        TypeConstraints.parse(text)


# ---------------------------------------------------------------------------------------------------------
# choose_copy


def test_choose_copy_prefers_loaded() -> None:
    instances = {"a": pod(), "b": pod(), "c": pod()}
    for seed in range(50):
        rng = random.Random(seed)
        assert choose_copy(["a", "b", "c"], {"c": NOW}, instances, rng) == "c"
        assert choose_copy(["a", "b", "c"], {"b": NOW, "c": NOW}, instances, rng) in {"b", "c"}


def test_choose_copy_loading_only_takes_first_holder() -> None:
    assert choose_copy(["x", "y"], {}, {}, random.Random(0)) == "x"
    assert choose_copy([], {}, {}, random.Random(0)) is None
    assert choose_copy([], {"x": NOW}, {}, random.Random(0)) is None


def test_choose_copy_power_of_two_on_rpm() -> None:
    instances = {"hot": pod(rpm=5_000), "cool": pod(rpm=10), "warm": pod(rpm=500)}
    loaded = dict.fromkeys(instances, NOW)
    rng = random.Random(1)
    picks = Counter(choose_copy(list(instances), loaded, instances, rng) for _ in range(600))
    assert "hot" not in picks  # the busiest of three never wins a pairwise comparison
    assert picks["cool"] > picks["warm"] > 0  # cool wins 2 of 3 pairs, warm 1 of 3
    # with two, the quieter always wins
    two = {"hot": instances["hot"], "cool": instances["cool"]}
    assert {choose_copy(["hot", "cool"], loaded, two, random.Random(s)) for s in range(30)} == {"cool"}


def test_choose_copy_unknown_instance_counts_as_idle() -> None:
    instances = {"known": pod(rpm=50)}
    loaded = {"known": NOW, "unknown": NOW}
    picks = {choose_copy(["known", "unknown"], loaded, instances, random.Random(s)) for s in range(30)}
    assert picks == {"unknown"}


def _reference_choose_load_target(instances, *, model_type, size, exclude, constraints, rng, now_ms):
    """The straightforward form of the placement order (the first implementation), to check that the faster
    one chooses the same pod with the same random draws."""
    rule = constraints.rule(model_type)
    candidates = {
        i: r
        for i, r in instances.items()
        if i not in exclude and not r.shutting_down and rule.required <= set(r.labels)
    }
    if not candidates:
        return None
    roomy = {i: r for i, r in candidates.items() if r.capacity - r.used >= size}
    if roomy:
        ranked = sorted(
            roomy.items(),
            key=lambda kv: (kv[1].count, -kv[1].free, kv[1].loads_in_progress, kv[1].rpm, kv[0]),
        )
        best = ranked[0][1]
        limit = max(10, 1.25 * best.count)
        shortlist = [i for i, r in ranked if r.free >= best.free / 4 and r.count <= limit]
    else:
        ranked = sorted(
            candidates.items(),
            key=lambda kv: (kv[1].lru_time or now_ms, kv[1].loads_in_progress, kv[1].rpm, kv[0]),
        )
        best_lru = ranked[0][1].lru_time or now_ms
        window = min(45_000, (now_ms - best_lru) // 10)
        shortlist = [i for i, r in ranked if (r.lru_time or now_ms) - best_lru <= window]
    if rule.preferred:
        shortlist = [i for i in shortlist if rule.preferred & set(candidates[i].labels)] or shortlist
    min_load = max(100, min(candidates[i].rpm for i in shortlist))
    shortlist = [
        i for i in shortlist if candidates[i].rpm < 100 or candidates[i].rpm <= 3 * min_load
    ] or shortlist
    return rng.choice(shortlist)


@pytest.mark.parametrize("seed", range(30))
def test_same_choice_as_the_reference_order(seed: int) -> None:
    rng = random.Random(seed)
    constraints = TypeConstraints.parse(
        '{"g": {"required": ["gpu"], "preferred": ["fast"]}, "p": {"preferred": ["fast"]}}'
    )
    for _ in range(50):
        instances = {}
        for k in range(rng.randrange(1, 40)):
            cap = rng.choice([10, 100, 1_000])
            instances[f"p{k:02d}"] = pod(
                cap=cap,
                used=rng.randrange(0, cap + 20),  # sometimes over capacity (a resize over a full cache)
                count=rng.randrange(0, 30),
                lru=rng.choice([0, NOW - rng.randrange(0, 3_600_000)]),
                rpm=rng.choice([0, 50, 150, 400, 2_000]),
                labels=rng.sample(["gpu", "fast", "zone-a"], rng.randrange(0, 3)),
                lip=rng.randrange(0, 3),
                shutting_down=rng.random() < 0.1,
            )
        kw = dict(
            model_type=rng.choice(["g", "p", "x"]),
            size=rng.randrange(0, 200),
            exclude={f"p{rng.randrange(0, 40):02d}"},
            constraints=constraints,
            now_ms=NOW,
        )
        draw = rng.random()
        got = choose_load_target(instances, rng=random.Random(draw), **kw)
        want = _reference_choose_load_target(instances, rng=random.Random(draw), **kw)
        assert got == want
