"""The built-in runtime as a real process over real gRPC: SPI (mmesh.ModelRuntime) and V2 inference.

Samples are generated into a temp dir (``runtime_adapters.builtin.samples``), the runtime is started with
``python -m runtime_adapters.builtin`` on a free loopback port with that dir as its local root, and every
check goes over the wire. A second, short-lived runtime with a 100 ms loading timeout covers the deadline
path and the SIGTERM exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from mesh.process import free_port
from protos.inference import grpc_predict_v2_pb2 as pb
from protos.inference import grpc_predict_v2_pb2_grpc as pbg
from protos.mmesh import model_runtime_pb2 as rt
from protos.mmesh import model_runtime_pb2_grpc as rtg
from runtime_adapters.builtin import samples

REPO = Path(__file__).resolve().parents[2]
CAPACITY = 300_000_000
V2 = "inference.GRPCInferenceService"


class Runtime:
    def __init__(self, tmp: Path, local_root: Path, *extra: str) -> None:
        self.port = free_port()
        self.log_path = tmp / f"runtime-{self.port}.log"
        cmd = [
            sys.executable, "-m", "runtime_adapters.builtin", "--host", "127.0.0.1", "--port", str(self.port),
            "--capacity", str(CAPACITY), "--model-dir", str(tmp / "models"), "--local-root", str(local_root),
            *extra,
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("ROOT_MODEL_DIR", "STORAGE_CONFIG")}
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.spi = rtg.ModelRuntimeStub(self.channel)
        self.v2 = pbg.GRPCInferenceServiceStub(self.channel)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.v2.ServerLive(pb.ServerLiveRequest(), timeout=1)
                return
            except grpc.RpcError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"runtime did not start:\n{self.log()}") from None
                time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("samples")
    manifest = samples.build(out, many=3)
    # A corrupt copy of a sklearn model, inside the same local root.
    bad = out / "broken" / "bad-joblib"
    bad.mkdir(parents=True)
    (bad / "model.joblib").write_bytes(b"this is not a pickle\x00\x01garbage")
    (out / "broken" / "empty").mkdir()
    return out, manifest


@pytest.fixture(scope="module")
def runtime(sample_dir, tmp_path_factory) -> Iterator[Runtime]:
    out, _ = sample_dir
    rt_ = Runtime(tmp_path_factory.mktemp("rt"), out)
    yield rt_
    code = rt_.stop()
    assert code == 0, rt_.log()


def _defaults(manifest: dict) -> list[dict]:
    return [m for m in manifest["models"] if m["group"] == "default"]


def _load(r: Runtime, entry: dict, model_id: str | None = None) -> int:
    req = rt.LoadModelRequest(
        modelId=model_id or entry["id"], modelType=entry["type"], modelPath=entry["path"]
    )
    return r.spi.loadModel(req, timeout=60).sizeInBytes


def _typed_request(entry: dict, model_name: str) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model_name, id="req-1")
    t = req.inputs.add(name="input-0", datatype="FP32", shape=entry["input"]["shape"])
    t.contents.fp32_contents.extend(entry["input"]["data"])
    return req


def _raw_request(entry: dict, model_name: str) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model_name)
    req.inputs.add(name="input-0", datatype="FP32", shape=entry["input"]["shape"])
    req.raw_input_contents.append(np.asarray(entry["input"]["data"], dtype="<f4").tobytes())
    return req


def _output_values(resp: pb.ModelInferResponse, index: int, raw: bool) -> list:
    out = resp.outputs[index]
    if raw:
        dtype = {"INT64": "<i8", "INT32": "<i4", "FP32": "<f4", "FP64": "<f8", "BOOL": "?"}[out.datatype]
        return np.frombuffer(resp.raw_output_contents[index], dtype=dtype).tolist()
    c = out.contents
    return list(c.int64_contents or c.int_contents or c.fp32_contents or c.fp64_contents or c.bool_contents)


def _check_expected(resp: pb.ModelInferResponse, entry: dict, raw: bool) -> None:
    got = {o.name: i for i, o in enumerate(resp.outputs)}
    assert set(got) == set(entry["expected"]), (list(got), entry["id"])
    for name, want in entry["expected"].items():
        i = got[name]
        assert resp.outputs[i].datatype == want["datatype"], name
        assert list(resp.outputs[i].shape) == want["shape"], name
        np.testing.assert_allclose(_output_values(resp, i, raw), want["data"], rtol=1e-5, atol=1e-6)


def test_runtime_status(runtime: Runtime) -> None:
    st = runtime.spi.runtimeStatus(rt.RuntimeStatusRequest(), timeout=10)
    assert st.status == rt.RuntimeStatusResponse.READY
    assert st.capacityInBytes == CAPACITY
    assert st.maxLoadingConcurrency == 1
    assert st.modelLoadingTimeoutMs == 90_000
    assert st.defaultModelSizeInBytes == 1_000_000
    assert st.runtimeVersion
    assert {k: list(v.idInjectionPath) for k, v in st.methodInfos.items()} == {
        f"{V2}/ModelInfer": [1],
        f"{V2}/ModelMetadata": [1],
        f"{V2}/ModelReady": [1],
    }


def test_load_and_infer_every_format(runtime: Runtime, sample_dir) -> None:
    _, manifest = sample_dir
    for entry in _defaults(manifest):
        size = _load(runtime, entry)
        assert size > 0, entry["id"]
        assert _load(runtime, entry) == size  # a second load of a loaded model is a no-op
        _check_expected(
            runtime.v2.ModelInfer(_typed_request(entry, entry["id"]), timeout=10), entry, raw=False
        )
        raw_resp = runtime.v2.ModelInfer(_raw_request(entry, entry["id"]), timeout=10)
        assert raw_resp.raw_output_contents and raw_resp.model_name == entry["id"]
        _check_expected(raw_resp, entry, raw=True)
        assert runtime.v2.ModelReady(pb.ModelReadyRequest(name=entry["id"]), timeout=5).ready
        meta = runtime.v2.ModelMetadata(pb.ModelMetadataRequest(name=entry["id"]), timeout=5)
        assert meta.name == entry["id"] and meta.platform == entry["type"]
        assert meta.inputs and {o.name for o in meta.outputs} == set(entry["expected"])
        assert runtime.spi.modelSize(rt.ModelSizeRequest(modelId=entry["id"]), timeout=5).sizeInBytes == size


def test_model_id_from_metadata_wins(runtime: Runtime, sample_dir) -> None:
    _, manifest = sample_dir
    many = [m for m in manifest["models"] if m["group"] == "many"]
    for m in many:
        _load(runtime, m)
    for m in many:  # body names another model; the header decides; distinct models give distinct results
        resp = runtime.v2.ModelInfer(_typed_request(m, many[0]["id"]), metadata=[("mm-model-id", m["id"])])
        _check_expected(resp, m, raw=False)
    assert len({m["expected"]["predict"]["data"][0] for m in many}) == len(many)
    resp = runtime.v2.ModelInfer(
        _typed_request(many[1], ""), metadata=[("mm-model-id-bin", many[1]["id"].encode())]
    )
    _check_expected(resp, many[1], raw=False)


def test_bad_requests(runtime: Runtime, sample_dir) -> None:
    _, manifest = sample_dir
    entry = _defaults(manifest)[0]
    _load(runtime, entry)
    raw_infer = runtime.channel.unary_unary(f"/{V2}/ModelInfer")
    with pytest.raises(grpc.RpcError) as info:
        raw_infer(b"\xff\xff\xff\xff garbage", timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ModelInferRequest" in info.value.details()

    req = _typed_request(entry, entry["id"])
    req.inputs[0].shape[:] = [2, 4]
    with pytest.raises(grpc.RpcError) as info:
        runtime.v2.ModelInfer(req, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs 8 values" in info.value.details()

    req = _typed_request(entry, entry["id"])
    req.inputs[0].shape[:] = [2, 2]
    with pytest.raises(grpc.RpcError) as info:
        runtime.v2.ModelInfer(req, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "features" in info.value.details()

    with pytest.raises(grpc.RpcError) as info:
        runtime.v2.ModelInfer(_typed_request(entry, "no-such-model"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "model 'no-such-model' is not loaded"
    assert not runtime.v2.ModelReady(pb.ModelReadyRequest(name="no-such-model"), timeout=5).ready
    with pytest.raises(grpc.RpcError) as info:
        runtime.v2.ModelMetadata(pb.ModelMetadataRequest(name="no-such-model"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_load_errors(runtime: Runtime, sample_dir) -> None:
    with pytest.raises(grpc.RpcError) as info:
        runtime.spi.loadModel(
            rt.LoadModelRequest(modelId="t1", modelType="tensorflow", modelPath="sklearn/iris-lr")
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'tensorflow'" in info.value.details() and "sklearn" in info.value.details()

    with pytest.raises(grpc.RpcError) as info:
        runtime.spi.loadModel(
            rt.LoadModelRequest(modelId="bad", modelType="sklearn", modelPath="broken/bad-joblib")
        )
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "failed to load model 'bad'" in info.value.details()
    assert "model.joblib" in info.value.details()
    assert not runtime.v2.ModelReady(pb.ModelReadyRequest(name="bad"), timeout=5).ready

    with pytest.raises(grpc.RpcError) as info:
        runtime.spi.loadModel(
            rt.LoadModelRequest(modelId="empty", modelType="onnx", modelPath="broken/empty")
        )
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "no onnx model file" in info.value.details() and "broken/empty" in info.value.details()

    with pytest.raises(grpc.RpcError) as info:
        runtime.spi.loadModel(
            rt.LoadModelRequest(modelId="gone", modelType="sklearn", modelPath="sklearn/nope")
        )
    assert "sklearn/nope" in info.value.details()


def test_unload_is_idempotent(runtime: Runtime, sample_dir) -> None:
    _, manifest = sample_dir
    entry = _defaults(manifest)[1]
    _load(runtime, entry, model_id="to-unload")
    assert runtime.v2.ModelReady(pb.ModelReadyRequest(name="to-unload")).ready
    runtime.spi.unloadModel(rt.UnloadModelRequest(modelId="to-unload"), timeout=10)
    runtime.spi.unloadModel(rt.UnloadModelRequest(modelId="to-unload"), timeout=10)
    runtime.spi.unloadModel(rt.UnloadModelRequest(modelId="never-loaded"), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        runtime.v2.ModelInfer(_typed_request(entry, "to-unload"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        runtime.spi.modelSize(rt.ModelSizeRequest(modelId="to-unload"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert (Path(sample_dir[0]) / entry["file"]).exists()  # local artifacts are never deleted


def test_sizes(runtime: Runtime, sample_dir) -> None:
    _, manifest = sample_dir
    by_id = {m["id"]: m for m in manifest["models"]}
    small, large = by_id["sklearn-iris-rf-small"], by_id["sklearn-iris-rf-large"]
    runtime.spi.runtimeStatus(rt.RuntimeStatusRequest(), timeout=10)
    size_small = _load(runtime, small, "rf-small")
    size_large = _load(runtime, large, "rf-large")
    assert size_large > size_small
    assert size_large >= large["disk_size_bytes"]

    def predicted(entry: dict, path: str | None = None, key: str = "") -> int:
        req = rt.PredictModelSizeRequest(
            modelId="p", modelType=entry["type"], modelPath=path or entry["path"], modelKey=key
        )
        return runtime.spi.predictModelSize(req, timeout=2).sizeInBytes

    assert predicted(large) > predicted(small)
    assert predicted(large) >= large["disk_size_bytes"]
    assert predicted(large, f"file://{sample_dir[0] / large['path']}") == predicted(large)
    # unknown without a download: 0 tells the mesh to use its own (configurable) default size
    assert predicted(large, "s3-bucket/some/model", '{"storage_key": "s3"}') == 0
    assert predicted(large, "/etc") == 0  # outside the local roots: never sized


def test_runtime_status_purges(runtime: Runtime, sample_dir) -> None:
    _, manifest = sample_dir
    entry = _defaults(manifest)[0]
    _load(runtime, entry, "purge-me")
    assert runtime.v2.ModelReady(pb.ModelReadyRequest(name="purge-me")).ready
    st = runtime.spi.runtimeStatus(rt.RuntimeStatusRequest(), timeout=10)
    assert st.status == rt.RuntimeStatusResponse.READY
    assert not runtime.v2.ModelReady(pb.ModelReadyRequest(name="purge-me")).ready


def test_load_timeout_and_sigterm(sample_dir, tmp_path) -> None:
    out, _ = sample_dir
    local = tmp_path / "root"
    shutil.copytree(out / "sklearn" / "iris-rf-large", local / "rf")
    r = Runtime(tmp_path, local, "--load-timeout-ms", "100")
    try:
        # The first sklearn load imports scikit-learn, far longer than 100 ms.
        with pytest.raises(grpc.RpcError) as info:
            r.spi.loadModel(
                rt.LoadModelRequest(modelId="slow", modelType="sklearn", modelPath="rf"), timeout=30
            )
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "timed out after 100 ms" in info.value.details()
        time.sleep(1.5)  # the abandoned load thread finishes; its model must not appear
        assert not r.v2.ModelReady(pb.ModelReadyRequest(name="slow"), timeout=5).ready
        assert (local / "rf" / "model.joblib").exists()
    finally:
        code = r.stop()
    assert code == 0, r.log()
    assert "stopped" in r.log()
