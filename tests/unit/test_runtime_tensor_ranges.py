"""Values out of range for their datatype are refused, never wrapped; model-input conversions that would
change a value (BYTES to numbers, floats to integers, overflow) are INVALID_ARGUMENT naming the input."""

from __future__ import annotations

import numpy as np
import pytest

from mesh.errors import InvalidRequest
from protos.inference import grpc_predict_v2_pb2 as pb
from runtime_adapters.builtin import tensors


def _typed(datatype: str, field: str, values) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype=datatype, shape=[len(values)])
    getattr(t.contents, field).extend(values)
    return req


@pytest.mark.parametrize(
    ("datatype", "field", "bad", "edge"),
    [
        ("UINT8", "uint_contents", 256, [0, 255]),
        ("UINT16", "uint_contents", 65536, [0, 65535]),
        ("INT8", "int_contents", 128, [-128, 127]),
        ("INT8", "int_contents", -129, [-128, 127]),
        ("INT16", "int_contents", 40000, [-32768, 32767]),
        ("INT16", "int_contents", -40000, [-32768, 32767]),
    ],
)
def test_typed_values_out_of_range_are_refused(datatype, field, bad, edge) -> None:
    arrays, _ = tensors.decode_inputs(_typed(datatype, field, edge))
    assert arrays["x"].tolist() == edge  # the limits themselves are fine
    with pytest.raises(InvalidRequest) as info:
        tensors.decode_inputs(_typed(datatype, field, [1, bad]))
    assert info.value.message == (
        f"input 'x': value {bad} is out of range for {datatype} ({edge[0]}..{edge[1]})"
    )


def test_raw_bool_bytes_must_be_zero_or_one() -> None:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="flags", datatype="BOOL", shape=[3])
    req.raw_input_contents.append(b"\x00\x01\x02")
    with pytest.raises(InvalidRequest, match=r"input 'flags': BOOL values .* must be bytes 0 or 1, got 2"):
        tensors.decode_inputs(req)
    req.raw_input_contents[0] = b"\x00\x01\x01"
    assert tensors.decode_inputs(req)[0]["flags"].tolist() == [False, True, True]


def test_raw_length_must_match_shape_and_datatype() -> None:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="UINT16", shape=[2, 2])
    req.raw_input_contents.append(b"\x00" * 7)
    with pytest.raises(InvalidRequest, match=r"needs 8 bytes but its raw_input_contents has 7"):
        tensors.decode_inputs(req)


@pytest.mark.parametrize(
    ("values", "datatype", "message"),
    [
        (np.array([b"a", b"b"], dtype=object), "FP32", "input 'in' is BYTES but the model expects FP32"),
        (np.array([1.5], np.float32), "INT64", "input 'in' is FP32 but the model expects INT64"),
        (np.array([1], np.int64), "BOOL", "input 'in' is INT64 but the model expects BOOL"),
        (np.array([1.0], np.float32), "BYTES", "input 'in' is FP32 but the model expects BYTES"),
        (np.array([300], np.int64), "INT8", "input 'in': value 300 is out of range for INT8 (-128..127)"),
        (np.array([-1], np.int32), "UINT32", "input 'in': value -1 is out of range for UINT32"),
        (np.array([70000.0], np.float32), "FP16", "input 'in': value 70000.0 is out of range for FP16"),
        (np.array([70000], np.int32), "FP16", "input 'in': value 70000 is out of range for FP16"),
        (np.array([1e300], np.float64), "FP32", "input 'in': value 1e+300 is out of range for FP32"),
    ],
)
def test_conform_refuses_conversions_that_change_values(values, datatype, message) -> None:
    with pytest.raises(InvalidRequest) as info:
        tensors.conform("in", values, datatype)
    assert info.value.message.startswith(message), info.value.message


def test_conform_keeps_safe_conversions() -> None:
    assert tensors.conform("in", np.array([1.5], np.float64), "FP32").dtype == np.float32
    assert tensors.conform("in", np.array([7], np.int64), "FP32").tolist() == [7.0]
    assert tensors.conform("in", np.array([7], np.int64), "UINT8").dtype == np.uint8
    assert tensors.conform("in", np.array([True]), "INT32").tolist() == [1]
    assert tensors.conform("in", np.array([np.inf], np.float64), "FP32").tolist() == [np.inf]
    strings = np.array([b"a"], dtype=object)
    assert tensors.conform("in", strings, "BYTES") is strings


def test_huge_shapes_are_refused_even_with_no_values() -> None:
    """Found by tests/fuzz: numpy refuses [0, 2**62] itself with a ValueError (which was INTERNAL)."""
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="x", datatype="UINT16", shape=[0, 2**62])
    with pytest.raises(InvalidRequest, match=r"input 'x': shape \[0, 4611686018427387904\] is too large"):
        tensors.decode_inputs(req)
