"""A bounded network fuzz run against a live built-in runtime process (real gRPC over loopback).

Arbitrary bytes and arbitrary (structurally valid) ModelInferRequests go to ``ModelInfer``; arbitrary
registration fields go to ``loadModel``. Every answer must be a clear status: OK, INVALID_ARGUMENT or
NOT_FOUND for inference (never INTERNAL, UNKNOWN or UNAVAILABLE); for loads, never UNKNOWN or UNAVAILABLE,
and INTERNAL only as "failed to load model …" for an artifact the library cannot read. Afterwards the
runtime still serves, and its log holds no "failed unexpectedly" (an unmapped exception).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos.inference import grpc_predict_v2_pb2 as pb
from protos.mmesh import model_runtime_pb2 as rt
from tests.fuzz.test_fuzz_tensors import requests
from tests.integration.test_runtime_builtin import Runtime
from tests.integration.test_runtime_trust import _onnx_identity

pytestmark = pytest.mark.fuzz

INFER_OK = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
V2 = "inference.GRPCInferenceService"


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Runtime]:
    from onnx import TensorProto

    tmp = tmp_path_factory.mktemp("live-fuzz")
    root = tmp / "root"
    _onnx_identity(root / "fp32" / "model.onnx", TensorProto.FLOAT)
    _onnx_identity(root / "int8" / "model.onnx", TensorProto.INT8)
    r = Runtime(tmp, root)
    for name in ("fp32", "int8"):
        r.spi.loadModel(rt.LoadModelRequest(modelId=name, modelType="onnx", modelPath=name), timeout=60)
    yield r
    log = r.log_path.read_text(errors="replace")
    assert r.stop() == 0, r.log()
    assert "failed unexpectedly" not in log, log[-3000:]


def _code(call, *args, **kwargs) -> tuple[grpc.StatusCode, str]:
    try:
        call(*args, timeout=10, **kwargs)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@settings(max_examples=200)
@given(data=st.binary(max_size=400), model=st.sampled_from(["fp32", "int8", "nope"]))
def test_raw_bytes_to_model_infer(live, data, model) -> None:
    raw_infer = live.channel.unary_unary(f"/{V2}/ModelInfer")
    code, details = _code(raw_infer, data, metadata=(("mm-model-id", model),))
    assert code in INFER_OK, (code, details)


@settings(max_examples=200)
@given(req=requests(), model=st.sampled_from(["fp32", "int8", "nope"]))
def test_structured_requests_to_model_infer(live, req, model) -> None:
    req.model_name = model
    code, details = _code(live.v2.ModelInfer, req)
    assert code in INFER_OK, (code, details)


text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)


@settings(max_examples=60)
@given(
    model_id=st.one_of(text, st.sampled_from(["ok-id", "..", "a/b", " x"])),
    model_type=st.one_of(text, st.sampled_from(["onnx", "sklearn", "mt:onnx"])),
    path=st.one_of(text, st.sampled_from(["fp32", "int8", "../x", "/etc/passwd", "s3://b/k", "file:///"])),
    key=st.one_of(text, st.sampled_from(["", "{}", '{"storage_key": "nope"}', "[" * 2000])),
)
def test_arbitrary_registrations_to_load_model(live, model_id, model_type, path, key) -> None:
    req = rt.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=path, modelKey=key)
    code, details = _code(live.spi.loadModel, req)
    assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE), (code, details)
    if code == grpc.StatusCode.INTERNAL:
        assert details.startswith("failed to load model"), details
    if code == grpc.StatusCode.OK and model_id not in ("fp32", "int8"):
        live.spi.unloadModel(rt.UnloadModelRequest(modelId=model_id), timeout=10)


def test_still_serving_after_the_fuzz(live) -> None:
    req = pb.ModelInferRequest(model_name="fp32")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
    assert list(live.v2.ModelInfer(req, timeout=10).outputs[0].contents.fp32_contents) == [1, 2, 3, 4]
