"""The KServe V2 REST (JSON) encoding of inference messages, to and from the protobuf the router carries.

Pure functions, no I/O: the REST listener (``mesh.dataplane.rest``) turns an HTTP body into the bytes of a
``ModelInferRequest`` (so the request takes exactly the gRPC path: ``Router.handle``) and the runtime's
``ModelInferResponse`` bytes back into JSON.

Requests. ``inputs[i]`` has ``name``, ``shape``, ``datatype`` and either ``data`` (nested or flat row-major
JSON values; BYTES as strings) or, with the binary-data extension, ``parameters.binary_data_size`` bytes taken
in order from the binary part of the body (the body is then ``Inference-Header-Content-Length`` bytes of JSON
followed by the raw tensors). Every input is sent to the runtime in ``raw_input_contents`` (little-endian,
row-major; BYTES as 4-byte-length-prefixed items), which the V2 protocol requires to be used for all inputs
or none, and which avoids a typed-field copy. ``outputs`` (requested outputs, with ``binary_data``) and the
request-level ``parameters`` (``binary_data_output``) decide which outputs come back as binary.

Every check names what is wrong (``InvalidRequest``: HTTP 400): unknown datatype, shape that does not match
the data, a data value of the wrong type, binary sizes past the body. Sizes are bounded by the body, which
the listener bounds by the gRPC max message size.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from mesh.errors import InvalidRequest
from mesh.v2types import CONTENTS_FIELD, DTYPES
from protos.inference import grpc_predict_v2_pb2 as v2

MAX_DIMS = 32
HEADER_LENGTH = "inference-header-content-length"


# --------------------------------------------------------------------------------------------- requests


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return value


def _set_parameters(target: Any, params: Any, what: str) -> None:
    """Copy a JSON parameters object into a protobuf ``map<string, InferParameter>``."""
    for key, value in _object(params, f"{what} parameters").items():
        p = target[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise InvalidRequest(f"{what} parameter '{key}' is out of the int64 range")
            p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        elif isinstance(value, str):
            p.string_param = value
        else:
            raise InvalidRequest(f"{what} parameter '{key}' must be a bool, number or string")


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise InvalidRequest(f"input '{name}': shape must be a list of at most {MAX_DIMS} integers")
    for d in value:
        if not isinstance(d, int) or isinstance(d, bool) or d < 0:
            raise InvalidRequest(f"input '{name}': shape must hold non-negative integers, got {value!r}")
    return value


def _flatten_strings(data: Any, name: str) -> list[bytes]:
    out: list[bytes] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            out.append(item.encode("utf-8"))
        else:
            raise InvalidRequest(f"input '{name}': BYTES data must be strings")
    return out


def _raw_from_data(data: Any, datatype: str, shape: list[int], name: str) -> bytes:
    count = math.prod(shape)
    if datatype == "BYTES":
        items = _flatten_strings(data, name)
        if len(items) != count:
            raise InvalidRequest(
                f"input '{name}': shape {shape} needs {count} elements, data has {len(items)}"
            )
        return b"".join(struct.pack("<I", len(b)) + b for b in items)
    dtype = DTYPES[datatype]
    try:
        arr = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise InvalidRequest(f"input '{name}': data is not a regular array ({exc})") from None
    kind = arr.dtype.kind
    if (arr.size and kind not in "biuf") or (datatype == "BOOL" and arr.size and kind != "b"):
        raise InvalidRequest(
            f"input '{name}': data values must be {datatype.lower()}s for datatype {datatype}"
        )
    if dtype.kind in "iu" and kind == "f":
        raise InvalidRequest(f"input '{name}': data holds non-integers for datatype {datatype}")
    if arr.size != count:
        raise InvalidRequest(f"input '{name}': shape {shape} needs {count} elements, data has {arr.size}")
    try:
        with np.errstate(over="raise", invalid="raise"):
            if dtype.kind in "iu" and arr.size:
                info = np.iinfo(dtype)
                if int(arr.min()) < info.min or int(arr.max()) > info.max:
                    raise InvalidRequest(f"input '{name}': a value is out of the {datatype} range")
            return np.ascontiguousarray(arr, dtype=dtype).tobytes()
    except (OverflowError, FloatingPointError, TypeError, ValueError) as exc:
        raise InvalidRequest(f"input '{name}': data does not fit {datatype} ({exc})") from None


def infer_request(
    body: bytes, model_name: str, model_version: str = "", header_length: int | None = None
) -> tuple[bytes, frozenset[str] | bool]:
    """The serialised ``ModelInferRequest`` for a V2 JSON infer body, and which outputs the caller wants as
    binary data (a set of names, or True for all)."""
    if header_length is not None:
        if not 0 <= header_length <= len(body):
            raise InvalidRequest(f"{HEADER_LENGTH} {header_length} is outside the body of {len(body)} bytes")
        doc, binary = _loads(body[:header_length]), memoryview(body)[header_length:]
    else:
        doc, binary = _loads(body), memoryview(b"")
    doc = _object(doc, "request body")
    req = v2.ModelInferRequest(model_name=model_name, model_version=model_version)
    if "id" in doc:
        if not isinstance(doc["id"], str):
            raise InvalidRequest("'id' must be a string")
        req.id = doc["id"]
    binary_all = False
    if "parameters" in doc:
        params = _object(doc["parameters"], "request parameters")
        binary_all = params.get("binary_data_output") is True
        _set_parameters(
            req.parameters, {k: v for k, v in params.items() if k != "binary_data_output"}, "request"
        )
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequest("'inputs' must be a non-empty list")
    offset = 0
    raws: list[bytes] = []
    for i, item in enumerate(inputs):
        item = _object(item, f"inputs[{i}]")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"inputs[{i}] needs a 'name' string")
        datatype = item.get("datatype")
        if datatype != "BYTES" and datatype not in DTYPES:
            raise InvalidRequest(f"input '{name}': unknown datatype {datatype!r}")
        shape = _shape(item.get("shape"), name)
        tensor = req.inputs.add(name=name, datatype=datatype, shape=shape)
        params = dict(_object(item.get("parameters", {}), f"input '{name}'"))
        size = params.pop("binary_data_size", None)
        if params:
            _set_parameters(tensor.parameters, params, f"input '{name}'")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidRequest(f"input '{name}': binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise InvalidRequest(f"input '{name}': binary_data_size {size} runs past the end of the body")
            raw = bytes(binary[offset : offset + size])
            offset += size
            if datatype != "BYTES" and size != math.prod(shape) * DTYPES[datatype].itemsize:
                raise InvalidRequest(
                    f"input '{name}': {size} bytes do not hold a {datatype} tensor of shape {shape}"
                )
            raws.append(raw)
        elif "data" in item:
            raws.append(_raw_from_data(item["data"], datatype, shape, name))
        else:
            raise InvalidRequest(f"input '{name}' needs 'data' or parameters.binary_data_size")
    if offset != len(binary):
        raise InvalidRequest(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    req.raw_input_contents.extend(raws)
    binary_names: set[str] = set()
    outputs = doc.get("outputs", [])
    if not isinstance(outputs, list):
        raise InvalidRequest("'outputs' must be a list")
    for i, item in enumerate(outputs):
        item = _object(item, f"outputs[{i}]")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"outputs[{i}] needs a 'name' string")
        out = req.outputs.add(name=name)
        params = dict(_object(item.get("parameters", {}), f"output '{name}'"))
        if params.pop("binary_data", False) is True:
            binary_names.add(name)
        if params:
            _set_parameters(out.parameters, params, f"output '{name}'")
    return req.SerializeToString(), (True if binary_all and not outputs else frozenset(binary_names))


# --------------------------------------------------------------------------------------------- responses


def _param_value(p: v2.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def _parameters(params: Mapping[str, v2.InferParameter]) -> dict[str, Any]:
    return {k: _param_value(v) for k, v in params.items()}


def _split_bytes(raw: bytes, name: str) -> list[bytes]:
    out, i, end = [], 0, len(raw)
    while i < end:
        if i + 4 > end:
            raise ValueError(f"output '{name}': truncated BYTES tensor")
        (n,) = struct.unpack_from("<I", raw, i)
        out.append(raw[i + 4 : i + 4 + n])
        i += 4 + n
    return out


def _output_raw(t: v2.ModelInferResponse.InferOutputTensor, raw: bytes | None) -> bytes:
    """The output's raw bytes (V2 raw layout), from raw_output_contents or its typed contents."""
    if raw is not None:
        return raw
    field = CONTENTS_FIELD.get(t.datatype)
    if field is None:
        raise ValueError(f"output '{t.name}' of datatype {t.datatype} has no raw contents")
    values = list(getattr(t.contents, field))
    if t.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in values)
    return np.asarray(values, dtype=DTYPES[t.datatype]).tobytes()


def _json_data(datatype: str, raw: bytes, name: str) -> list[Any]:
    if datatype == "BYTES":
        return [b.decode("utf-8", errors="replace") for b in _split_bytes(raw, name)]
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise ValueError(f"output '{name}' has an unknown datatype {datatype!r}")
    return np.frombuffer(raw, dtype=dtype).tolist()


def infer_response(payload: bytes, binary: frozenset[str] | bool) -> tuple[bytes, int | None]:
    """JSON (and binary part) of a serialised ``ModelInferResponse``: (body, JSON header length when the body
    carries binary outputs, else None). BYTES outputs in JSON are decoded as UTF-8 (invalid bytes replaced);
    ask for them as binary data to get them exact."""
    resp = v2.ModelInferResponse.FromString(payload)
    raws = list(resp.raw_output_contents)
    doc: dict[str, Any] = {"model_name": resp.model_name}
    if resp.model_version:
        doc["model_version"] = resp.model_version
    if resp.id:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = _parameters(resp.parameters)
    outputs = []
    chunks: list[bytes] = []
    for i, t in enumerate(resp.outputs):
        raw = _output_raw(t, raws[i] if i < len(raws) else None)
        out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        params = _parameters(t.parameters) if t.parameters else {}
        if binary is True or (binary and t.name in binary):
            params["binary_data_size"] = len(raw)
            chunks.append(raw)
        else:
            out["data"] = _json_data(t.datatype, raw, t.name)
        if params:
            out["parameters"] = params
        outputs.append(out)
    doc["outputs"] = outputs
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def model_metadata(payload: bytes) -> bytes:
    resp = v2.ModelMetadataResponse.FromString(payload)

    def tensors(items: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    doc = {
        "name": resp.name,
        "versions": list(resp.versions),
        "platform": resp.platform,
        "inputs": tensors(resp.inputs),
        "outputs": tensors(resp.outputs),
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def model_ready(payload: bytes) -> bool:
    return v2.ModelReadyResponse.FromString(payload).ready
