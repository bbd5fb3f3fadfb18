"""Partition between two pods (etcd reachable by both): forwards fail over to another copy or a new load within
the client's deadline, requests never loop, and no request is lost for a model with two copies.

Three pods and one etcd, each in its own namespace. Only pods 1 and 2 may load the sample models (a required
label, as for pods with a GPU), and pod 1 is preferred: the two-copy models sit on pods 1 and 2, the one-copy
models on pod 1. Clients send everything to pod 0, which holds nothing and forwards every request. Before the
cut only the two-copy models get traffic, so both of their holders publish the same request rate and pod 0
forwards to either at random (power of two choices on rate); a second client pool asks for the one-copy models
from the cut on.
The link between pods 0 and 1 is cut (blackhole routes both ways) for ``CUT_S``, then healed.
"""

from __future__ import annotations

import pytest

from tests.multihost.common import wait_for
from tests.multihost.mesh_hosts import MultiHostMesh, infer
from tests.multihost.observe import Observed, Traffic, summarize, write_summary

pytestmark = pytest.mark.multihost

CUT_S = 25.0
DEADLINE_S = 5.0
CONSTRAINTS = '{"sklearn": {"required": ["holder"], "preferred": ["first"]}}'
INFER = 'method="ModelInfer"'


@pytest.fixture(scope="module")
def pod_partition(netlab_ready, samples):
    obs = Observed()
    many = [m for m in samples["models"] if m["group"] == "many"]
    pairs, singles = many[20:22], many[22:25]
    with MultiHostMesh(
        "pod_partition",
        samples_dir=samples["dir"],
        pods=3,
        pod_args=("--type-constraints", CONSTRAINTS),
        pod_extra={1: ["--labels", "holder,first"], 2: ["--labels", "holder"]},
    ) as mesh:
        admin = mesh.client(0)
        for m in pairs:
            admin.register(m["id"], m["type"], m["path"], min_copies=2, max_copies=2)
        for m in singles:
            admin.register(m["id"], m["type"], m["path"])
        for m in [*pairs, *singles]:
            infer(mesh, 0, m)
        wait_for(
            lambda: all(mesh.loaded_on(m["id"]) == ["pod-1", "pod-2"] for m in pairs),
            timeout=30,
            what="two copies of each pair model, on pods 1 and 2",
        )
        obs["before"] = {m["id"]: mesh.loaded_on(m["id"]) for m in [*pairs, *singles]}
        ingress, cut_peer = mesh.pods[0], mesh.pods[1]
        forwards_before = {
            p.index: mesh.metric(p.index, "modelmesh_requests_routed_total", 'route="forward')
            for p in mesh.pods
        }
        # two client pools, so that a request blocked on one kind never slows the other kind's traffic
        pair_traffic = Traffic(mesh, [(m, 0) for m in pairs], threads=3, deadline_s=DEADLINE_S).start()
        single_traffic = Traffic(mesh, [(m, 0) for m in singles], threads=2, deadline_s=DEADLINE_S)
        try:
            wait_for(lambda: pair_traffic.count_ok() >= 30, timeout=30, what="traffic flowing")
            t_cut = pair_traffic.now()
            mesh.lab.cut(ingress.host, cut_peer.host)
            single_traffic.start()
            wait_for(
                lambda: pair_traffic.now() >= t_cut + CUT_S, timeout=CUT_S + 5, what="the end of the cut"
            )
            t_heal = pair_traffic.now()
            mesh.lab.heal(ingress.host, cut_peer.host)
            settled = pair_traffic.count_ok() + single_traffic.count_ok()
            wait_for(
                lambda: pair_traffic.count_ok() + single_traffic.count_ok() >= settled + 50,
                timeout=30,
                what="traffic after the heal",
            )
            t_end = pair_traffic.now()
        finally:
            pair_traffic.stop()
            single_traffic.stop()
        shift = t_cut  # single_traffic's clock starts at the cut
        pairs_during = pair_traffic.between(t_cut, t_heal)
        singles_during = single_traffic.between(0, t_heal - shift)
        obs["deadline_s"] = DEADLINE_S
        obs["cut_s"] = round(t_heal - t_cut, 2)
        obs["requests"] = len(pair_traffic.outcomes) + len(single_traffic.outcomes)
        obs["pairs_during_cut"] = summarize(pairs_during)
        obs["singles_during_cut"] = summarize(singles_during)
        obs["after_heal"] = summarize(
            pair_traffic.between(t_heal, t_end) + single_traffic.between(t_heal - shift, t_end - shift)
        )
        failed = [(o.t - t_cut, o) for o in pairs_during if o.code != "OK"]
        failed += [(o.t, o) for o in singles_during if o.code != "OK"]
        obs["first_failure_s"] = round(min(t for t, _ in failed), 2) if failed else None
        obs["last_failure_s"] = round(max(t for t, _ in failed), 2) if failed else None
        obs["failure_examples"] = [vars(o) for _, o in failed[:5]]
        obs["receptions"] = sum(
            mesh.metric(p.index, "modelmesh_api_request_milliseconds_count", INFER) for p in mesh.pods
        )
        obs["forwards_by_pod"] = {
            p.instance_id: mesh.metric(p.index, "modelmesh_requests_routed_total", 'route="forward')
            - forwards_before[p.index]
            for p in mesh.pods
        }
        obs["after"] = {m["id"]: mesh.loaded_on(m["id"]) for m in [*pairs, *singles]}
        obs.keep_logs(mesh)
    write_summary("pod_partition", dict(obs))
    return obs


def test_the_layout_is_as_intended(pod_partition):
    for model_id, holders in pod_partition["before"].items():
        assert "pod-0" not in holders and "pod-1" in holders, (model_id, holders)


def test_no_request_loops(pod_partition):
    # every client request goes to pod 0; requests it forwards are never forwarded again by their target
    forwards = pod_partition["forwards_by_pod"]
    assert forwards["pod-1"] == 0 and forwards["pod-2"] == 0, forwards
    # a request visits each pod at most once: pod 0, then at most pods 1 and 2 (setup requests included)
    assert pod_partition["receptions"] <= 3 * (pod_partition["requests"] + 10)


def test_failed_requests_end_within_the_client_deadline(pod_partition):
    for part in ("pairs_during_cut", "singles_during_cut"):
        worst = pod_partition[part]["failed_max_ms"]
        assert worst is None or worst <= (pod_partition["deadline_s"] + 2) * 1000, pod_partition[part]


def test_no_request_lost_for_models_with_two_copies(pod_partition):
    pairs = pod_partition["pairs_during_cut"]
    assert pairs["requests"] > 0
    assert pairs["by_code"] == {"OK": pairs["requests"]}, pod_partition["failure_examples"]


def test_single_copy_models_fail_over_to_a_new_load_within_the_deadline(pod_partition):
    singles = pod_partition["singles_during_cut"]
    assert singles["requests"] > 0
    assert singles["by_code"] == {"OK": singles["requests"]}, pod_partition["failure_examples"]


def test_after_the_heal_every_request_succeeds(pod_partition):
    after = pod_partition["after_heal"]
    assert after["requests"] > 0 and after["by_code"] == {"OK": after["requests"]}, after
