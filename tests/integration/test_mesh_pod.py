"""One pod end to end: a real etcd, a real `mesh serve` process supervising the real built-in runtime.

What needs the real runtime (every model format, the runtime's own load errors and payload parsing) or a real
process (SIGTERM/SIGKILL and restart, a killed runtime restarted by the pod's supervisor). One pod serves the
module; the tests that kill it or its runtime come last and leave it running again. The pod's own behaviour
(single-flight loads, LRU eviction, sizes, unregister, ids and request validation, V2 server methods) is
tested on in-process pods: tests/inprocess/test_pod_behaviour.py.
"""

from __future__ import annotations

import signal

import grpc
import numpy as np
import pytest

from mesh.client import MeshClientError
from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)

CAPACITY = 2_000_000


@pytest.fixture(scope="module")
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
    model_id = "first-" + sample["id"]
    st = register(c, sample, model_id)
    assert st["status"] == "NOT_LOADED"
    assert not pod.runtime_ready(0, model_id)
    check_prediction(sample, infer_sample(c, sample, model_id))
    assert c.status(model_id)["status"] == "LOADED"
    assert pod.runtime_ready(0, model_id)
    check_prediction(sample, infer_sample(c, sample, model_id, raw=True))


@pytest.mark.parametrize("model", ["xgboost-iris", "lightgbm-iris", "onnx-iris", "sklearn-diabetes-ridge"])
def test_every_format_through_the_mesh(pod, samples, model):  # noqa: F811
    sample = samples["by_id"][model]
    c = pod.client()
    register(c, sample)
    check_prediction(sample, infer_sample(c, sample, raw=True))


def _raw_call(pod, payload: bytes, metadata=()):
    with grpc.insecure_channel(pod.addresses[0]) as ch:
        call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        return call(payload, metadata=list(metadata), timeout=30)


def test_runtime_errors_reach_the_client(pod, samples):  # noqa: F811
    """The real runtime's verdicts: a malformed payload it parses (the model id came from the header), and
    load failures with the runtime's and the puller's own causes (LOADING_FAILED, the request gets it too)."""
    good = samples["by_id"]["sklearn-iris-lr"]
    c = pod.client()
    register(c, good, "good-iris")
    infer_sample(c, good, "good-iris")

    with pytest.raises(grpc.RpcError) as rpc:
        _raw_call(pod, b"\x0a\xff\xff\x01garbage", [("mm-model-id", "good-iris")])
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT

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
    check_prediction(good, infer_sample(c, good, "good-iris"))
    assert c.status("good-iris")["status"] == "LOADED"


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
    restarts = pod.metric(0, "modelmesh_runtime_restarts_total")
    runtimes[0].kill()
    # the copy leaves the cache and the registry at once, then the restarted runtime serves it again
    wait_for(lambda: c.status(sample["id"])["status"] == "NOT_LOADED", timeout=20, what="copy dropped")
    check_prediction(
        sample, wait_for(lambda: _try_infer(c, sample), timeout=60, what="inference after restart")
    )
    assert c.status(sample["id"])["status"] == "LOADED"
    assert pod.metric(0, "modelmesh_runtime_restarts_total") == restarts + 1


def _try_infer(client, sample):
    try:
        return infer_sample(client, sample)
    except MeshClientError as exc:
        assert exc.code == "UNAVAILABLE", exc  # retryable while the runtime restarts
        return None
