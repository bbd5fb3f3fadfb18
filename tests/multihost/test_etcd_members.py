"""etcd member loss with a 3-member etcd cluster: pods follow the remaining members, and when quorum is gone they
behave as in a single-etcd outage (loaded models keep serving, management fails fast with UNAVAILABLE, and the
cluster converges without restarts once quorum is back).

Three etcd members and three pods, each in its own namespace. Every pod gets the three members' addresses as
its ``--etcd`` list, followers first and the etcd leader last (``MultiHostMesh.etcd_order``: A, B, L), so it talks
to A. Phase 1 kills A (SIGKILL): quorum stays (B, L), no etcd election is needed, and the pods move to B. Phase
2 kills L: B is alone, without quorum, for ``QUORUM_LOSS_S`` while the pods stay connected to it (as when a
partition leaves the pods with the minority member); then A and L come back on their data dirs.
"""

from __future__ import annotations

import time

import pytest

from mesh.client import MeshClientError
from tests.multihost.common import wait_for
from tests.multihost.mesh_hosts import MultiHostMesh, infer
from tests.multihost.observe import Observed, Sampler, Traffic, summarize, write_summary

pytestmark = pytest.mark.multihost

QUORUM_LOSS_S = 20.0
CONVERGE_BOUND_S = 20.0


def _register_and_serve(mesh: MultiHostMesh, index: int, sample: dict) -> bool:
    with mesh.client(index, timeout=5) as c:
        c.register(sample["id"], sample["type"], sample["path"])
    infer(mesh, index, sample, timeout=10)
    return True


def _register_outcome(mesh: MultiHostMesh, index: int, sample: dict, deadline_s: float = 10.0) -> dict:
    started = time.monotonic()
    try:
        with mesh.client(index, timeout=deadline_s) as c:
            c.register(sample["id"], sample["type"], sample["path"])
        code = "OK"
    except MeshClientError as exc:
        code = exc.code
    return {"pod": f"pod-{index}", "code": code, "latency_s": round(time.monotonic() - started, 2)}


@pytest.fixture(scope="module")
def member_loss(netlab_ready, samples):
    obs = Observed()
    many = [m for m in samples["models"] if m["group"] == "many"]
    pairs, singles = many[33:35], many[35:38]
    after_one, during_outage, after_outage = many[38], many[39], many[0:3]
    loaded = {m["id"] for m in [*pairs, *singles]}
    with MultiHostMesh("etcd_members", samples_dir=samples["dir"], pods=3, etcd_members=3) as mesh:
        etcd = mesh.etcd
        a, b, leader = mesh.etcd_order
        obs["members"] = {"A": a.name, "B": b.name, "L": leader.name}
        admin = mesh.client(0)
        for m in pairs:
            admin.register(m["id"], m["type"], m["path"], min_copies=2)
        for m in singles:
            admin.register(m["id"], m["type"], m["path"])
        for i, m in enumerate(singles):
            infer(mesh, i % 3, m)
        wait_for(
            lambda: all(len(mesh.loaded_on(m["id"])) >= 2 for m in pairs), timeout=30, what="pair copies"
        )
        obs["before"] = {mid: mesh.loaded_on(mid) for mid in sorted(loaded)}

        targets = [(m, i) for m in [*pairs, *singles] for i in range(3)]
        traffic = Traffic(mesh, targets, threads=3, deadline_s=10.0).start()
        sampler = Sampler(mesh, interval_s=0.5).start(t0=time.monotonic() - traffic.now())
        try:
            wait_for(lambda: traffic.count_ok() >= 30, timeout=30, what="traffic flowing")
            # --- phase 1: one member lost; quorum stays. L must still lead (it may have moved on a busy
            # machine), so that losing A costs no etcd election
            etcd.move_leader(leader)
            t1 = traffic.now()
            etcd.kill_member(a)
            wait_for(
                lambda: _register_and_serve(mesh, 1, after_one), timeout=30, what="a new model via pod-1"
            )
            obs["follow_s"] = round(traffic.now() - t1, 2)
            served = traffic.count_ok()
            wait_for(lambda: traffic.count_ok() >= served + 100, timeout=30, what="traffic on two members")
            obs["instances_after_member_loss"] = sorted(mesh.instances())
            obs["management_after_member_loss"] = [_register_outcome(mesh, i, after_one) for i in range(3)]

            # --- phase 2: a majority lost
            t2 = traffic.now()
            etcd.kill_member(leader)
            wait_for(lambda: not etcd.healthy(b), timeout=30, what="member B to lose its leader")
            # the first call on each pod may come before the pod has noticed (recorded only); once it has, a
            # management call is refused with UNAVAILABLE instead of waiting for the client's deadline
            obs["management_first_calls_without_quorum"] = [
                _register_outcome(mesh, i, during_outage) for i in range(3)
            ]
            for i in range(3):
                wait_for(
                    lambda i=i: _register_outcome(mesh, i, during_outage)["code"] == "UNAVAILABLE",
                    timeout=30,
                    what=f"pod-{i} to refuse management",
                )
            obs["management_without_quorum"] = [_register_outcome(mesh, i, during_outage) for i in range(3)]
            wait_for(
                lambda: traffic.now() >= t2 + QUORUM_LOSS_S, timeout=QUORUM_LOSS_S + 5, what="outage end"
            )
            t3 = traffic.now()
            etcd.start_member(a, wait=False)
            etcd.start_member(leader, wait=False)
            for m in (a, b, leader):
                etcd.wait_healthy(m, timeout=30)
            obs["quorum_loss_s"] = round(t3 - t2, 2)
            obs["quorum_back_s"] = round(traffic.now() - t3, 2)

            # converge: management works through every pod again (recorded here, judged by the tests)
            converged: dict[str, float | None] = {}
            for i, m in enumerate(after_outage):
                try:
                    wait_for(
                        lambda i=i, m=m: _register_and_serve(mesh, i, m),
                        timeout=max(1.0, t3 + CONVERGE_BOUND_S - traffic.now()),
                        what=f"management via pod-{i}",
                    )
                    converged[f"pod-{i}"] = round(traffic.now() - t3, 2)
                except AssertionError as exc:
                    converged[f"pod-{i}"] = None
                    obs.setdefault("converge_errors", []).append(str(exc)[:300])
            obs["management_back_s"] = converged
            wait_for(lambda: len(mesh.instances()) == 3, timeout=30, what="every pod in etcd again")
            obs["leader_after_quorum_loss"] = mesh.leader()
            t_end = traffic.now()
        finally:
            traffic.stop()
            sampler.stop()
        obs["instances_after_outage"] = sorted(mesh.instances())
        obs["traffic_phase1"] = summarize(traffic.between(t1, t2))
        obs["traffic_without_quorum"] = summarize(traffic.between(t2, t3))
        obs["traffic_after"] = summarize(traffic.between(t3, t_end))
        obs["failures"] = [vars(o) for o in traffic.failures()][:10]
        obs["leaders"] = sampler.summary()

        obs.keep_logs(mesh)
    write_summary("etcd_members", dict(obs))
    return obs


def test_pods_follow_the_remaining_members(member_loss):
    assert member_loss["instances_after_member_loss"] == ["pod-0", "pod-1", "pod-2"]
    assert all(o["code"] in ("OK", "ALREADY_EXISTS") for o in member_loss["management_after_member_loss"])
    phase1 = member_loss["traffic_phase1"]
    assert phase1["by_code"] == {"OK": phase1["requests"]}, member_loss["failures"]


def test_without_quorum_loaded_models_keep_serving(member_loss):
    during = member_loss["traffic_without_quorum"]
    assert during["requests"] > 0
    assert during["by_code"] == {"OK": during["requests"]}, member_loss["failures"]


def test_without_quorum_management_fails_fast_with_unavailable(member_loss):
    # refused by the pod (not the client's deadline running out) once the pod has seen etcd go
    outcomes = member_loss["management_without_quorum"]
    assert {o["code"] for o in outcomes} == {"UNAVAILABLE"}, outcomes


def test_after_quorum_returns_management_works_through_every_pod(member_loss):
    assert None not in member_loss["management_back_s"].values(), member_loss.get("converge_errors")


def test_after_quorum_returns_every_pod_is_in_etcd_and_serving(member_loss):
    assert member_loss["instances_after_outage"] == ["pod-0", "pod-1", "pod-2"]
    assert member_loss["leader_after_quorum_loss"] in ("pod-0", "pod-1", "pod-2")
    after = member_loss["traffic_after"]
    assert after["requests"] > 0 and after["by_code"] == {"OK": after["requests"]}, member_loss["failures"]


def test_never_more_than_one_leader(member_loss):
    assert member_loss["leaders"]["max_self_declared_leaders"] <= 1, member_loss["leaders"]["timeline"]
