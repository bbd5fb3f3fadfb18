"""Pods as real processes under real signals: SIGKILL of a pod under load, SIGTERM of a pod holding a hot
model. Real etcd, `mesh serve` processes each supervising its built-in runtime.

Everything about routing, placement, copies and failures that does not need a process to die is tested on
in-process pods (tests/inprocess/): test_router.py, test_availability.py, test_copy_scaler.py,
test_janitor_reaper.py and test_pod_behaviour.py.
"""

from __future__ import annotations

import signal
import threading
import time

import numpy as np

from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)


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


def served_more(counts, since, models, n=10):
    """Each of ``models`` was served ``n`` more times than in the snapshot ``since``."""
    return all(counts.get(m["id"], 0) >= since.get(m["id"], 0) + n for m in models)


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
        wait_for(
            lambda: served_more(counts, {}, (replicated, only_on_victim)), what="traffic before the kill"
        )
        c3.kill(victim)
        before = dict(counts)
        alive_admin = c3.client(survivors[0])
        # its models come back elsewhere within lease TTL + load time, and keep being served
        wait_for(
            lambda: any(h != victim_id for h in copies(alive_admin, only_on_victim["id"])),
            timeout=30,
            what="model reloaded on a surviving pod",
        )
        since = dict(counts)
        wait_for(
            lambda: served_more(counts, since, (replicated, only_on_victim)), what="traffic after the reload"
        )
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:5]
        assert served_more(counts, before, (replicated, only_on_victim), n=1)
        wait_for(
            lambda: victim_id not in {p["instance_id"] for p in alive_admin.cluster_status()["instances"]},
            timeout=15,
            what="dead pod gone from the cluster view",
        )


def test_sigterm_moves_hot_models_before_leaving(etcd_server, samples):  # noqa: F811
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
        wait_for(lambda: served_more(counts, {}, (m,)), what="traffic before SIGTERM")
        c2.kill(leaving, signal.SIGTERM)  # returns once the pod process has exited
        since = dict(counts)
        wait_for(lambda: served_more(counts, since, (m,)), what="traffic after the pod left")
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:5]
        assert copies(c2.client(staying), m["id"]) == [f"pod-{staying}"]
        # the copy moved before the pod left (not merely reloaded on demand afterwards)
        assert f"migrated {m['id']} to pod-{staying} before shutdown" in c2.log(leaving)
