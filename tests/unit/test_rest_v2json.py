"""The V2 REST JSON codec (mesh.dataplane.v2json): JSON and binary-data tensors to protobuf and back, and the
errors that name what is wrong."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from mesh.dataplane import v2json
from mesh.errors import InvalidRequest
from protos.inference import grpc_predict_v2_pb2 as v2


def _decode(payload: bytes) -> v2.ModelInferRequest:
    return v2.ModelInferRequest.FromString(payload)


def test_json_inputs_become_raw_contents_for_every_input():
    body = json.dumps(
        {
            "id": "r1",
            "parameters": {"priority": 2, "tag": "x"},
            "inputs": [
                {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]},
                {"name": "b", "shape": [2], "datatype": "BYTES", "data": ["hé", ""]},
                {"name": "c", "shape": [3], "datatype": "BOOL", "data": [True, False, True]},
            ],
            "outputs": [{"name": "predict", "parameters": {"binary_data": True}}, {"name": "p2"}],
        }
    ).encode()
    payload, binary = v2json.infer_request(body, "m1", "3")
    req = _decode(payload)
    assert (req.model_name, req.model_version, req.id) == ("m1", "3", "r1")
    assert req.parameters["priority"].int64_param == 2 and req.parameters["tag"].string_param == "x"
    assert [t.name for t in req.inputs] == ["a", "b", "c"]
    assert list(req.inputs[0].shape) == [2, 2]
    np.testing.assert_array_equal(np.frombuffer(req.raw_input_contents[0], "<f4"), [1, 2, 3, 4.5])
    assert req.raw_input_contents[1] == struct.pack("<I", 3) + "hé".encode() + struct.pack("<I", 0)
    assert req.raw_input_contents[2] == b"\x01\x00\x01"
    assert [o.name for o in req.outputs] == ["predict", "p2"]
    assert binary == frozenset({"predict"})


def test_binary_data_extension_takes_tensors_from_the_body_tail():
    a = np.arange(6, dtype="<i4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "a",
                    "shape": [2, 3],
                    "datatype": "INT32",
                    "parameters": {"binary_data_size": len(a)},
                },
                {"name": "b", "shape": [1], "datatype": "FP64", "data": [0.5]},
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    payload, binary = v2json.infer_request(header + a, "m", header_length=len(header))
    req = _decode(payload)
    assert req.raw_input_contents[0] == a
    assert np.frombuffer(req.raw_input_contents[1], "<f8").tolist() == [0.5]
    assert binary is True


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"inputs": []}, "'inputs' must be a non-empty list"),
        ({"inputs": [{"name": "a", "shape": [2], "datatype": "FP33", "data": [1, 2]}]}, "unknown datatype"),
        ({"inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}, "needs 3 elements"),
        ({"inputs": [{"name": "a", "shape": [-1], "datatype": "FP32", "data": []}]}, "non-negative"),
        (
            {"inputs": [{"name": "a", "shape": [2], "datatype": "INT8", "data": [1, 300]}]},
            "out of the INT8 range",
        ),
        ({"inputs": [{"name": "a", "shape": [2], "datatype": "INT32", "data": [1, 2.5]}]}, "non-integers"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": ["x"]}]}, "must be fp32s"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": [1]}]}, "must be strings"),
        ({"inputs": [{"name": "a", "shape": [2], "datatype": "FP32"}]}, "needs 'data'"),
        ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, "needs a 'name'"),
        (
            {"inputs": [{"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3]]}]},
            "regular array",
        ),
    ],
)
def test_bad_requests_name_the_problem(doc, needle):
    with pytest.raises(InvalidRequest) as err:
        v2json.infer_request(json.dumps(doc).encode(), "m")
    assert needle in err.value.message


def test_bad_json_and_bad_binary_sizes_are_client_errors():
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        v2json.infer_request(b"{nope", "m")
    header = json.dumps(
        {"inputs": [{"name": "a", "shape": [4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
    ).encode()
    with pytest.raises(InvalidRequest, match="runs past the end"):
        v2json.infer_request(header + b"\0" * 8, "m", header_length=len(header))
    with pytest.raises(InvalidRequest, match="not claimed"):
        v2json.infer_request(header + b"\0" * 20, "m", header_length=len(header))
    with pytest.raises(InvalidRequest, match="outside the body"):
        v2json.infer_request(header, "m", header_length=len(header) + 1)


def _response() -> bytes:
    resp = v2.ModelInferResponse(model_name="m", id="r1")
    resp.outputs.add(name="predict", datatype="INT64", shape=[2])
    resp.outputs.add(name="proba", datatype="FP32", shape=[2, 2])
    resp.outputs.add(name="label", datatype="BYTES", shape=[1])
    resp.raw_output_contents.extend(
        [
            np.asarray([1, 0], "<i8").tobytes(),
            np.asarray([0.25, 0.75, 1, 0], "<f4").tobytes(),
            struct.pack("<I", 2) + b"ok",
        ]
    )
    return resp.SerializeToString()


def test_response_in_json_and_with_binary_outputs():
    body, header_len = v2json.infer_response(_response(), frozenset())
    assert header_len is None
    doc = json.loads(body)
    assert doc["model_name"] == "m" and doc["id"] == "r1"
    assert doc["outputs"][0] == {"name": "predict", "datatype": "INT64", "shape": [2], "data": [1, 0]}
    assert doc["outputs"][1]["data"] == [0.25, 0.75, 1.0, 0.0]
    assert doc["outputs"][2]["data"] == ["ok"]

    body, header_len = v2json.infer_response(_response(), frozenset({"proba"}))
    doc = json.loads(body[:header_len])
    assert "data" not in doc["outputs"][1]
    assert doc["outputs"][1]["parameters"] == {"binary_data_size": 16}
    assert np.frombuffer(body[header_len:], "<f4").tolist() == [0.25, 0.75, 1.0, 0.0]


def test_typed_contents_responses_are_encoded_too():
    resp = v2.ModelInferResponse(model_name="m")
    out = resp.outputs.add(name="y", datatype="FP64", shape=[2])
    out.contents.fp64_contents.extend([1.5, 2.5])
    body, _ = v2json.infer_response(resp.SerializeToString(), frozenset())
    assert json.loads(body)["outputs"][0]["data"] == [1.5, 2.5]
