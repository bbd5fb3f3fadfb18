"""The trust boundary as seen through the real built-in runtime process (SPI and V2 over real gRPC):
links that leave the models root, storage_params attacks, unreachable storage endpoints, oversized
registration fields, hostile tensors, and no credential in any answer or log line.

Storage is real: moto_server for S3, ``http.server`` recorders for HTTP, and closed loopback ports for
endpoints that refuse connections. The runtime runs at DEBUG so that libraries' own log lines pass the
runtime's redacting filter too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from protos.inference import grpc_predict_v2_pb2 as pb
from protos.mmesh import model_runtime_pb2 as rt
from runtime_adapters.limits import MAX_MODEL_KEY_CHARS, MAX_MODEL_PATH_CHARS, MAX_MODEL_TYPE_CHARS
from tests.integration.test_puller_trust import TOKEN, Recorder
from tests.integration.test_runtime_builtin import Runtime
from tests.support.s3 import free_port, moto_server  # noqa: F401  (fixture)

PW = "runtime-url-password-42"


def _onnx_identity(path: Path, elem_type: int) -> None:
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem_type, [None, 4])],
        [helper.make_tensor_value_info("y", elem_type, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def recorders() -> Iterator[tuple[Recorder, Recorder]]:
    started = [Recorder(), Recorder()]
    for s in started:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        yield started[0], started[1]
    finally:
        for s in started:
            s.shutdown()
            s.server_close()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory, recorders, moto_server) -> Iterator[Runtime]:  # noqa: F811
    from onnx import TensorProto

    legit, _ = recorders
    tmp = tmp_path_factory.mktemp("trust")
    root, outside = tmp / "root", tmp / "outside"
    _onnx_identity(root / "fp32" / "model.onnx", TensorProto.FLOAT)
    _onnx_identity(root / "fp16" / "model.onnx", TensorProto.FLOAT16)
    _onnx_identity(outside / "dir" / "model.onnx", TensorProto.FLOAT)
    (root / "escape-file").mkdir()
    (root / "escape-file" / "model.onnx").symlink_to(outside / "dir" / "model.onnx")
    (root / "escape-dir").mkdir()
    (root / "escape-dir" / "sub").symlink_to(outside / "dir")
    (root / "inside-link").mkdir()
    (root / "inside-link" / "model.onnx").symlink_to("../fp32/model.onnx")
    closed = free_port()
    entries = {
        "s3": moto_server.entry(bucket="models"),
        "s3down": {"type": "s3", "endpoint_url": f"http://127.0.0.1:{closed}", "bucket": "b",
                   "access_key_id": "AKIAEXAMPLE", "secret_access_key": PW},
        "web": {"type": "http", "url": f"{legit.url}/files", "headers": {"Authorization": TOKEN}},
        "webdown": {"type": "http", "url": f"http://alice:{PW}@127.0.0.1:{closed}/m"},
    }  # fmt: skip
    config = tmp / "storage.json"
    config.write_text(json.dumps(entries))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("PULLER_MAX_ATTEMPTS", "2"), ("PULLER_RETRY_BACKOFF_S", "0.01"),
                            ("PULLER_CONNECT_TIMEOUT_S", "2"), ("LOG_LEVEL", "DEBUG")):  # fmt: skip
            mp.setenv(name, value)
        r = Runtime(tmp, root, "--storage-config", str(config))
    r.outside = outside  # type: ignore[attr-defined]
    yield r
    code = r.stop()
    log = r.log_path.read_text(errors="replace")
    assert code == 0, r.log()
    assert PW not in log and "stored-token" not in log, "a credential reached the runtime's log"


def _load_error(r: Runtime, model_id: str, path: str, key: dict | None = None, mtype: str = "onnx"):
    req = rt.LoadModelRequest(
        modelId=model_id, modelType=mtype, modelPath=path, modelKey=json.dumps(key or {})
    )
    with pytest.raises(grpc.RpcError) as info:
        r.spi.loadModel(req, timeout=60)
    return info.value


def test_links_outside_the_root_fail_the_load(runtime: Runtime) -> None:
    for path, link in (("escape-file", "escape-file/model.onnx"), ("escape-dir", "escape-dir/sub")):
        err = _load_error(runtime, f"esc-{path}", path)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"'{link}' is a symbolic link to a place outside it" in err.details()
        assert str(runtime.outside) not in err.details()  # type: ignore[attr-defined]
        assert not runtime.v2.ModelReady(pb.ModelReadyRequest(name=f"esc-{path}"), timeout=5).ready
    ok = rt.LoadModelRequest(modelId="inside", modelType="onnx", modelPath="inside-link")
    assert runtime.spi.loadModel(ok, timeout=60).sizeInBytes > 0  # links inside the root are fine


def test_storage_params_attacks_are_refused_before_any_request(runtime: Runtime, recorders) -> None:
    legit, attacker = recorders
    attacks = [
        ({"storage_key": "web", "storage_params": {"url": f"{attacker.url}/files"}}, "url"),
        ({"storage_key": "s3", "storage_params": {"type": "local", "path": "/"}}, "type"),
        ({"storage_key": "s3", "storage_params": {"endpoint_url": attacker.url}}, "endpoint_url"),
    ]
    for key, param in attacks:
        err = _load_error(runtime, "attack", "model.bin", key)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (
            f"storage_params '{param}' may not be set for storage key '{key['storage_key']}'" in err.details()
        )
    assert attacker.seen == [] and legit.seen == []


@pytest.mark.parametrize(
    ("storage_key", "where"),
    [("s3down", "s3 storage 's3down' at 127.0.0.1:"), ("webdown", "http storage 'webdown' at 127.0.0.1:")],
)
def test_unreachable_storage_is_a_load_failure_not_runtime_unavailable(
    runtime: Runtime, storage_key: str, where: str
) -> None:
    err = _load_error(runtime, f"down-{storage_key}", "model.onnx", {"storage_key": storage_key})
    # Not UNAVAILABLE: the mesh reads that as "the runtime is down" and blames the runtime and its peer.
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details().startswith(where)
    assert "unreachable after 2 attempt(s): cannot connect" in err.details()
    assert PW not in err.details()
    assert (
        runtime.spi.runtimeStatus(rt.RuntimeStatusRequest(), timeout=10).status
        == rt.RuntimeStatusResponse.READY
    )


def test_oversized_and_malformed_registration_fields(runtime: Runtime) -> None:
    cases = [
        ("modelType", rt.LoadModelRequest(modelId="big", modelType="x" * (MAX_MODEL_TYPE_CHARS + 1)),
         MAX_MODEL_TYPE_CHARS),
        ("modelPath", rt.LoadModelRequest(modelId="big", modelType="onnx", modelPath="p" * (1 << 20)),
         MAX_MODEL_PATH_CHARS),
        ("modelKey", rt.LoadModelRequest(modelId="big", modelType="onnx", modelPath="p",
                                         modelKey="k" * (2 << 20)), MAX_MODEL_KEY_CHARS),
    ]  # fmt: skip
    for field, req, limit in cases:
        for call in (runtime.spi.loadModel, runtime.spi.predictModelSize):
            kwargs = {n: getattr(req, n) for n in ("modelId", "modelType", "modelPath", "modelKey")}
            message = req if call is runtime.spi.loadModel else rt.PredictModelSizeRequest(**kwargs)
            with pytest.raises(grpc.RpcError) as info:
                call(message, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert info.value.details().startswith(f"{field} is too long (") and f"> {limit} characters" in (
                info.value.details()
            )
    req = rt.LoadModelRequest(modelId="deep", modelType="onnx", modelPath="fp32", modelKey="[" * 5000)
    with pytest.raises(grpc.RpcError) as info:
        runtime.spi.loadModel(req, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid model key" in info.value.details()


def test_hostile_tensors_get_invalid_argument_and_no_traceback(runtime: Runtime) -> None:
    log_start = len(runtime.log_path.read_bytes())
    for model_id, path in (("fp32", "fp32"), ("fp16", "fp16")):
        runtime.spi.loadModel(
            rt.LoadModelRequest(modelId=model_id, modelType="onnx", modelPath=path), timeout=60
        )

    def infer(model_id: str, datatype: str, fill) -> grpc.RpcError:
        req = pb.ModelInferRequest(model_name=model_id)
        t = req.inputs.add(name="x", datatype=datatype, shape=[1, 4])
        fill(t.contents)
        with pytest.raises(grpc.RpcError) as info:
            runtime.v2.ModelInfer(req, timeout=10)
        return info.value

    err = infer("fp32", "UINT16", lambda c: c.uint_contents.extend([1, 2, 3, 70000]))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "input 'x': value 70000 is out of range for UINT16 (0..65535)"
    )  # fmt: skip
    err = infer("fp32", "BYTES", lambda c: c.bytes_contents.extend([b"a", b"b", b"c", b"d"]))
    assert (err.code(), err.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "input 'x' is BYTES but the model expects FP32"
    )  # fmt: skip
    err = infer("fp16", "FP32", lambda c: c.fp32_contents.extend([1.0, 2.0, 3.0, 70000.0]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "input 'x': value 70000.0 is out of range for FP16 (the model's datatype)"

    ok = pb.ModelInferRequest(model_name="fp16")
    ok.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
    out = runtime.v2.ModelInfer(ok, timeout=10)
    assert np.asarray(out.outputs[0].contents.fp32_contents).tolist() == [1, 2, 3, 4]
    log = runtime.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert "ModelInfer: INVALID_ARGUMENT input 'x' is BYTES" in log  # logged, at DEBUG, without a traceback
    assert "Traceback" not in log and "failed unexpectedly" not in log
