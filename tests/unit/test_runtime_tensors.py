"""Unit tests of KServe V2 tensor decoding/encoding and the per-library predictors' input checks."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mesh.errors import InvalidRequest
from protos.inference import grpc_predict_v2_pb2 as pb
from runtime_adapters.builtin import tensors


def _typed(datatype: str, shape, field: str, values) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype=datatype, shape=shape)
    getattr(t.contents, field).extend(values)
    return req


@pytest.mark.parametrize(
    ("datatype", "field", "values", "dtype"),
    [
        ("FP32", "fp32_contents", [1.5, 2.5], np.float32),
        ("FP64", "fp64_contents", [1.5, 2.5], np.float64),
        ("INT32", "int_contents", [1, -2], np.int32),
        ("INT64", "int64_contents", [1, -2], np.int64),
        ("UINT32", "uint_contents", [1, 2], np.uint32),
        ("BOOL", "bool_contents", [True, False], np.bool_),
    ],
)
def test_typed_inputs(datatype, field, values, dtype) -> None:
    arrays, raw = tensors.decode_inputs(_typed(datatype, [1, 2], field, values))
    assert not raw
    assert arrays["x"].dtype == dtype and arrays["x"].shape == (1, 2)
    assert arrays["x"].ravel().tolist() == values


@pytest.mark.parametrize(
    ("datatype", "dtype"), [("FP32", "<f4"), ("FP64", "<f8"), ("INT32", "<i4"), ("INT64", "<i8")]
)
def test_raw_inputs_little_endian(datatype, dtype) -> None:
    data = np.arange(6, dtype=dtype).reshape(2, 3)
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype=datatype, shape=[2, 3])
    req.raw_input_contents.append(data.tobytes())
    arrays, raw = tensors.decode_inputs(req)
    assert raw and np.array_equal(arrays["x"], data)


def test_raw_bytes_input() -> None:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="s", datatype="BYTES", shape=[2])
    req.raw_input_contents.append(b"".join(struct.pack("<I", len(b)) + b for b in (b"ab", b"")))
    arrays, _ = tensors.decode_inputs(req)
    assert arrays["s"].tolist() == [b"ab", b""]


@pytest.mark.parametrize(
    ("req", "match"),
    [
        (
            _typed("FP32", [2, 4], "fp32_contents", [1.0] * 5),
            r"shape \[2, 4\] needs 8 values but fp32_contents holds 5",
        ),
        (_typed("FP32", [1, 2], "int_contents", [1, 2]), "datatype FP32 but its values are in int_contents"),
        (_typed("FP99", [1], "fp32_contents", [1.0]), "unsupported datatype 'FP99'"),
        (_typed("FP32", [-1, 2], "fp32_contents", [1.0, 2.0]), "invalid shape"),
        (_typed("FP16", [1], "fp32_contents", [1.0]), "must be sent in raw_input_contents"),
        (pb.ModelInferRequest(model_name="m"), "no inputs"),
    ],
)
def test_bad_typed_inputs(req, match) -> None:
    with pytest.raises(InvalidRequest, match=match):
        tensors.decode_inputs(req)


def test_bad_raw_inputs() -> None:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(b"\0" * 15)
    with pytest.raises(InvalidRequest, match="needs 16 bytes but its raw_input_contents has 15"):
        tensors.decode_inputs(req)
    req.raw_input_contents.append(b"")
    with pytest.raises(InvalidRequest, match="2 buffers but the request has 1 inputs"):
        tensors.decode_inputs(req)


def test_encode_outputs_typed_and_raw() -> None:
    outputs = {
        "predict": np.array([1, 2], dtype=np.int64),
        "proba": np.array([[0.25, 0.75]], dtype=np.float32),
        "labels": np.array(["a", "bc"], dtype=object),
        "half": np.array([1.0], dtype=np.float16),
    }
    typed = tensors.encode_outputs(pb.ModelInferResponse(), outputs, raw=False)
    by = {o.name: o for o in typed.outputs}
    assert by["predict"].datatype == "INT64" and list(by["predict"].contents.int64_contents) == [1, 2]
    assert by["proba"].datatype == "FP32" and list(by["proba"].shape) == [1, 2]
    assert list(by["labels"].contents.bytes_contents) == [b"a", b"bc"]
    assert by["half"].datatype == "FP32"
    raw = tensors.encode_outputs(pb.ModelInferResponse(), outputs, raw=True)
    assert not raw.outputs[0].contents.int64_contents
    assert np.frombuffer(raw.raw_output_contents[0], "<i8").tolist() == [1, 2]
    assert np.frombuffer(raw.raw_output_contents[1], "<f4").tolist() == [0.25, 0.75]
    assert raw.raw_output_contents[2] == struct.pack("<I", 1) + b"a" + struct.pack("<I", 2) + b"bc"
    assert raw.outputs[3].datatype == "FP16"


def test_object_numbers_become_numeric() -> None:
    resp = tensors.encode_outputs(pb.ModelInferResponse(), {"p": np.array([1, 2], dtype=object)}, raw=False)
    assert resp.outputs[0].datatype == "INT64"


def test_sklearn_input_checks() -> None:
    from sklearn.linear_model import LinearRegression

    from runtime_adapters.builtin.models import SklearnModel

    model = SklearnModel(LinearRegression().fit(np.eye(3), [1.0, 2.0, 3.0]))
    out = model.predict({"x": np.eye(3, dtype=np.float32)[0]})
    assert out["predict"].shape == (1,)
    with pytest.raises(InvalidRequest, match="has 2 features per row but the model expects 3"):
        model.predict({"x": np.ones((1, 2))})
    with pytest.raises(InvalidRequest, match="exactly 1 input"):
        model.predict({"a": np.ones((1, 3)), "b": np.ones((1, 3))})
    with pytest.raises(InvalidRequest, match="unknown output"):
        model.predict({"x": np.ones((1, 3))}, ["predict_proba"])
    with pytest.raises(TypeError, match="no predict method"):
        SklearnModel(object())
