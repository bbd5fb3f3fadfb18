"""The runtime process SIGKILLed under a Zipf load (its pod restarts it), on one pod and then the other.

Outcomes: requests fail over or reload elsewhere (every failure is UNAVAILABLE, none for a model with two
copies, none sent after the cluster converged); the pod's readiness goes NOT_SERVING while its runtime is
down and comes back; the cluster converges (no claim without a copy in the runtime, nothing stuck LOADING);
the pod counts one runtime restart; afterwards every model answers correctly through every pod.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos.harness import (
    HealthWatch,
    ZipfLoad,
    by_code,
    failure_list,
    figures,
    latency_ms,
    many_samples,
    runtime_process,
    seconds_since,
    shuffled,
    sweep,
    wait_converged,
)
from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]  # a hard bound; teardown still runs

MODELS = 16


def test_runtime_killed_under_zipf_load(etcd_server, samples):  # noqa: F811
    models = shuffled(many_samples(samples)[:MODELS], seed=7)
    two_copy = {m.id for m in models[::3]}
    with (
        figures("runtime_sigkill") as fig,
        make_cluster(etcd_server.endpoint, samples, pods=2, data_dir=fig.run_dir) as cluster,
    ):
        live = {p.instance_id for p in cluster.pods}
        admin = cluster.client(0)
        for m in models:
            admin.register(m.id, m.type, m.path, min_copies=2 if m.id in two_copy else 0, max_copies=2)
        rounds = []
        with HealthWatch(cluster.addresses) as health, ZipfLoad(cluster.addresses, models) as load:
            load.wait_for_requests(300)
            wait_converged(cluster, etcd_server.endpoint, live, timeout=90)
            for victim in (0, 1):
                load.wait_for_requests(150)
                proc = runtime_process(cluster, victim)
                t_kill = time.monotonic()
                proc.kill()
                proc.wait(timeout=30)
                t_down = wait_for(lambda: health.first(victim, False, t_kill), timeout=30, what="not ready")  # noqa: B023
                t_up = wait_for(lambda: health.first(victim, True, t_down), timeout=90, what="ready again")  # noqa: B023
                t_conv = wait_converged(cluster, etcd_server.endpoint, live, timeout=90)
                load.wait_for_requests(200)
                window = load.between(t_kill)
                fails = load.failures(window)
                rounds.append(
                    {
                        "pod": cluster.pods[victim].instance_id,
                        "killed_at_s": seconds_since(load.started_at, t_kill),
                        "requests": by_code(window),
                        "latency_ms": latency_ms(window),
                        "readiness_lost_s": seconds_since(t_kill, t_down),
                        "readiness_back_s": seconds_since(t_kill, t_up),
                        "converged_s": seconds_since(t_kill, t_conv),
                        "last_failure_s": seconds_since(t_kill, max((o.done for o in fails), default=None)),
                        "failures_after_convergence": len(load.failures(load.between(t_conv))),
                    }
                )
                fig.data["rounds"] = rounds
        outcomes = load.outcomes
        fig.data.update(
            models=len(models),
            two_copy_models=len(two_copy),
            requests=by_code(outcomes),
            requests_two_copy=by_code([o for o in outcomes if o.model in two_copy]),
            failures=failure_list(load),
            latency_ms=latency_ms(outcomes),
            readiness_transitions=[(round(t - load.started_at, 2), i, s) for t, i, s in health.transitions],
            pod_log_lines=[len(p.log_path.read_text(errors="replace").splitlines()) for p in cluster.pods],
            failed_background_tasks=[
                p.log_path.read_text(errors="replace").count("WARNING mesh.tasks: task") for p in cluster.pods
            ],
        )
        failed = load.failures()
        assert all(o.code == "UNAVAILABLE" for o in failed), failed[:5]
        assert not [o for o in failed if o.model in two_copy], failed[:5]
        assert not [r for r in rounds if r["failures_after_convergence"]], rounds
        for i in (0, 1):
            assert cluster.metric(i, "modelmesh_runtime_restarts_total") == 1
        # no background storm: the leader's top-ups against a restarting runtime once failed ~8,000 times a
        # second (tests/unit/test_mesh_reaper_pacing.py); a handful per restart is expected
        assert max(fig.data["failed_background_tasks"]) < 100, fig.data["failed_background_tasks"]
        assert not sweep(cluster.addresses, models)
