"""One pod end to end: a real etcd, a real `mesh serve` process supervising the real built-in runtime."""

from __future__ import annotations

import concurrent.futures as cf
import signal

import grpc
import numpy as np
import pytest

from mesh.client import MeshClientError, build_infer_request
from protos.inference import grpc_predict_v2_pb2 as v2
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)

CAPACITY = 2_000_000


@pytest.fixture
def pod(etcd_server, samples):  # noqa: F811
    cluster = make_cluster(etcd_server.endpoint, samples, capacity=CAPACITY)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def register(client, sample, model_id=None, **kw):
    return client.register(model_id or sample["id"], sample["type"], sample["path"], **kw)


def infer_sample(client, sample, model_id=None, raw=False):
    inp = sample["input"]
    data = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
    return client.infer(model_id or sample["id"], {inp["name"]: data}, raw=raw)


def check_prediction(sample, outputs):
    for name, want in sample["expected"].items():
        got = np.asarray(outputs[name]).ravel()
        np.testing.assert_allclose(
            got, np.asarray(want["data"], dtype=got.dtype).ravel(), rtol=1e-4, atol=1e-5
        )


def test_register_does_not_load_and_first_inference_loads(pod, samples):  # noqa: F811
    c = pod.client()
    sample = samples["by_id"]["sklearn-iris-lr"]
    st = register(c, sample)
    assert st["status"] == "NOT_LOADED"
    assert not pod.runtime_ready(0, sample["id"])
    check_prediction(sample, infer_sample(c, sample))
    assert c.status(sample["id"])["status"] == "LOADED"
    assert pod.runtime_ready(0, sample["id"])
    check_prediction(sample, infer_sample(c, sample, raw=True))


@pytest.mark.parametrize("model", ["xgboost-iris", "lightgbm-iris", "onnx-iris", "sklearn-diabetes-ridge"])
def test_every_format_through_the_mesh(pod, samples, model):  # noqa: F811
    sample = samples["by_id"][model]
    c = pod.client()
    register(c, sample)
    check_prediction(sample, infer_sample(c, sample, raw=True))


def test_load_now_loads_at_registration(pod, samples):  # noqa: F811
    sample = samples["by_id"]["sklearn-cancer-lr"]
    st = register(pod.client(), sample, load_now=True, sync=True)
    assert st["status"] == "LOADED"
    assert pod.runtime_ready(0, sample["id"])


def test_async_loads_answer_loading_and_unknown_ensure_loaded_fails(pod, samples):  # noqa: F811
    """ModelMesh's answers: an async loadNow registration and an async ensureLoaded report LOADING (the load
    has started), and ensureLoaded of an unknown id fails with NOT_FOUND."""
    c = pod.client()
    first, second = samples["by_id"]["lightgbm-iris"], samples["by_id"]["onnx-iris"]
    st = c.register(f"async-{first['id']}", first["type"], first["path"], load_now=True)
    assert st["status"] == "LOADING", st
    c.register(f"async-{second['id']}", second["type"], second["path"])
    assert c.ensure_loaded(f"async-{second['id']}")["status"] == "LOADING"
    for model_id in (f"async-{first['id']}", f"async-{second['id']}"):
        wait_for(lambda m=model_id: c.status(m)["status"] == "LOADED", what=f"{model_id} loaded")
    with pytest.raises(MeshClientError) as err:
        c.ensure_loaded("never-registered")
    assert err.value.code == "NOT_FOUND"


def test_concurrent_first_requests_share_one_load(pod, samples):  # noqa: F811
    sample = samples["by_id"]["sklearn-iris-rf-small"]
    c = pod.client()
    register(c, sample)
    with cf.ThreadPoolExecutor(16) as ex:
        results = list(ex.map(lambda _: infer_sample(pod.client(), sample), range(16)))
    for out in results:
        check_prediction(sample, out)
    assert pod.metric(0, "modelmesh_loadmodel_milliseconds_count") == 1


@pytest.fixture
def small_pod(etcd_server, samples):  # noqa: F811
    """A pod with room for a few models, evicting by LRU (the cost-aware default is tested by its ordering
    tests and the simulator; these tests pin the LRU rule, ModelMesh's)."""
    cluster = make_cluster(
        etcd_server.endpoint, samples, capacity=200_000, extra=("--eviction-policy", "lru")
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_eviction_is_least_recently_used_first(small_pod, samples):  # noqa: F811
    pod = small_pod
    many = [m for m in samples["models"] if m["group"] == "many"]
    c = pod.client()
    for m in many:
        register(c, m)
    # Fill the cache past its capacity in order; re-use the first model so it stays recent.
    order = []
    for i, m in enumerate(many):
        infer_sample(c, m)
        order.append(m["id"])
        if i % 3 == 0:
            infer_sample(c, many[0])
        if pod.metric(0, "modelmesh_age_at_eviction_milliseconds_count") >= 3:
            break
    assert pod.metric(0, "modelmesh_age_at_eviction_milliseconds_count") >= 3, "capacity never filled"
    loaded = {mid for mid in order if c.status(mid)["status"] == "LOADED"}
    assert many[0]["id"] in loaded, "a model in regular use was evicted"
    rest = [mid for mid in order if mid != many[0]["id"]]
    flags = [mid in loaded for mid in rest]
    # what survives is a suffix of the load order: never an older model kept while a newer one went
    assert flags == sorted(flags), f"eviction not in LRU order: {list(zip(rest, flags, strict=True))}"
    for mid in rest:
        assert pod.runtime_ready(0, mid) == (mid in loaded)
    # evicted models load again on demand
    check_prediction(many[1], infer_sample(c, many[1]))


def test_model_larger_than_capacity_fails_clearly(pod, samples):  # noqa: F811
    big = samples["by_id"]["sklearn-iris-rf-large"]
    c = pod.client()
    register(c, big)
    with pytest.raises(MeshClientError) as err:
        infer_sample(c, big)
    assert err.value.code == "RESOURCE_EXHAUSTED"
    assert "capacity" in err.value.message and big["id"] in err.value.message


def test_unregister_while_loaded_unloads(pod, samples):  # noqa: F811
    sample = samples["by_id"]["sklearn-iris-lr"]
    c = pod.client()
    register(c, sample)
    infer_sample(c, sample)
    assert pod.runtime_ready(0, sample["id"])
    c.unregister(sample["id"])
    assert c.status(sample["id"])["status"] == "NOT_FOUND"
    wait_for(lambda: not pod.runtime_ready(0, sample["id"]), what="runtime unload after unregister")
    with pytest.raises(MeshClientError) as err:
        infer_sample(c, sample)
    assert err.value.code == "NOT_FOUND"
    c.unregister(sample["id"])  # unknown model: no effect, no error


def _raw_call(pod, payload: bytes, metadata=()):
    with grpc.insecure_channel(pod.addresses[0]) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        return call(payload, metadata=list(metadata), timeout=30)


def test_bad_input(pod, samples):  # noqa: F811
    good = samples["by_id"]["sklearn-iris-lr"]
    c = pod.client()
    register(c, good)
    infer_sample(c, good)

    with pytest.raises(MeshClientError) as err:
        infer_sample(c, good, model_id="never-registered")
    assert err.value.code == "NOT_FOUND" and "never-registered" in err.value.message

    # no header and no model_name
    payload = build_infer_request("", {"x": np.zeros((1, 4), np.float32)}).SerializeToString()
    with pytest.raises(grpc.RpcError) as rpc:
        _raw_call(pod, payload)
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "mm-model-id" in rpc.value.details()

    for bad_id in ("a/b", "bad\x01id", "x" * 300):
        with pytest.raises(grpc.RpcError) as rpc:
            _raw_call(pod, payload, [("mm-model-id-bin", bad_id.encode())])
        assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad_id
        with pytest.raises(MeshClientError) as err:
            c.register(bad_id, "sklearn", "x")
        assert err.value.code == "INVALID_ARGUMENT"

    with pytest.raises(MeshClientError) as err:
        c.register("no-type", "", "sklearn/iris-lr")
    assert err.value.code == "INVALID_ARGUMENT" and "type" in err.value.message

    # malformed protobuf: from the header path (runtime parses) and from the model_name path (mesh scans)
    with pytest.raises(grpc.RpcError) as rpc:
        _raw_call(pod, b"\x0a\xff\xff\x01garbage", [("mm-model-id", good["id"])])
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as rpc:
        _raw_call(pod, b"\x0a\x05ab")
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # unknown type, missing artifact, corrupt artifact: LOADING_FAILED with the cause, request gets it too
    corrupt_dir = samples["dir"] / "corrupt"
    corrupt_dir.mkdir(exist_ok=True)
    (corrupt_dir / "model.joblib").write_bytes(b"this is not a model")
    cases = [
        ("bad-type", "tensorflow-nope", good["path"], "tensorflow-nope"),
        ("bad-path", "sklearn", "sklearn/does-not-exist", "does-not-exist"),
        ("bad-escape", "sklearn", "../../etc", "escapes"),
        ("bad-corrupt", "sklearn", "corrupt", "model.joblib"),
    ]
    for model_id, mtype, path, needle in cases:
        c.register(model_id, mtype, path)
        with pytest.raises(MeshClientError) as err:
            c.infer(model_id, {"input-0": np.zeros((1, 4), np.float32)})
        assert needle in err.value.message, (model_id, err.value.message)
        st = c.status(model_id)
        assert st["status"] == "LOADING_FAILED", (model_id, st)
        assert any(needle in e for e in st["errors"]), (model_id, st)

    # nothing registered was lost and the good model still serves
    check_prediction(good, infer_sample(c, good))
    assert c.status(good["id"])["status"] == "LOADED"


def test_server_methods_and_model_ready(pod, samples):  # noqa: F811
    sample = samples["by_id"]["sklearn-iris-lr"]
    c = pod.client()
    register(c, sample)
    with grpc.insecure_channel(pod.addresses[0]) as ch:
        stub = v2_grpc.GRPCInferenceServiceStub(ch)
        assert stub.ServerLive(v2.ServerLiveRequest()).live
        assert stub.ServerReady(v2.ServerReadyRequest()).ready
        assert stub.ServerMetadata(v2.ServerMetadataRequest()).name
        assert not stub.ModelReady(v2.ModelReadyRequest(name=sample["id"])).ready
        infer_sample(c, sample)
        assert stub.ModelReady(v2.ModelReadyRequest(name=sample["id"])).ready
        meta = stub.ModelMetadata(v2.ModelMetadataRequest(name=sample["id"]))
        assert meta.name == sample["id"]
        with pytest.raises(grpc.RpcError) as rpc:
            stub.RepositoryModelLoad(v2.RepositoryModelLoadRequest(model_name=sample["id"]))
        assert rpc.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_restart_keeps_registrations_and_nothing_stale(pod, samples, sig):  # noqa: F811
    c = pod.client()
    loaded = [samples["by_id"]["sklearn-iris-lr"], samples["by_id"]["xgboost-iris"]]
    idle = samples["by_id"]["lightgbm-iris"]
    for s in [*loaded, idle]:
        register(c, s)
    for s in loaded:
        infer_sample(c, s)
    pod.kill(0, sig)
    pod.restart(0)
    c = pod.client()
    for s in [*loaded, idle]:
        st = c.status(s["id"])
        assert st["status"] == "NOT_LOADED", (s["id"], st)
        assert not pod.runtime_ready(0, s["id"])
    for s in loaded:
        check_prediction(s, infer_sample(c, s))
        assert c.status(s["id"])["status"] == "LOADED"


def test_runtime_crash_is_detected_and_recovered(pod, samples):  # noqa: F811
    import psutil

    sample = samples["by_id"]["sklearn-iris-lr"]
    c = pod.client()
    register(c, sample)
    infer_sample(c, sample)
    assert c.status(sample["id"])["status"] == "LOADED"
    runtimes = [
        p
        for p in psutil.Process(pod.pods[0].pid).children(recursive=True)
        if "runtime_adapters.builtin" in " ".join(p.cmdline())
    ]
    assert len(runtimes) == 1
    runtimes[0].kill()
    # the copy leaves the cache and the registry at once, then the restarted runtime serves it again
    wait_for(lambda: c.status(sample["id"])["status"] == "NOT_LOADED", timeout=20, what="copy dropped")
    check_prediction(
        sample, wait_for(lambda: _try_infer(c, sample), timeout=60, what="inference after restart")
    )
    assert c.status(sample["id"])["status"] == "LOADED"
    assert pod.metric(0, "modelmesh_runtime_restarts_total") == 1


def _try_infer(client, sample):
    try:
        return infer_sample(client, sample)
    except MeshClientError as exc:
        assert exc.code == "UNAVAILABLE", exc  # retryable while the runtime restarts
        return None
