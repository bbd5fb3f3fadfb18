"""loadtests.sim: traces (generator, CSV), the simulated mesh's accounting, and the offline lower bound."""

from __future__ import annotations

import numpy as np
import pytest

from loadtests.sim.bound import lower_bound
from loadtests.sim.engine import GIB, SimConfig, SimMesh
from loadtests.sim.runner import compulsory_s
from loadtests.sim.trace import (
    Catalog,
    CatalogSpec,
    Trace,
    TraceSpec,
    generate,
    make_catalog,
    read_csv,
    write_csv,
)

MB = 1 << 20


def _small_spec(**kw) -> TraceSpec:
    base = dict(models=2_000, seconds=600.0, rps=20.0, zipf_s=1.0, day_s=600.0, rollouts=20, bursts=2, seed=3)
    base.update(kw)
    return TraceSpec(**base)


def test_generator_is_seeded_sorted_and_zipf_shaped() -> None:
    a, b = generate(_small_spec()), generate(_small_spec())
    assert np.array_equal(a.t_ms, b.t_ms) and np.array_equal(a.model, b.model)
    assert np.all(np.diff(a.t_ms) >= 0) and a.t_ms[-1] < 600_000
    counts = np.bincount(a.model, minlength=len(a.catalog))
    top = np.sort(counts)[::-1]
    assert top[0] > 20 * np.median(top[top > 0])  # a heavy head
    assert len(a) == pytest.approx(20 * 600, rel=0.15)
    other = generate(_small_spec(seed=4))
    assert not np.array_equal(a.model[:100], other.model[:100])


def test_rollouts_bring_new_models() -> None:
    trace = generate(_small_spec(rollouts=50, initial_share=0.9))
    newcomers = trace.model >= int(2_000 * 0.9)
    assert newcomers.any() and trace.t_ms[newcomers].min() > 0


def test_catalog_distributions() -> None:
    cat = make_catalog(20_000, seed=1)
    size_mb = cat.size / MB
    assert 40 < np.median(size_mb) < 100 and np.percentile(size_mb, 99) > 1_000
    per_byte = cat.load_ms / cat.size
    assert np.percentile(per_byte, 90) / np.percentile(per_byte, 10) > 10  # cost per byte varies a lot
    assert set(cat.types) == {"sklearn", "xgboost", "onnx", "pytorch", "llm"}


def test_csv_round_trip_and_errors(tmp_path) -> None:
    trace = generate(_small_spec(seconds=60.0))
    path = tmp_path / "t.csv"
    write_csv(trace, path)
    back = read_csv(path)
    assert np.array_equal(back.t_ms, trace.t_ms - trace.t_ms[0])
    assert [back.catalog.ids[m] for m in back.model] == [trace.catalog.ids[m] for m in trace.model]
    for m in set(back.model.tolist()):
        orig = trace.catalog.index()[back.catalog.ids[m]]
        assert back.catalog.size[m] == trace.catalog.size[orig]
        assert back.catalog.load_ms[m] == trace.catalog.load_ms[orig]
    # minimal form: unordered, no sizes (drawn from the catalog law, seeded by id), comments
    (tmp_path / "min.csv").write_text("# hand-written\n5000,b\n0,a\n2500,a\n")
    t = read_csv(tmp_path / "min.csv")
    assert t.t_ms.tolist() == [0, 2500, 5000] and [t.catalog.ids[m] for m in t.model] == ["a", "a", "b"]
    assert read_csv(tmp_path / "min.csv").catalog.size.tolist() == t.catalog.size.tolist()
    for bad, msg in [("x,a\n", "integer"), ("1,a,5\n", "expected"), ("1,\n", "empty"), ("1,a,0,5\n", "> 0")]:
        (tmp_path / "bad.csv").write_text(bad)
        with pytest.raises(ValueError, match=msg):
            read_csv(tmp_path / "bad.csv")


def _tiny_trace() -> Trace:
    spec = _small_spec(models=500, seconds=900.0, rps=10.0)
    return generate(spec, make_catalog(500, spec.seed, CatalogSpec(size_cap=512 * MB)))


@pytest.mark.parametrize("policy", ["lru", "cost"])
def test_simulation_accounting(policy: str) -> None:
    trace = _tiny_trace()
    cfg = SimConfig(pods=6, capacity=4 * GIB, policy=policy, warmup_s=0.0)
    sim = SimMesh(cfg, trace)
    sim.run()
    r = sim.result()
    assert r["requests"] == len(trace)
    assert r["hit_local"] + r["hit_forwarded"] + r["waited"] + r["failed"] == r["requests"]
    assert r["failed"] == 0
    assert r["forwards"] == sum(r["routed"].values()) - r["routed"]["load"]
    # every load was claimed and marked loaded once; every copy that left was removed once
    w = r["etcd_writes_by_kind"]
    assert w["claim"] == w["loaded"] == r["loads"] == sum(r["loads_by_cause"].values())
    assert w["remove"] == r["evictions"] + r["copies_removed"]
    # caches within capacity; registry agrees with the caches
    for pod in sim.pods:
        assert pod.cache.used <= pod.cache.capacity
        assert pod.busy == 0 and not pod.queue
        # the record the simulator publishes is the one Pod._instance_record would build
        rec = sim._build(pod)
        assert rec.lru_time == (pod.cache.oldest_last_used() or 0)
        assert rec.loads_in_progress == pod.cache.loading_count() and rec.count == len(pod.cache)
    held = {(p.id, e.model_id) for p in sim.pods for e in p.cache.entries()}
    claimed = {(i, m) for m, rec in sim.registry.items().items() for i in rec.instances}
    assert held == claimed
    assert len(sim.wait_ms) == r["waited"]
    # at least one request per distinct model had to wait for its first load
    assert r["loads"] >= trace.meta["distinct_models"]
    assert r["load_s"] >= compulsory_s(trace, 0) - 1e-6


def test_simulation_is_deterministic() -> None:
    trace = _tiny_trace()
    runs = []
    for _ in range(2):
        sim = SimMesh(SimConfig(pods=6, capacity=2 * GIB, policy="cost"), trace)
        sim.run()
        runs.append(sim.result())
    assert runs[0] == runs[1]


def test_warmup_is_not_measured() -> None:
    trace = _tiny_trace()
    sim = SimMesh(SimConfig(pods=6, capacity=2 * GIB, warmup_s=300.0), trace)
    sim.run()
    r = sim.result()
    assert r["requests"] == int((trace.t_ms >= 300_000).sum())


def test_proactive_loads_fill_spare_room_without_evicting() -> None:
    trace = _tiny_trace()
    sim = SimMesh(SimConfig(pods=6, capacity=2 * GIB, proactive=True, proactive_interval_s=5.0), trace)
    evicted_by_proactive = []
    orig = sim._start_load

    def watch(pod, model_id, now, **kw):
        before = {e.model_id for e in pod.cache.entries()}
        ok = orig(pod, model_id, now, **kw)
        if kw.get("cause") == "proactive":
            evicted_by_proactive.extend(before - {e.model_id for e in pod.cache.entries()})
        return ok

    sim._start_load = watch
    sim.run()
    r = sim.result()
    assert r["loads_by_cause"]["proactive"] > 0
    assert evicted_by_proactive == []


def _fixed_trace(events: list[tuple[int, int]], sizes: list[int], loads: list[int]) -> Trace:
    n = len(sizes)
    cat = Catalog([f"m{i}" for i in range(n)], ["t"] * n, np.array(sizes), np.array(loads))
    t = np.array([e[0] for e in events], dtype=np.int64)
    m = np.array([e[1] for e in events], dtype=np.int32)
    return Trace("fixed", t, m, cat, float(t[-1]) / 1000 + 1)


def test_bound_is_compulsory_when_everything_fits() -> None:
    trace = _fixed_trace([(0, 0), (1_000, 1), (5_000, 0), (9_000, 1)], [10, 10], [100, 300])
    b = lower_bound(trace, capacity_bytes=20, bucket_s=1)
    assert b.compulsory_s == pytest.approx(0.4) and b.capacity_s == pytest.approx(0.0, abs=1e-9)


def test_bound_pays_the_cheaper_reload_when_only_one_fits() -> None:
    # a and b alternate; only one fits: the LP keeps the expensive one and reloads the cheap one
    events = [(0, 0), (1_000, 1), (10_000, 0), (11_000, 1), (20_000, 0), (21_000, 1)]
    trace = _fixed_trace(events, [10, 10], [5_000, 100])
    b = lower_bound(trace, capacity_bytes=10, bucket_s=1)
    assert b.compulsory_s == pytest.approx(5.1)
    assert b.capacity_s == pytest.approx(0.2, rel=0.05)  # the cheap model reloaded twice


def test_bound_with_warmup_counts_only_the_window() -> None:
    events = [(0, 0), (1_000, 1), (10_000, 0), (11_000, 1), (12_000, 2)]
    trace = _fixed_trace(events, [10, 10, 10], [5_000, 100, 700])
    b = lower_bound(trace, capacity_bytes=30, bucket_s=1, measure_from_ms=5_000)
    assert b.compulsory_s == pytest.approx(0.7)  # only m2 is new in the window
    assert b.capacity_s == pytest.approx(0.0, abs=1e-9)  # m0 and m1 can be held from the window's start
    assert compulsory_s(trace, 5_000) == pytest.approx(0.7)


def test_bound_is_below_both_policies_on_a_small_trace() -> None:
    trace = _tiny_trace()
    cfg = SimConfig(pods=4, capacity=4 * GIB)
    b = lower_bound(trace, cfg.pods * cfg.capacity, bucket_s=60, pod_capacity=cfg.capacity)
    for policy in ("lru", "cost"):
        sim = SimMesh(SimConfig(pods=4, capacity=4 * GIB, policy=policy), trace)
        sim.run()
        assert b.total_s <= sim.result()["load_s"]


def test_copy_scaling_adds_and_removes_copies_through_decide_copies() -> None:
    trace = _tiny_trace()
    sim = SimMesh(SimConfig(pods=6, capacity=4 * GIB, rpm_threshold=10, extra_copy_idle_s=60.0), trace)
    sim.run()
    r = sim.result()
    assert r["loads_by_cause"]["copy"] > 0 and r["copies_removed"] > 0
    assert r["etcd_writes_by_kind"]["remove"] == r["evictions"] + r["copies_removed"]
    multi = {m for m, rec in sim.registry.items().items() if len(rec.instances) > 1}
    assert multi == sim.multi
