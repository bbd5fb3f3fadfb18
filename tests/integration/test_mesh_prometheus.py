"""ModelMesh's metrics as a real Prometheus sees them: Debian's Prometheus scrapes a 2-pod cluster (real etcd, real
runtimes) while the test sends known traffic, then PromQL answers are checked against that traffic: request counts
by method and code (gRPC and REST together, counted once at the ingress pod), loads, the leader-only model totals,
copies per pod, a latency quantile bounded by what the client measured, and every query of the Grafana
dashboard in deploy/grafana/ evaluates without error."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import numpy as np

from mesh.client import MeshClientError
from mesh.metrics import MS_TIME_BUCKETS
from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.prometheus import PrometheusServer
from tests.support.samples import samples  # noqa: F401  (fixture)

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "modelmesh-py.json"


def _infer(client, sample) -> float:
    inp = sample["input"]
    started = time.perf_counter()
    client.infer(sample["id"], {inp["name"]: np.asarray(inp["data"], np.float32).reshape(inp["shape"])})
    return (time.perf_counter() - started) * 1000


def _rest_infer(port: int, sample) -> float:
    inp = sample["input"]
    body = json.dumps(
        {"inputs": [{"name": inp["name"], "shape": inp["shape"], "datatype": "FP32", "data": inp["data"]}]}
    )
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{sample['id']}/infer", data=body.encode()
    )
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
    return (time.perf_counter() - started) * 1000


def test_prometheus_scrapes_modelmesh_metrics_that_match_the_traffic(etcd_server, samples):  # noqa: F811
    a, b = samples["by_id"]["sklearn-iris-lr"], samples["by_id"]["xgboost-iris"]
    with make_cluster(etcd_server.endpoint, samples, pods=2) as cluster:
        targets = [f"127.0.0.1:{p.metrics_port}" for p in cluster.pods]
        with PrometheusServer(targets) as prom:
            c0, c1 = cluster.client(0), cluster.client(1)
            c0.register(a["id"], a["type"], a["path"])
            c0.register(b["id"], b["type"], b["path"])
            c0.register("broken", "sklearn", "no/such/model.joblib")
            latencies = [_infer(c0, a) for _ in range(20)]
            latencies += [_infer(c1, b) for _ in range(10)]
            latencies += [_rest_infer(cluster.pods[1].rest_port, a) for _ in range(5)]
            not_found = 0
            for _ in range(3):
                try:
                    _infer(c1, {**a, "id": "no-such-model"})
                except MeshClientError as exc:
                    assert exc.code == "NOT_FOUND"
                    not_found += 1
            try:
                _infer(c0, {**a, "id": "broken"})
            except MeshClientError:
                pass
            assert not_found == 3

            def equals(promql: str, want: float):
                return lambda: prom.value(promql) == want

            wait_for(equals('sum(modelmesh_api_request_milliseconds_count{method="ModelInfer",code="OK"})', 35),
                     timeout=30, what="35 OK inferences in Prometheus")  # fmt: skip
            wait_for(equals('sum(modelmesh_api_request_milliseconds_count{code="NOT_FOUND"})', 3),
                     timeout=30, what="3 NOT_FOUND requests")  # fmt: skip
            wait_for(equals("sum(modelmesh_loadmodel_milliseconds_count)", 2), timeout=30, what="2 loads")
            wait_for(lambda: (prom.value("sum(modelmesh_loadmodel_failure_total)") or 0) >= 1,
                     timeout=30, what="the broken model's load failure")  # fmt: skip
            wait_for(equals("sum(modelmesh_instance_models_total)", 2), timeout=30, what="2 copies")
            # the cluster totals come from the leader alone
            wait_for(equals("sum(modelmesh_models_managed_total)", 3), timeout=30, what="3 managed models")
            assert prom.value("count(modelmesh_models_managed_total)") == 1
            wait_for(equals("sum(modelmesh_models_loaded_total)", 2), timeout=30, what="2 loaded models")
            wait_for(
                equals("sum(modelmesh_models_with_failure_total)", 1),
                timeout=30,
                what="1 model with failures",
            )
            # every inference request was sized; the runtime was invoked at least once per OK request
            assert (
                prom.value('sum(modelmesh_request_size_bytes_count{method="ModelInfer"})') == 39
            )  # + the broken one
            assert (
                prom.value('sum(modelmesh_invoke_model_milliseconds_count{method="ModelInfer",code="OK"})')
                == 35
            )
            # the median request time lies in (0, the bucket bound above the slowest time the client saw]
            p50 = prom.value(
                'histogram_quantile(0.5, sum by (le) (modelmesh_api_request_milliseconds_bucket{code="OK"}))'
            )
            bound = next((b for b in MS_TIME_BUCKETS if b >= max(latencies)), float("inf"))
            assert p50 is not None and 0 < p50 <= bound, (p50, max(latencies))
            assert prom.value("max(modelmesh_instance_capacity_bytes)") == cluster.capacity
            # the dashboard's queries are valid PromQL over these series
            dashboard = json.loads(DASHBOARD.read_text())
            exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
            for expr in exprs:
                prom.query(expr.replace("$__rate_interval", "1m"))
            names = set(re.findall(r"modelmesh_[a-z_]+", " ".join(exprs)))
            for name in names:
                assert prom.query(f"count({name})"), f"dashboard series {name} is not exported"
