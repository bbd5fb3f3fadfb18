"""Across hosts: requests to any pod reach the pod holding the model; placement, copies and the reaper work.

Three pods and etcd, each in its own network namespace with its own address (nothing shares a loopback). Nine
models are each requested through every pod in turn, a tenth is registered with ``minCopies`` 2, then the pod
holding the most models is killed with SIGKILL under traffic through the two others.
"""

from __future__ import annotations

import ipaddress
import signal
import time

import pytest

from tests.multihost.common import wait_for
from tests.multihost.mesh_hosts import MultiHostMesh, infer
from tests.multihost.observe import Observed, Traffic, summarize, write_summary

pytestmark = pytest.mark.multihost

INFER = 'method="ModelInfer"'


def _sum(mesh: MultiHostMesh, name: str, labels: str = "") -> float:
    return sum(mesh.metric(p.index, name, labels) for p in mesh.pods if p.proc is not None)


@pytest.fixture(scope="module")
def routing(netlab_ready, samples):
    obs = Observed()
    many = [m for m in samples["models"] if m["group"] == "many"]
    singles, pair = many[:9], many[9]
    ids = [m["id"] for m in singles]
    with MultiHostMesh("routing", samples_dir=samples["dir"], pods=3) as mesh:
        obs["subnet"] = mesh.lab.subnet
        admin = mesh.client(0)
        for m in singles:
            admin.register(m["id"], m["type"], m["path"])
        sent, arrivals_elsewhere = 0, 0
        for round_ in range(3):
            for i, m in enumerate(singles):
                ingress = (i + round_) % 3
                infer(mesh, ingress, m)
                sent += 1
                holders = mesh.loaded_on(m["id"])
                arrivals_elsewhere += holders != [f"pod-{ingress}"]
        obs["requests"] = sent
        obs["requests_at_non_holders"] = arrivals_elsewhere
        obs["addresses"] = {iid: rec.address for iid, rec in mesh.instances().items()}
        obs["holders"] = {mid: mesh.loaded_on(mid) for mid in ids}
        obs["held"] = mesh.held_copies(ids)
        obs["loads"] = _sum(mesh, "modelmesh_loadmodel_milliseconds_count")
        obs["invocations"] = _sum(mesh, "modelmesh_invoke_model_milliseconds_count", INFER)
        obs["receptions"] = _sum(mesh, "modelmesh_api_request_milliseconds_count", INFER)
        # both routes that send a request to another pod: "forward" (to a copy) and "forward-load" (to load it)
        obs["forwards"] = _sum(mesh, "modelmesh_requests_routed_total", 'route="forward')

        # copies: minCopies 2 gives two copies, on two hosts, without any request
        admin.register(pair["id"], pair["type"], pair["path"], min_copies=2)
        started = time.monotonic()
        wait_for(
            lambda: len(mesh.loaded_on(pair["id"])) >= 2, timeout=30, what="two copies of the pair model"
        )
        obs["min_copies_placed_s"] = round(time.monotonic() - started, 2)
        obs["pair_holders"] = mesh.loaded_on(pair["id"])
        obs["pair_held"] = mesh.held_copies([pair["id"]])[pair["id"]]

        # the reaper: SIGKILL the pod holding the most models, with traffic through the two others
        counts = {p.instance_id: sum(p.instance_id in h for h in obs["holders"].values()) for p in mesh.pods}
        victim_id = max(sorted(counts), key=counts.get)
        victim = mesh.index_of(victim_id)
        survivors = [p.index for p in mesh.pods if p.index != victim]
        lost = [m for m in singles if obs["holders"][m["id"]] == [victim_id]]
        # half of its models keep getting requests (the requests re-place them); the reaper must re-place the
        # other half, which nobody asks for
        requested, unrequested = lost[::2], lost[1::2]
        obs["victim"], obs["victim_models"] = victim_id, [m["id"] for m in lost]
        obs["unrequested"] = [m["id"] for m in unrequested]
        targets = [(m, i) for m in [*requested, pair] for i in survivors]
        with Traffic(mesh, targets, threads=3, deadline_s=10.0) as traffic:
            wait_for(lambda: traffic.count_ok() >= 20, timeout=30, what="traffic flowing")
            t_kill = traffic.now()
            mesh.stop_pod(victim, signal.SIGKILL)
            wait_for(lambda: victim_id not in mesh.instances(), timeout=30, what="the victim's lease to end")
            obs["lease_gone_s"] = round(traffic.now() - t_kill, 2)

            def replaced() -> bool:
                alive = set(mesh.instances())
                records = mesh.records()
                return all(set(records[m["id"]].loaded) & alive for m in lost)

            wait_for(replaced, timeout=45, what="the victim's models loaded on surviving pods")
            obs["replaced_s"] = round(traffic.now() - t_kill, 2)
            wait_for(
                lambda: not any(victim_id in r.instances for r in mesh.records().values()),
                timeout=45,
                what="the victim gone from every registry record",
            )
            obs["reaped_s"] = round(traffic.now() - t_kill, 2)
            settled = traffic.count_ok()
            wait_for(
                lambda: traffic.count_ok() >= settled + 30, timeout=30, what="traffic after re-placement"
            )
        obs["after_kill"] = {m["id"]: mesh.loaded_on(m["id"]) for m in [*lost, pair]}
        obs["traffic"] = summarize(traffic.outcomes)
        obs["failures"] = [vars(o) for o in traffic.failures()][:10]
        obs.keep_logs(mesh)
    write_summary("routing", dict(obs))
    return obs


def test_each_pod_is_its_own_host(routing):
    addresses = routing["addresses"]
    assert len(addresses) == 3
    hosts = {a.rsplit(":", 1)[0] for a in addresses.values()}
    assert len(hosts) == 3, addresses
    subnet = ipaddress.ip_network(routing["subnet"])
    assert all(ipaddress.ip_address(h) in subnet and not ipaddress.ip_address(h).is_loopback for h in hosts)


def test_requests_to_any_pod_reach_the_pod_holding_the_model(routing):
    holders = routing["holders"]
    assert all(len(h) == 1 for h in holders.values()), holders
    assert routing["held"] == holders, "the registry and the pods' own caches disagree"
    assert len({h[0] for h in holders.values()}) >= 2, f"placement used one pod only: {holders}"
    assert routing["loads"] == len(holders), "a model was loaded more than once"
    # every request ran once, on the holder's runtime; those that arrived elsewhere were forwarded there
    assert routing["invocations"] == routing["requests"]
    assert routing["forwards"] == routing["requests_at_non_holders"] > 0
    # ModelMesh's api-request metric counts a request at the pod it entered, not again where it was forwarded
    assert routing["receptions"] == routing["requests"]


def test_min_copies_places_copies_on_distinct_hosts(routing):
    # exactly two (the leader's top-up once overshot when a load outlasted its 5 s sweep period), each on its
    # own pod
    assert len(routing["pair_holders"]) == 2
    assert set(routing["pair_holders"]) <= set(routing["pair_held"])


def test_sigkill_of_a_pod_replaces_its_models_and_the_reaper_cleans_records(routing):
    victim = routing["victim"]
    assert len(routing["victim_models"]) >= 2, "the victim held fewer than two single-copy models"
    for model_id, holders in routing["after_kill"].items():
        assert holders and victim not in holders, (model_id, holders)
    assert routing["unrequested"], "the victim held too few models to leave some unrequested"
    assert routing["traffic"]["by_code"].get("OK", 0) > 0
    assert routing["failures"] == [], routing["traffic"]
