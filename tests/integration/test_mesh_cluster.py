"""Several pods, one cache: real etcd, three `mesh serve` processes, each with its own built-in runtime."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import numpy as np
import pytest

from mesh.client import MeshClientError
from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)

SCALING_ARGS = (
    "--stats-tick-s", "1",
    "--scale-check-interval-s", "1",
    "--scaleup-rpm-threshold", "120",
    "--extra-copy-idle-s", "4",
    "--second-copy-after-s", "600",
)  # fmt: skip


def many_models(samples):  # noqa: F811
    return [m for m in samples["models"] if m["group"] == "many"]


def infer(client, sample, model_id=None):
    inp = sample["input"]
    data = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
    out = client.infer(model_id or sample["id"], {inp["name"]: data})
    want = sample["expected"]["predict"]["data"]
    np.testing.assert_allclose(np.asarray(out["predict"]).ravel(), want, rtol=1e-4, atol=1e-5)
    return out


def copies(client, model_id, state="LOADED"):
    return [c["location"] for c in client.status(model_id)["copies"] if c["status"] == state]


@pytest.fixture(scope="module")
def cluster(etcd_server, samples):  # noqa: F811
    c = make_cluster(etcd_server.endpoint, samples, pods=3, capacity=220_000, extra=SCALING_ARGS)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def test_requests_to_any_pod_reach_the_model_loaded_once(cluster, samples):  # noqa: F811
    models = many_models(samples)[:18]
    admin = cluster.client(0)
    for m in models:
        admin.register(m["id"], m["type"], m["path"])
    clients = [cluster.client(i) for i in range(3)]
    for round_ in range(3):
        for i, m in enumerate(models):
            infer(clients[(i + round_) % 3], m)
    holders = {m["id"]: copies(admin, m["id"]) for m in models}
    assert all(len(h) == 1 for h in holders.values()), holders
    # the working set (18 models) is larger than one pod's cache but fits the cluster: used across pods,
    # and nothing was evicted
    used_pods = {h[0] for h in holders.values()}
    assert len(used_pods) >= 2, holders
    evictions = sum(cluster.metric(i, "modelmesh_age_at_eviction_milliseconds_count") for i in range(3))
    assert evictions == 0
    forwarded = sum(cluster.metric(i, "modelmesh_requests_routed_total", 'route="forward"') for i in range(3))
    assert forwarded > 0
    status = admin.cluster_status()
    assert len(status["instances"]) == 3


def test_failing_model_is_tried_elsewhere_then_reported_failed(cluster):
    c = cluster.client(1)
    c.register("broken", "sklearn", "sklearn/no-such-model")
    with pytest.raises(MeshClientError) as err:
        c.infer("broken", [[1.0, 2.0, 3.0, 4.0]])
    assert "no-such-model" in err.value.message
    st = c.status("broken")
    assert st["status"] == "LOADING_FAILED"
    failed_on = {x["location"] for x in st["copies"] if x["status"] == "LOADING_FAILED"}
    assert len(failed_on) == 3, st
    # further requests fail fast with the recorded cause, without new loads
    loads_before = sum(cluster.metric(i, "modelmesh_loadmodel_failure_total") for i in range(3))
    with pytest.raises(MeshClientError) as err:
        cluster.client(2).infer("broken", [[1.0, 2.0, 3.0, 4.0]])
    assert "no-such-model" in err.value.message
    assert sum(cluster.metric(i, "modelmesh_loadmodel_failure_total") for i in range(3)) == loads_before


def test_hot_model_gains_copies_and_loses_them_when_cold(cluster, samples):  # noqa: F811
    hot, capped = many_models(samples)[30], many_models(samples)[31]
    admin = cluster.client(0)
    admin.register(hot["id"], hot["type"], hot["path"])
    admin.register(capped["id"], capped["type"], capped["path"], max_copies=1)  # just as hot, but capped
    infer(admin, hot)
    infer(admin, capped)
    stop = threading.Event()
    errors: list[Exception] = []

    def drive(i):
        c = cluster.client(i)
        while not stop.is_set():
            for m in (hot, capped):
                try:
                    infer(c, m)
                except Exception as exc:  # a failed request fails the test below
                    errors.append(exc)
            time.sleep(0.05)

    threads = [threading.Thread(target=drive, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(
            lambda: len(copies(admin, hot["id"])) >= 2, timeout=60, what="a second copy of the hot model"
        )
        time.sleep(3)  # several more scaling checks at the same rate
        assert len(copies(admin, capped["id"])) + len(copies(admin, capped["id"], "LOADING")) == 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    wait_for(lambda: len(copies(admin, hot["id"])) == 1, timeout=60, what="extra copies removed when cold")


def test_oldest_lru_pod_takes_the_load_when_all_are_full(etcd_server, samples):  # noqa: F811
    models = many_models(samples)
    # "full" = no room for a model of the default size; 40 kB is above any remainder left after evictions
    # of these ~16-25 kB models, so both pods are unambiguously full once filled
    with make_cluster(
        etcd_server.endpoint, samples, pods=2, capacity=120_000, extra=("--default-model-size", "40000")
    ) as c2:
        admin = c2.client(0)
        for m in models:
            admin.register(m["id"], m["type"], m["path"])
        # fill both pods until neither has room for another model (as published in their records)
        i = 0
        while i < len(models) - 5:
            infer(c2.client(i % 2), models[i])
            i += 1
            if i % 4 == 0 and _all_full(admin, 20_000):
                break
        wait_for(lambda: _all_full(admin, 20_000), timeout=15, what="both pods full")
        loaded = {m["id"]: copies(admin, m["id"]) for m in models[:i]}
        on = {p: [mid for mid, h in loaded.items() if f"pod-{p}" in h] for p in range(2)}
        # use every model on pod-1 again: pod-0 now holds the globally least recently used models
        time.sleep(2.5)
        for mid in on[1]:
            infer(admin, samples["by_id"][mid])
        wait_for(
            lambda: _lru_ages(admin)["pod-0"] > _lru_ages(admin)["pod-1"] + 1000,
            timeout=30,
            what="published LRU times",
        )
        new = models[i + 1]
        infer(c2.client(1), new)
        assert copies(admin, new["id"]) == ["pod-0"]


def _all_full(client, size):
    pods = client.cluster_status(include_models=False)["instances"]
    return all(p["capacity_bytes"] - p["used_bytes"] < size for p in pods)


def _lru_ages(client):
    return {
        p["instance_id"]: p["lru_age_ms"] for p in client.cluster_status(include_models=False)["instances"]
    }


def _driver(cluster, model, indexes, stop, errors, counts):
    def run(i):
        c = cluster.client(i)
        while not stop.is_set():
            try:
                infer(c, model)
                counts[model["id"]] = counts.get(model["id"], 0) + 1
            except Exception as exc:
                errors.append((model["id"], exc))
            time.sleep(0.02)

    return [threading.Thread(target=run, args=(i,), daemon=True) for i in indexes]


def test_sigkill_of_a_pod_under_load_loses_no_request(etcd_server, samples):  # noqa: F811
    ms = many_models(samples)
    replicated, only_on_victim = ms[0], ms[1]
    with make_cluster(etcd_server.endpoint, samples, pods=3) as c3:
        admin = c3.client(0)
        admin.register(replicated["id"], replicated["type"], replicated["path"], min_copies=2)
        admin.register(only_on_victim["id"], only_on_victim["type"], only_on_victim["path"])
        infer(c3.client(2), only_on_victim)
        wait_for(lambda: len(copies(admin, replicated["id"])) >= 2, timeout=30, what="min copies")
        victim_id = copies(admin, only_on_victim["id"])[0]
        victim = int(victim_id.rsplit("-", 1)[1])
        survivors = [i for i in range(3) if i != victim]
        stop, errors, counts = threading.Event(), [], {}
        threads = [
            *_driver(c3, replicated, survivors, stop, errors, counts),
            *_driver(c3, only_on_victim, survivors, stop, errors, counts),
        ]
        for t in threads:
            t.start()
        time.sleep(1.0)
        c3.kill(victim)
        before = dict(counts)
        alive_admin = c3.client(survivors[0])
        # its models come back elsewhere within lease TTL + load time, and keep being served
        wait_for(
            lambda: any(h != victim_id for h in copies(alive_admin, only_on_victim["id"])),
            timeout=30,
            what="model reloaded on a surviving pod",
        )
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:5]
        assert counts[replicated["id"]] > before.get(replicated["id"], 0)
        assert counts[only_on_victim["id"]] > before.get(only_on_victim["id"], 0)
        wait_for(
            lambda: victim_id not in {p["instance_id"] for p in alive_admin.cluster_status()["instances"]},
            timeout=15,
            what="dead pod gone from the cluster view",
        )


def test_sigterm_moves_hot_models_before_leaving(etcd_server, samples):  # noqa: F811
    import signal

    m = many_models(samples)[2]
    with make_cluster(etcd_server.endpoint, samples, pods=2) as c2:
        admin = c2.client(1)
        admin.register(m["id"], m["type"], m["path"])
        infer(c2.client(0), m)
        holder = copies(admin, m["id"])[0]
        leaving = int(holder.rsplit("-", 1)[1])
        staying = 1 - leaving
        stop, errors, counts = threading.Event(), [], {}
        threads = _driver(c2, m, [staying, staying], stop, errors, counts)
        for t in threads:
            t.start()
        time.sleep(0.5)
        c2.kill(leaving, signal.SIGTERM)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:5]
        assert copies(c2.client(staying), m["id"]) == [f"pod-{staying}"]
        # the copy moved before the pod left (not merely reloaded on demand afterwards)
        assert f"migrated {m['id']} to pod-{staying} before shutdown" in c2.log(leaving)


def test_concurrent_misses_on_different_pods_end_in_one_load(etcd_server, samples):  # noqa: F811
    m = many_models(samples)[3]
    with make_cluster(etcd_server.endpoint, samples, pods=3) as c3:
        c3.client(0).register(m["id"], m["type"], m["path"])
        with cf.ThreadPoolExecutor(12) as ex:
            list(ex.map(lambda i: infer(c3.client(i % 3), m), range(12)))
        loads = sum(c3.metric(i, "modelmesh_loadmodel_milliseconds_count") for i in range(3))
        assert loads == 1
        assert len(copies(c3.client(0), m["id"])) == 1
