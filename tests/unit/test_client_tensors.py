"""MeshClient's tensor conversion: numpy/array-likes ↔ V2 tensors, typed and raw, both directions."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from mesh.client import (
    MODEL_ID_HEADER,
    MeshClientError,
    build_infer_request,
    decode_outputs,
    decode_tensor,
    encode_inputs,
    v2_datatype,
)
from protos.inference import grpc_predict_v2_pb2 as v2


@pytest.mark.parametrize(
    ("dtype", "datatype", "field"),
    [
        (np.float32, "FP32", "fp32_contents"),
        (np.float64, "FP64", "fp64_contents"),
        (np.int64, "INT64", "int64_contents"),
        (np.int32, "INT32", "int_contents"),
        (np.uint8, "UINT8", "uint_contents"),
        (np.bool_, "BOOL", "bool_contents"),
    ],
)
def test_typed_contents_follow_numpy_dtype(dtype, datatype, field):
    arr = np.arange(6).reshape(2, 3).astype(dtype)
    tensors, raws = encode_inputs({"x": arr})
    assert raws == []
    (t,) = tensors
    assert (t.name, t.datatype, list(t.shape)) == ("x", datatype, [2, 3])
    assert list(getattr(t.contents, field)) == arr.reshape(-1).tolist()


def test_list_of_rows_is_one_input_named_input0():
    tensors, _ = encode_inputs([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]])
    (t,) = tensors
    assert t.name == "input-0"
    assert t.datatype == "FP64"  # Python floats are float64
    assert list(t.shape) == [2, 4]


def test_datatype_override_casts():
    tensors, _ = encode_inputs([[1, 2]], datatype="FP32")
    assert tensors[0].datatype == "FP32"
    assert list(tensors[0].contents.fp32_contents) == [1.0, 2.0]


def test_raw_inputs_are_little_endian_row_major():
    arr = np.array([[1.5, 2.5], [3.5, 4.5]], dtype=np.float32)
    tensors, raws = encode_inputs({"x": arr}, raw=True)
    assert not tensors[0].HasField("contents")
    assert raws == [arr.astype("<f4").tobytes()]


def test_raw_bytes_are_length_prefixed():
    _, raws = encode_inputs({"s": ["ab", b"c"]}, raw=True)
    assert raws == [struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"]


def test_strings_go_to_bytes_contents():
    tensors, _ = encode_inputs({"s": ["hi", "there"]})
    assert tensors[0].datatype == "BYTES"
    assert list(tensors[0].contents.bytes_contents) == [b"hi", b"there"]


def test_fp16_needs_raw():
    with pytest.raises(MeshClientError) as e:
        encode_inputs({"h": np.zeros(2, dtype=np.float16)})
    assert e.value.code == "CLIENT"
    _, raws = encode_inputs({"h": np.zeros(2, dtype=np.float16)}, raw=True)
    assert len(raws[0]) == 4


def test_unsupported_dtype_is_a_client_error():
    with pytest.raises(MeshClientError):
        v2_datatype(np.zeros(1, dtype=np.complex64))


def test_build_request_sets_model_name_and_raw():
    req = build_infer_request("iris", np.ones((1, 4), dtype=np.float32), raw=True)
    assert req.model_name == "iris"
    assert len(req.raw_input_contents) == 1
    assert MODEL_ID_HEADER == "mm-model-id"


def test_decode_typed_outputs():
    resp = v2.ModelInferResponse(model_name="m")
    out = resp.outputs.add(name="predict", datatype="INT64", shape=[3])
    out.contents.int64_contents.extend([0, 1, 2])
    probs = resp.outputs.add(name="proba", datatype="FP32", shape=[1, 2])
    probs.contents.fp32_contents.extend([0.25, 0.75])
    decoded = decode_outputs(resp)
    assert decoded["predict"].dtype == np.int64
    np.testing.assert_array_equal(decoded["predict"], [0, 1, 2])
    np.testing.assert_allclose(decoded["proba"], [[0.25, 0.75]])


def test_decode_raw_outputs():
    resp = v2.ModelInferResponse()
    resp.outputs.add(name="y", datatype="FP64", shape=[2, 1])
    resp.outputs.add(name="s", datatype="BYTES", shape=[2])
    resp.raw_output_contents.extend(
        [np.array([1.0, 2.0], dtype="<f8").tobytes(), struct.pack("<I", 1) + b"a" + struct.pack("<I", 0)]
    )
    decoded = decode_outputs(resp)
    np.testing.assert_array_equal(decoded["y"], [[1.0], [2.0]])
    assert decoded["s"].tolist() == [b"a", b""]


def test_round_trip_through_raw_encoding():
    arr = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    _, raws = encode_inputs({"x": arr}, raw=True)
    np.testing.assert_array_equal(decode_tensor("FP32", [3, 4], raw=raws[0]), arr)


def test_truncated_bytes_tensor_is_an_error():
    with pytest.raises(MeshClientError):
        decode_tensor("BYTES", [1], raw=b"\x05\x00")
