"""Rolling restart under load, one pod at a time, with SIGTERM as Kubernetes does it: no failed request for
models with two copies, and hot models are migrated before each pod leaves.

Three pods and one etcd, each in its own namespace. Two models keep two copies (``minCopies`` 2), six hot models
have one copy each. Clients send every model to every pod. Each pod in turn is taken out of the clients'
rotation (as a Service drops a terminating pod from its endpoints), sent SIGTERM, waited for, started again on
the same address with the same id, and put back in the rotation once every pod sees it.
"""

from __future__ import annotations

import signal

import pytest

from tests.multihost.common import wait_for
from tests.multihost.mesh_hosts import MultiHostMesh, infer
from tests.multihost.observe import Observed, Traffic, summarize, write_summary

pytestmark = pytest.mark.multihost


def _everyone_sees(mesh: MultiHostMesh, instance_id: str) -> bool:
    for pod in mesh.pods:
        with mesh.client(pod.index, timeout=2) as c:
            if instance_id not in {i["instance_id"] for i in c.cluster_status(False)["instances"]}:
                return False
    return True


@pytest.fixture(scope="module")
def rolling(netlab_ready, samples):
    obs = Observed()
    many = [m for m in samples["models"] if m["group"] == "many"]
    pairs, hot = many[25:27], many[27:33]
    pair_ids, hot_ids = {m["id"] for m in pairs}, {m["id"] for m in hot}
    with MultiHostMesh("rolling_restart", samples_dir=samples["dir"], pods=3) as mesh:
        admin = mesh.client(0)
        for m in hot:
            admin.register(m["id"], m["type"], m["path"])
        for i, m in enumerate(hot):
            infer(mesh, i % 3, m)
        for m in pairs:  # after the first loads, so that no runtime is still importing its libraries
            admin.register(m["id"], m["type"], m["path"], min_copies=2)
        wait_for(
            lambda: all(len(mesh.loaded_on(m["id"])) >= 2 for m in pairs), timeout=30, what="pair copies"
        )
        obs["before"] = {mid: mesh.loaded_on(mid) for mid in sorted(pair_ids | hot_ids)}
        targets = [(m, i) for m in [*pairs, *hot] for i in range(3)]
        restarts = []
        with Traffic(mesh, targets, threads=3, deadline_s=10.0) as traffic:
            wait_for(lambda: traffic.count_ok() >= 30, timeout=30, what="traffic flowing")
            for pod in mesh.pods:
                i, iid = pod.index, pod.instance_id
                step: dict = {"pod": iid, "t_start": round(traffic.now(), 2)}
                traffic.avoid(i, (i + 1) % 3)
                held = mesh.local_models(i)
                step["held_hot"] = sorted(held & hot_ids)
                step["held_pairs"] = sorted(held & pair_ids)
                proc = pod.proc
                step["sigterm_at"] = round(traffic.now(), 2)
                step["exit_s"] = round(mesh.stop_pod(i, signal.SIGTERM, timeout=60), 2)
                step["exited_at"] = round(traffic.now(), 2)
                step["exit_code"] = proc.returncode
                log = mesh.full_log(i)
                step["migrated"] = sorted(mid for mid in held & hot_ids if f"migrated {mid} to " in log)
                # right after it left, each hot model it held is loaded on a pod that stays
                step["hot_loaded_elsewhere"] = {
                    mid: [h for h in mesh.loaded_on(mid) if h != iid] for mid in step["held_hot"]
                }
                mesh.restart_pod(i)
                wait_for(lambda iid=iid: iid in mesh.instances(), timeout=30, what=f"{iid} in etcd again")
                wait_for(
                    lambda iid=iid: _everyone_sees(mesh, iid), timeout=30, what=f"every pod to see {iid}"
                )
                traffic.avoid(None)
                step["back_s"] = round(traffic.now() - step["t_start"], 2)
                served = sum(1 for o in traffic.outcomes if o.ingress == i and o.code == "OK")
                wait_for(
                    lambda i=i, served=served: (
                        sum(1 for o in traffic.outcomes if o.ingress == i and o.code == "OK") >= served + 20
                    ),
                    timeout=30,
                    what=f"{iid} serving clients again",
                )
                restarts.append(step)
        obs["restarts"] = restarts
        obs["pairs"] = summarize([o for o in traffic.outcomes if o.model_id in pair_ids])
        obs["hot"] = summarize([o for o in traffic.outcomes if o.model_id in hot_ids])
        obs["failures"] = [vars(o) for o in traffic.failures()][:50]
        obs["pair_ids"] = sorted(pair_ids)
        obs["after"] = {mid: mesh.loaded_on(mid) for mid in sorted(pair_ids | hot_ids)}
        obs.keep_logs(mesh)
    write_summary("rolling_restart", dict(obs))
    return obs


def test_every_pod_left_cleanly_and_came_back(rolling):
    assert [r["pod"] for r in rolling["restarts"]] == ["pod-0", "pod-1", "pod-2"]
    assert all(r["exit_code"] == 0 for r in rolling["restarts"]), rolling["restarts"]


def test_no_failed_request_for_models_with_two_copies(rolling):
    pairs = rolling["pairs"]
    assert pairs["requests"] > 0
    assert pairs["by_code"] == {"OK": pairs["requests"]}, rolling["failures"]


def test_hot_models_are_migrated_before_each_pod_leaves(rolling):
    assert any(r["held_hot"] for r in rolling["restarts"])
    for r in rolling["restarts"]:
        assert r["migrated"] == r["held_hot"], r
        assert all(r["hot_loaded_elsewhere"].values()), r


def test_no_failed_request_for_hot_models(rolling):
    hot = rolling["hot"]
    assert hot["by_code"] == {"OK": hot["requests"]}, rolling["failures"]
