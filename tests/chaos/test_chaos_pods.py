"""Pods SIGKILLed and restarted (same id, same port) under a Zipf load, several times in a row.

Three pods; a third of the models keep two copies (``mm-min-copies 2``). Each round takes one pod out of the
clients' rotation and SIGKILLs it (its runtime dies with it). In "expire" rounds the pod is restarted after
the others dropped it from their view (its lease expired); in "quick" rounds it is restarted at once, within
its lease TTL, so it comes back under an instance id the others never saw leave. Then the round waits until
the cluster converges. Outcomes:

- no request for a two-copy model fails (except those whose own ingress pod was killed under them);
- every other failure is UNAVAILABLE (retryable), and none is sent after the cluster converged;
- the cluster converges after every round: no claim by a dead pod, no claim without a copy in that pod's
  runtime, nothing loading, copies within each model's bounds;
- afterwards every model answers correctly through every pod.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.harness import (
    OK,
    ZipfLoad,
    by_code,
    failure_list,
    figures,
    latency_ms,
    many_samples,
    seconds_since,
    shuffled,
    sweep,
    wait_converged,
)
from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]  # a hard bound; teardown still runs

PODS = 3
LEASE_TTL_S = "12"  # longer than a pod restart here, so a "quick" restart happens within the TTL
ROUNDS = (("expire", 0), ("quick", 1), ("expire", 2))  # (kind, victim)
MODELS = 24
TWO_COPY_EVERY = 3  # every third model (in a seeded order) keeps two copies


def _visible_pods(cluster, index: int) -> set[str]:
    try:
        return {p["instance_id"] for p in cluster.client(index).cluster_status(False)["instances"]}
    except Exception:
        return set()


def test_pods_sigkilled_and_restarted_under_zipf_load(etcd_server, samples):  # noqa: F811
    models = shuffled(many_samples(samples)[:MODELS], seed=13)
    two_copy = {m.id for m in models[::TWO_COPY_EVERY]}
    with (
        figures("pods_sigkill_restart") as fig,
        make_cluster(
            etcd_server.endpoint,
            samples,
            pods=PODS,
            extra=("--lease-ttl-s", LEASE_TTL_S),
            data_dir=fig.run_dir,
        ) as cluster,
    ):
        live = {p.instance_id for p in cluster.pods}
        admin = cluster.client(0)
        for m in models:
            if m.id in two_copy:
                admin.register(m.id, m.type, m.path, min_copies=2, max_copies=3)
            else:
                admin.register(m.id, m.type, m.path, max_copies=2)
        rounds = []
        with ZipfLoad(cluster.addresses, models, workers=3, max_seconds=200) as load:
            load.wait_for_requests(300)
            settled = wait_converged(cluster, etcd_server.endpoint, live, timeout=90)
            for kind, victim in ROUNDS:
                victim_id = cluster.pods[victim].instance_id
                survivor = (victim + 1) % PODS
                load.wait_for_requests(150)
                t_kill = time.monotonic()
                load.mark_down(victim)
                cluster.kill(victim)
                t_killed = time.monotonic()
                t_gone = None
                if kind == "expire":
                    wait_for(
                        lambda: victim_id not in _visible_pods(cluster, survivor),  # noqa: B023
                        timeout=60,
                        what=f"{victim_id} gone from the view",
                    )
                    t_gone = time.monotonic()
                    load.wait_for_requests(100)  # served while the pod is down and gone
                still_seen = victim_id in _visible_pods(cluster, survivor)
                t_restart = time.monotonic()
                cluster.restart(victim)
                t_back = time.monotonic()
                load.mark_up(victim)
                waited_on: list = []
                t_conv = wait_converged(cluster, etcd_server.endpoint, live, timeout=90, trace=waited_on)
                load.wait_for_requests(200)  # served after convergence
                window = load.between(t_kill)
                fails = load.failures(window)
                rounds.append(
                    {
                        "victim": victim_id,
                        "kind": kind,
                        "killed_at_s": seconds_since(load.started_at, t_kill),
                        "restarted_while_still_in_view": still_seen,
                        "requests": by_code(window),
                        "latency_ms": latency_ms(window),
                        "kill_returned_s": seconds_since(t_kill, t_killed),
                        "pod_gone_from_view_s": seconds_since(t_kill, t_gone),
                        "restart_began_s": seconds_since(t_kill, t_restart),
                        "restarted_serving_s": seconds_since(t_kill, t_back),
                        "converged_after_restart_s": seconds_since(t_back, t_conv),
                        "last_failure_s": seconds_since(t_kill, max((o.done for o in fails), default=None)),
                        "failures_after_convergence": len(load.failures(load.between(t_conv))),
                        "convergence_waited_on": waited_on,
                    }
                )
                fig.data["rounds"] = rounds
        outcomes = load.outcomes
        fig.data.update(
            pods=PODS,
            models=len(models),
            two_copy_models=len(two_copy),
            requests=by_code(outcomes),
            latency_ms=latency_ms(outcomes),
            requests_two_copy=by_code([o for o in outcomes if o.model in two_copy]),
            requests_one_copy=by_code([o for o in outcomes if o.model not in two_copy]),
            failures=failure_list(load),
            first_convergence_s=seconds_since(load.started_at, settled),
        )
        served = [o for o in outcomes if not o.ingress_lost]
        lost_two_copy = [o for o in served if o.model in two_copy and o.code != OK]
        assert not lost_two_copy, lost_two_copy[:5]
        other = [o for o in served if o.code != OK]
        assert all(o.code == "UNAVAILABLE" for o in other), other[:5]
        assert not [r for r in rounds if r["failures_after_convergence"]], rounds
        assert not sweep(cluster.addresses, models)  # every model answers, correctly, through every pod
