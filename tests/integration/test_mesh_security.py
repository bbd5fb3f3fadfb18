"""Trust boundaries of a pod against a hostile client (issue 13), on a real 2-pod cluster:

- internal metadata (``mm-internal``, ``mm-hop``, ``mm-exclude``, ``mm-lu``) from a client is refused with
  PERMISSION_DENIED naming the header, on inference and on ensureLoaded; pods still use it among themselves;
- client-chosen method names never become metric label values (nor cached handlers);
- a request too large for the peer that holds the model fails with RESOURCE_EXHAUSTED and does not load a
  second copy on the ingress pod;
- oversized registration fields are refused with INVALID_ARGUMENT naming the field and the limit.
"""

from __future__ import annotations

import json
import urllib.request
import uuid

import grpc
import numpy as np
import pytest

from mesh.client import MODEL_ID_HEADER, MeshClientError, build_infer_request
from mesh.ids import MAX_PATH_LENGTH, MAX_TYPE_LENGTH
from protos.inference import grpc_predict_v2_pb2 as v2
from protos.mmesh import model_mesh_pb2 as mpb
from tests.support.mesh_cluster import FAST_POD_ARGS, MeshTestCluster, make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)

INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def cluster(etcd_server, samples):  # noqa: F811
    with make_cluster(etcd_server.endpoint, samples, pods=2) as c:
        yield c


def _sample(samples, i: int) -> dict:  # noqa: F811
    return [m for m in samples["models"] if m["group"] == "many"][i]


def _request(m: dict) -> v2.ModelInferRequest:
    inp = m["input"]
    return build_infer_request(
        m["id"], {inp["name"]: np.asarray(inp["data"], np.float32).reshape(inp["shape"])}
    )


def _raw(address: str, method: str, payload: bytes, metadata) -> grpc.RpcError | bytes:
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            return call(payload, metadata=metadata, timeout=20)
        except grpc.RpcError as exc:
            return exc


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("mm-internal", "load"),
        ("mm-internal", "hit"),
        ("mm-hop", "1"),
        ("mm-exclude", "pod-1"),
        ("mm-lu", "9" * 15),
    ],
)
def test_internal_headers_from_a_client_are_refused(cluster, samples, header, value):  # noqa: F811
    m = _sample(samples, 0)
    cluster.client(0).register(m["id"], m["type"], m["path"])
    out = _raw(
        cluster.addresses[0],
        INFER,
        _request(m).SerializeToString(),
        [(MODEL_ID_HEADER, m["id"]), (header, value)],
    )
    assert isinstance(out, grpc.RpcError), "a client's internal header was honoured"
    assert out.code() == grpc.StatusCode.PERMISSION_DENIED
    assert header in out.details()
    # a forged token is no better
    forged = _raw(
        cluster.addresses[0],
        INFER,
        _request(m).SerializeToString(),
        [(MODEL_ID_HEADER, m["id"]), (header, value), ("mm-peer-token", "guess")],
    )
    assert isinstance(forged, grpc.RpcError) and forged.code() == grpc.StatusCode.PERMISSION_DENIED


def test_ensure_loaded_with_internal_metadata_from_a_client_is_refused(cluster, samples):  # noqa: F811
    m = _sample(samples, 1)
    c = cluster.client(0)
    c.register(m["id"], m["type"], m["path"])
    out = _raw(
        cluster.addresses[0],
        "/mmesh.ModelMesh/ensureLoaded",
        mpb.EnsureLoadedRequest(modelId=m["id"], sync=True).SerializeToString(),
        [("mm-internal", "copy")],
    )
    assert isinstance(out, grpc.RpcError) and out.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "mm-internal" in out.details()
    assert c.status(m["id"])["status"] == "NOT_LOADED"  # nothing was loaded for it


def test_pods_still_forward_among_themselves(cluster, samples):  # noqa: F811
    m = _sample(samples, 2)
    c0, c1 = cluster.client(0), cluster.client(1)
    c0.register(m["id"], m["type"], m["path"])
    req = _request(m)
    c0.infer_raw(req)
    c1.infer_raw(req)  # one of the two calls was forwarded (a model has one copy here)
    forwarded = sum(cluster.metric(i, "modelmesh_requests_routed_total", 'route="forward') for i in range(2))
    assert forwarded >= 1


def _label_values(cluster, index: int, metric: str, label: str) -> set[str]:
    url = f"http://127.0.0.1:{cluster.pods[index].metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = set()
    for line in text.splitlines():
        if line.startswith(metric) and f'{label}="' in line:
            out.add(line.split(f'{label}="', 1)[1].split('"', 1)[0])
    return out


def test_client_method_names_never_become_label_values(cluster, samples):  # noqa: F811
    m = _sample(samples, 3)
    cluster.client(0).register(m["id"], m["type"], m["path"])
    for i in range(300):
        out = _raw(cluster.addresses[0], f"/attacker.Svc{i}/Method{i}", b"", [(MODEL_ID_HEADER, m["id"])])
        assert isinstance(out, grpc.RpcError)
        assert out.code() == grpc.StatusCode.UNIMPLEMENTED, out.details()
    labels = _label_values(cluster, 0, "modelmesh_api_request_milliseconds_count", "method")
    assert labels <= {"ModelInfer", "ModelReady", "ModelMetadata", "other"}, labels
    assert "other" in labels


def test_a_request_too_large_for_the_holder_does_not_load_a_second_copy(etcd_server, samples):  # noqa: F811
    """pod-1 accepts 1 MiB messages, pod-0 16 MiB; the model is loaded on pod-1 only. A 2 MiB request to pod-0
    is forwarded, pod-1's gRPC refuses it (RESOURCE_EXHAUSTED, no mesh error trailer): that is the request's
    fault, not "pod-1 is full", so no copy is loaded on pod-0 and the client gets RESOURCE_EXHAUSTED."""

    class SmallPeer(MeshTestCluster):
        """pod-1: the only pod models may load on (a required label), with a 1 MiB message limit."""

        def pod_cmd(self, index, port, runtime_port, metrics_port, rest_port=0):
            cmd = super().pod_cmd(index, port, runtime_port, metrics_port, rest_port)
            return [*cmd, "--max-message-bytes", str(1 << 20), "--labels", "holder"] if index == 1 else cmd

    m = _sample(samples, 4)
    with SmallPeer(
        pods=2,
        capacity=2_000_000,
        models_dir=samples["dir"],
        etcd=etcd_server.endpoint,
        kv_root=f"/mmtest/{uuid.uuid4().hex}/",
        pod_args=(*FAST_POD_ARGS, "--type-constraints", json.dumps({"_default": {"required": ["holder"]}})),
    ) as c:
        c1 = c.client(1)
        c1.register(m["id"], m["type"], m["path"])
        c1.infer_raw(_request(m))  # loaded on pod-1
        wait_for(lambda: c.client(0).status(m["id"])["status"] == "LOADED", what="pod-0 sees the copy")
        big = _request(m)
        big.raw_input_contents.append(b"\0" * (2 << 20))
        with pytest.raises(MeshClientError) as err:
            c.client(0).infer_raw(big)
        assert err.value.code == "RESOURCE_EXHAUSTED"
        copies = c.client(0).status(m["id"])["copies"]
        assert [x["location"] for x in copies] == ["pod-1"], copies
        assert c.metric(0, "modelmesh_loadmodel_milliseconds_count") == 0


@pytest.mark.parametrize(
    ("field", "limit"),
    [("type", MAX_TYPE_LENGTH), ("path", MAX_PATH_LENGTH)],
)
def test_oversized_registration_fields_are_refused(cluster, field, limit):
    c = cluster.client(0)
    info = {"model_type": "sklearn", "path": "x"}
    info["model_type" if field == "type" else "path"] = "a" * (limit + 1)
    with pytest.raises(MeshClientError) as err:
        c.register(f"huge-{field}", info["model_type"], info["path"])
    assert err.value.code == "INVALID_ARGUMENT"
    assert f"modelInfo.{field}" in err.value.message and str(limit) in err.value.message
    with pytest.raises(MeshClientError) as err:
        c.register("huge-key", "sklearn", "x", key="k" * (1 << 20))
    assert err.value.code == "INVALID_ARGUMENT" and "modelInfo.key" in err.value.message
