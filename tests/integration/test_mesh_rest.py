"""The V2 REST API of real pods: two `mesh serve` processes with built-in runtimes on the session etcd, called with
urllib (a plain HTTP client) and with tritonclient.http (a KServe V2 REST client no one here wrote).

Covers: the same routing as gRPC (a load on first use, a forward from the pod without the copy, a vModel id in the
path), the binary-data extension, the error table (404, 400, 405, 413) with JSON bodies, health endpoints,
metrics counting REST requests at the ingress pod only, and the JSON request log (MM_LOG_FORMAT=json,
MM_LOG_REQUESTS) with model, pod, route, status and duration and no header value."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)

SECRET = "Bearer sk-do-not-log-9f8e7d"


@pytest.fixture(scope="module")
def cluster(etcd_server, samples):  # noqa: F811
    c = make_cluster(
        etcd_server.endpoint,
        samples,
        pods=2,
        extra=("--log-format", "json", "--log-requests", "true", "--max-message-bytes", "200000"),
    )
    c.start()
    try:
        yield c
    finally:
        c.stop()


def http(port: int, path: str, body: bytes | None = None, *, method: str | None = None, headers=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def infer_body(sample) -> bytes:
    inp = sample["input"]
    return json.dumps(
        {
            "id": "req-1",
            "inputs": [{"name": inp["name"], "shape": inp["shape"], "datatype": "FP32", "data": inp["data"]}],
        }
    ).encode()


def check(sample, doc):
    outputs = {o["name"]: o for o in doc["outputs"]}
    for name, want in sample["expected"].items():
        np.testing.assert_allclose(np.asarray(outputs[name]["data"]).ravel(), np.asarray(want["data"]).ravel(),
                                   rtol=1e-4, atol=1e-5)  # fmt: skip


def rest_port(cluster, i: int) -> int:
    return cluster.pods[i].rest_port


def test_infer_over_rest_loads_then_forwards_like_grpc(cluster, samples):  # noqa: F811
    sample = samples["by_id"]["sklearn-iris-lr"]
    cluster.client(0).register(sample["id"], sample["type"], sample["path"])
    status, _, body = http(rest_port(cluster, 0), f"/v2/models/{sample['id']}/infer", infer_body(sample),
                           headers={"Authorization": SECRET, "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"})  # fmt: skip
    assert status == 200, body
    doc = json.loads(body)
    assert doc["model_name"] == sample["id"] and doc["id"] == "req-1"
    check(sample, doc)
    holder = cluster.client(0).status(sample["id"])
    assert holder["status"] == "LOADED"
    # from both pods: one of them holds the copy, the other forwards (same Router as gRPC)
    for i in (0, 1):
        status, _, body = http(rest_port(cluster, i), f"/v2/models/{sample['id']}/infer", infer_body(sample))
        assert status == 200
        check(sample, json.loads(body))
    forwarded = sum(cluster.metric(i, "modelmesh_requests_routed_total", 'route="forward"') for i in range(2))
    assert forwarded >= 1
    # REST requests are counted once, at the ingress pod, under ModelMesh's name
    counted = sum(
        cluster.metric(i, "modelmesh_api_request_milliseconds_count", 'method="ModelInfer"') for i in range(2)
    )
    assert counted == 3
    # metadata and readiness through the router; readiness never loads
    status, _, body = http(rest_port(cluster, 1), f"/v2/models/{sample['id']}")
    assert status == 200 and json.loads(body)["inputs"][0]["name"] == sample["input"]["name"]
    status, _, body = http(rest_port(cluster, 1), f"/v2/models/{sample['id']}/ready")
    assert status == 200 and json.loads(body) == {"name": sample["id"], "ready": True}
    other = samples["by_id"]["sklearn-cancer-lr"]
    cluster.client(0).register(other["id"], other["type"], other["path"])
    status, _, body = http(rest_port(cluster, 0), f"/v2/models/{other['id']}/ready")
    assert status == 400 and json.loads(body)["ready"] is False
    assert cluster.client(0).status(other["id"])["status"] == "NOT_LOADED"


def test_request_log_lines_are_json_with_route_and_no_secrets(cluster, samples):  # noqa: F811
    sample = samples["by_id"]["sklearn-iris-lr"]
    lines = []

    def request_lines():
        lines.clear()
        for i in range(2):
            for line in cluster.log(i).splitlines():
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if (
                    doc.get("logger") == "mesh.requests"
                    and doc.get("model_id") == sample["id"]
                    and doc.get("method") == "ModelInfer"
                ):
                    lines.append(doc)
        return len(lines) >= 3

    status, _, _ = http(rest_port(cluster, 0), f"/v2/models/{sample['id']}/infer", infer_body(sample),
                        headers={"Authorization": SECRET})  # fmt: skip
    assert status == 200
    wait_for(request_lines, timeout=10, what="request log lines")
    for doc in lines:
        assert {"ts", "level", "pod", "route", "method", "status", "duration_ms", "transport"} <= set(doc)
        assert doc["level"] == "INFO" and doc["status"] == "OK" and doc["duration_ms"] > 0
        assert doc["route"] in ("hit", "load", "forward", "forward-load")
    assert {d["route"] for d in lines} & {"hit", "load"}
    assert any(d.get("trace_id") == "a" * 32 for d in lines)  # the traceparent the first request carried
    for i in range(2):
        assert "sk-do-not-log" not in cluster.log(i)


def test_vmodel_id_in_the_path_resolves_to_its_active_model(cluster, samples):  # noqa: F811
    sample = samples["by_id"]["xgboost-iris"]
    cluster.client(0).set_vmodel(
        "rest-alias", sample["id"], sample["type"], sample["path"], load_now=True, sync=True
    )
    status, _, body = http(rest_port(cluster, 1), "/v2/models/rest-alias/infer", infer_body(sample))
    assert status == 200, body
    check(sample, json.loads(body))


def test_errors_have_the_documented_status_and_a_json_body(cluster, samples):  # noqa: F811
    sample = samples["by_id"]["sklearn-iris-lr"]
    port = rest_port(cluster, 0)
    cases = [
        ("/v2/models/no-such-model/infer", infer_body(sample), None, 404, "NOT_FOUND"),
        (f"/v2/models/{sample['id']}/infer", b'{"inputs": 5}', None, 400, "INVALID_ARGUMENT"),
        (f"/v2/models/{sample['id']}/infer", None, "GET", 405, "INVALID_ARGUMENT"),
        ("/v2/models/bad%2Fid/infer", infer_body(sample), None, 400, "INVALID_ARGUMENT"),
        ("/v3/anything", None, None, 404, "NOT_FOUND"),
    ]
    for path, body, method, want, code in cases:
        status, _, answer = http(port, path, body, method=method)
        assert status == want, (path, status, answer)
        doc = json.loads(answer)
        assert doc["code"] == code and doc["error"], doc
    big = json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a" * 300_000]}]})
    status, _, answer = http(port, f"/v2/models/{sample['id']}/infer", big.encode())
    assert status == 413 and "over the limit of 200000 bytes" in json.loads(answer)["error"]


def test_health_endpoints(cluster):
    for i in range(2):
        assert http(rest_port(cluster, i), "/v2/health/live")[0] == 200
        status, _, body = http(rest_port(cluster, i), "/v2/health/ready")
        assert status == 200 and json.loads(body) == {"ready": True}


def test_tritonclient_http_infers_with_binary_data(cluster, samples):  # noqa: F811
    httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")
    sample = samples["by_id"]["lightgbm-iris"]
    cluster.client(0).register(sample["id"], sample["type"], sample["path"])
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{rest_port(cluster, 1)}", network_timeout=60)
    try:
        assert client.is_server_live() and client.is_server_ready()
        inp = sample["input"]
        data = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
        for binary in (True, False):
            tensor = httpclient.InferInput(inp["name"], list(data.shape), "FP32")
            tensor.set_data_from_numpy(data, binary_data=binary)
            outputs = [
                httpclient.InferRequestedOutput(name, binary_data=binary) for name in sample["expected"]
            ]
            result = client.infer(sample["id"], [tensor], outputs=outputs)
            for name, want in sample["expected"].items():
                np.testing.assert_allclose(result.as_numpy(name).ravel(), np.asarray(want["data"]).ravel(),
                                           rtol=1e-4, atol=1e-5)  # fmt: skip
        assert client.is_model_ready(sample["id"])
        meta = client.get_model_metadata(sample["id"])
        assert meta["name"] == sample["id"]
        with pytest.raises(Exception) as err:
            client.infer("no-such-model", [tensor])
        assert "not found" in str(err.value)
    finally:
        client.close()
