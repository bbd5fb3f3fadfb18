"""A slow storage, a hung storage and a hung runtime, under a Zipf load on two pods.

Loads are slow when the model's bytes come from a storage that dribbles them (``/dribble``) or never
answers (``/hang``; ``storage_server.py``); the runtime hangs when its process is SIGSTOPped for a few
seconds and then SIGCONTed. The load timeout is 3 s (``LOADTIME_TIMEOUT``). Outcomes:

- a request for a model whose load is slow ends with DEADLINE_EXCEEDED at its deadline, never later; the
  load then fails at the load timeout: the model is LOADING_FAILED with a message saying it timed out, and
  no partial download is left in any pod's model directory;
- meanwhile the loaded models keep serving (no failed request) and a model from the healthy route of the
  same storage loads and serves;
- while one pod's runtime is stopped, requests for the models only the other pod holds still succeed
  through both pods, every failed request is DEADLINE_EXCEEDED (never INTERNAL/UNKNOWN) and ends at its
  deadline; after SIGCONT nothing fails any more, the cluster converges and every model answers.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import os
import signal
import threading
import time

import grpc
import pytest

from tests.chaos.harness import (
    MODEL_INFER,
    OK,
    HealthWatch,
    Sample,
    ZipfLoad,
    by_code,
    failure_list,
    figures,
    latency_ms,
    many_samples,
    registry_claims,
    runtime_process,
    seconds_since,
    shuffled,
    sweep,
    wait_converged,
)
from tests.support.bad_storage import BadStorage
from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]  # a hard bound; teardown still runs

LOAD_TIMEOUT_MS = 3000
READ_TIMEOUT_S = 5  # a storage that sends nothing for this long is given up (PULLER_READ_TIMEOUT_S)
DRIBBLING = 4  # slow models; with the hung one, more than a runtime's concurrent pulls (4)
REQUEST_DEADLINE_S = 2.0
STOPPED_S = 5.0
MODELS = 12


def _call(address: str, model: Sample, deadline_s: float) -> tuple[str, float, str]:
    """One request with a deadline, run in a thread joined with a bound: (code, seconds, details). The
    join bound only guards the test against a client that never returns; the deadline is gRPC's."""
    result: list[tuple[str, float, str]] = []

    def run() -> None:
        with grpc.insecure_channel(address) as channel:
            started = time.monotonic()
            try:
                resp = channel.unary_unary(MODEL_INFER)(
                    model.payload, metadata=(("mm-model-id", model.id),), timeout=deadline_s
                )
                code, details = (OK if model.matches(resp) else "WRONG_OUTPUT"), ""
            except grpc.RpcError as exc:
                code, details = exc.code().name, exc.details() or ""
            result.append((code, time.monotonic() - started, details))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(deadline_s + 60)
    assert result, f"a request with a {deadline_s}s deadline did not return within {deadline_s + 60}s"
    return result[0]


def _concurrently(calls: list[tuple[str, Sample, float]]) -> list[tuple[str, float, str]]:
    with cf.ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda c: _call(*c), calls))


def _wait_failed(admin, model_id: str, *, failures: int, timeout: float) -> dict:
    """The model's status once it is LOADING_FAILED on at least ``failures`` pods (bounded wait)."""
    return wait_for(
        lambda: (
            (st := admin.status(model_id))["status"] == "LOADING_FAILED"
            and sum(c["status"] == "LOADING_FAILED" for c in st["copies"]) >= failures
            and st
        ),
        timeout=timeout,
        what=f"{model_id} LOADING_FAILED on {failures} pod(s)",
    )


def _leftovers(cluster) -> list[str]:
    """Partial downloads (temp and trash dirs) and dirs of the slow models under the pods' model dirs."""
    out = []
    for i in range(len(cluster.pods)):
        root = cluster.data_dir / f"pod-{i}" / "models"
        out += [f"pod-{i}/{p.name}" for p in root.iterdir() if p.name.startswith((".puller-t", "slow-"))]
    return out


def _wait_no_leftovers(cluster, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while (left := _leftovers(cluster)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"partial downloads left in the model directories after {timeout:.0f}s: {left}"
    return time.monotonic()


def test_slow_and_hung_storage_and_runtime(etcd_server, samples, tmp_path):  # noqa: F811
    local = shuffled(many_samples(samples)[:MODELS], seed=3)
    web_source = samples["models"][[m["group"] for m in samples["models"]].index("many") + MODELS]
    web_bytes = (samples["dir"] / web_source["file"]).read_bytes()
    with BadStorage({"model.joblib": web_bytes}) as storage:
        config = tmp_path / "storage.json"
        config.write_text(json.dumps({"web": {"type": "http", "url": storage.url}}))
        key = json.dumps({"storage_key": "web"})
        env = {"LOADTIME_TIMEOUT": str(LOAD_TIMEOUT_MS), "PULLER_READ_TIMEOUT_S": str(READ_TIMEOUT_S)}
        with (
            figures("slow_and_hung") as fig,
            make_cluster(
                etcd_server.endpoint,
                samples,
                pods=2,
                extra=("--storage-config", str(config)),
                env=env,
                data_dir=fig.run_dir,
            ) as cluster,
        ):
            live = {p.instance_id for p in cluster.pods}
            admin = cluster.client(0)
            for m in local:  # up to two copies: the scaler may add one for the hottest under this load
                admin.register(m.id, m.type, m.path, max_copies=2)
            slow = [Sample.of(web_source, f"slow-dribble-{i}") for i in range(DRIBBLING)]
            slow.append(Sample.of(web_source, "slow-hang"))
            web = Sample.of(web_source, "web-ok")
            for s_ in slow:
                route = "hang" if s_.id == "slow-hang" else "dribble"
                admin.register(s_.id, "sklearn", f"{route}/model.joblib", key)
            admin.register(web.id, "sklearn", "file/model.joblib", key)
            with (
                HealthWatch(cluster.addresses) as health,
                ZipfLoad(cluster.addresses, local, deadline_s=REQUEST_DEADLINE_S) as load,
            ):
                load.wait_for_requests(300)
                wait_converged(cluster, etcd_server.endpoint, live, timeout=90)

                # --- slow and hung storage: requests end at their deadline, loads at the load timeout. Two
                # rounds: a model that failed on one pod is placed on the other, so each pod abandons every
                # slow pull once (more of them than a runtime's PULLER_MAX_CONCURRENT_PULLS, 4).
                t_slow = time.monotonic()
                slow_calls = []
                for round_ in range(2):
                    slow_calls += _concurrently(
                        [
                            (cluster.addresses[(i + round_) % 2], s_, REQUEST_DEADLINE_S)
                            for i, s_ in enumerate(slow)
                        ]
                    )
                    failed_status = {
                        s_.id: _wait_failed(admin, s_.id, failures=round_ + 1, timeout=60) for s_ in slow
                    }
                t_failed = time.monotonic()
                web_call = _call(cluster.addresses[1], web, 30.0)
                load.wait_for_requests(100)
                slow_window = load.between(t_slow)
                fig.data.update(
                    load_timeout_ms=LOAD_TIMEOUT_MS,
                    request_deadline_s=REQUEST_DEADLINE_S,
                    slow_models=len(slow),
                    slow_requests=collections.Counter(c for c, _, _ in slow_calls),
                    slow_request_longest_s=round(max(e for _, e, _ in slow_calls), 2),
                    slow_loads_failed_on_both_pods_after_s=seconds_since(t_slow, t_failed),
                    slow_load_errors=sorted({e for st in failed_status.values() for e in st["errors"]}),
                    healthy_web_model=web_call,
                    requests_during_slow_loads=by_code(slow_window),
                    leftovers_after_failure=_leftovers(cluster),
                )
                t_clean = _wait_no_leftovers(cluster, timeout=30)
                fig.data["leftovers_gone_after_failure_s"] = seconds_since(t_failed, t_clean)
                # slow/hung storage outcomes
                assert {c for c, _, _ in slow_calls} == {"DEADLINE_EXCEEDED"}, slow_calls
                for model_id, st in failed_status.items():
                    assert st["errors"] and all("timed out" in e for e in st["errors"]), (model_id, st)
                assert web_call[0] == OK, web_call
                assert not load.failures(slow_window), load.failures(slow_window)[:5]

                # --- a hung runtime: SIGSTOP, then SIGCONT
                claims = registry_claims(etcd_server.endpoint, cluster.kv_root)
                only_on_1 = {mid for mid, rec in claims.items() if set(rec.instances) == {"pod-1"}}
                proc = runtime_process(cluster, 0)
                t_stop = time.monotonic()
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    time.sleep(STOPPED_S)
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
                t_cont = time.monotonic()
                t_conv = wait_converged(cluster, etcd_server.endpoint, live, timeout=90)
                load.wait_for_requests(300)
            stopped = load.between(t_stop, t_cont)
            hung_failures = load.failures(stopped)
            fig.data.update(
                stopped_s=round(t_cont - t_stop, 1),
                requests_while_runtime_stopped=by_code(stopped),
                requests_while_stopped_for_models_only_on_other_pod=by_code(
                    [o for o in stopped if o.model in only_on_1]
                ),
                failures=failure_list(load),
                longest_failed_request_s=round(max((o.done - o.sent for o in hung_failures), default=0), 2),
                requests_after_sigcont=by_code(load.between(t_cont)),
                converged_after_sigcont_s=seconds_since(t_cont, t_conv),
                latency_ms=latency_ms(load.outcomes),
                readiness_transitions=[
                    (round(t - load.started_at, 2), i, s) for t, i, s in health.transitions
                ],
                storage_gets=dict(storage.gets),
            )
            # hung runtime
            assert only_on_1, "the test needs models held only by pod-1"
            assert not [o for o in hung_failures if o.model in only_on_1], hung_failures[:5]
            assert {o.code for o in hung_failures} <= {"DEADLINE_EXCEEDED"}, hung_failures[:5]
            assert not load.failures(load.between(t_conv)), load.failures(load.between(t_conv))[:5]
            assert not sweep(cluster.addresses, [*local, web])
