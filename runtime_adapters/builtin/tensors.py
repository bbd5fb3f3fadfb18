"""KServe V2 tensors <-> numpy: the only code that reads or writes tensor payloads.

Inputs come either as typed ``contents`` (BOOL -> bool_contents, INT8/16/32 -> int_contents, INT64 ->
int64_contents, UINT8/16/32 -> uint_contents, UINT64 -> uint64_contents, FP32 -> fp32_contents, FP64 ->
fp64_contents, BYTES -> bytes_contents) or as ``raw_input_contents`` (one little-endian buffer per input, in
input order; BYTES elements are 4-byte little-endian length prefixed). Every inconsistency between
datatype, shape and data raises ``InvalidRequest`` naming the input and what is wrong, including values
out of range for the declared datatype (an INT8 input sent 300 in ``int_contents``, a UINT16 one sent
70000 in ``uint_contents``, a raw BOOL byte other than 0/1): nothing is silently wrapped.
``conform`` converts a decoded tensor to the datatype a model declares for that input, refusing any
conversion that would change values (out of range, float to integer, BYTES to numbers, overflow to
infinity). Outputs are written the way the request came: raw buffers when it used raw inputs, typed
contents otherwise.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

import numpy as np

from mesh.errors import InvalidRequest, MeshError
from mesh.v2types import CONTENTS_FIELD, DTYPES
from protos.inference import grpc_predict_v2_pb2 as pb

_ALL_FIELDS = sorted(set(CONTENTS_FIELD.values()))
_DATATYPE_OF = {dt: name for name, dt in DTYPES.items()}
MAX_RANK = 16
# No request can carry this many elements (gRPC message sizes are MiBs); bounding the product of the
# non-zero dimensions keeps numpy from refusing a shape such as [0, 2**62] with its own ValueError.
MAX_ELEMENTS = 1 << 40


def decode_inputs(request: pb.ModelInferRequest) -> tuple[dict[str, np.ndarray], bool]:
    """The request's input tensors by name (request order) and whether they came as raw contents."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} buffers but the request has {len(request.inputs)} inputs"
        )
    if not request.inputs:
        raise InvalidRequest("the request has no inputs")
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        name = tensor.name or f"input-{i}"
        if name in arrays:
            raise InvalidRequest(f"input '{name}' appears more than once")
        shape = _check_shape(name, tensor.datatype, tensor.shape)
        if raw:
            if _has_typed(tensor.contents):
                raise InvalidRequest(f"input '{name}' has typed contents and raw_input_contents")
            arrays[name] = _from_raw(name, tensor.datatype, shape, raw[i])
        else:
            arrays[name] = _from_typed(name, tensor.datatype, shape, tensor.contents)
    return arrays, bool(raw)


def encode_outputs(
    response: pb.ModelInferResponse, outputs: Mapping[str, np.ndarray], *, raw: bool
) -> pb.ModelInferResponse:
    """Append ``outputs`` to ``response`` as raw buffers or typed contents."""
    for name, value in outputs.items():
        arr = _normalise(np.asarray(value))
        datatype = "BYTES" if arr.dtype.kind in "OSU" else _DATATYPE_OF[arr.dtype.newbyteorder("<")]
        if not raw and datatype == "FP16":
            arr, datatype = arr.astype("<f4"), "FP32"  # no typed field for FP16
        out = response.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        if datatype == "BYTES":
            items = [_to_bytes(x) for x in arr.ravel().tolist()]
            if raw:
                response.raw_output_contents.append(b"".join(struct.pack("<I", len(b)) + b for b in items))
            else:
                out.contents.bytes_contents.extend(items)
        elif raw:
            response.raw_output_contents.append(arr.astype(DTYPES[datatype], copy=False).tobytes())
        else:
            getattr(out.contents, CONTENTS_FIELD[datatype]).extend(arr.ravel().tolist())
    return response


def _check_shape(name: str, datatype: str, shape) -> tuple[int, ...]:
    if datatype not in DTYPES and datatype != "BYTES":
        supported = ", ".join([*DTYPES, "BYTES"])
        raise InvalidRequest(f"input '{name}': unsupported datatype '{datatype}' (supported: {supported})")
    dims = tuple(int(d) for d in shape)
    if not dims:
        raise InvalidRequest(f"input '{name}': shape is empty")
    if len(dims) > MAX_RANK or any(d < 0 for d in dims):
        raise InvalidRequest(f"input '{name}': invalid shape {list(dims)}")
    if math.prod(d for d in dims if d) > MAX_ELEMENTS:
        raise InvalidRequest(
            f"input '{name}': shape {list(dims)} is too large (over {MAX_ELEMENTS} elements)"
        )
    return dims


def _has_typed(contents: pb.InferTensorContents) -> bool:
    return any(len(getattr(contents, f)) for f in _ALL_FIELDS)


def _from_typed(name: str, datatype: str, shape: tuple[int, ...], contents) -> np.ndarray:
    count = math.prod(shape)
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidRequest(f"input '{name}': {datatype} values must be sent in raw_input_contents")
    values = getattr(contents, field)
    if len(values) == 0 and count:
        other = [f for f in _ALL_FIELDS if len(getattr(contents, f))]
        where = f"its values are in {other[0]}" if other else "it has no values"
        raise InvalidRequest(f"input '{name}' has datatype {datatype} but {where} (expected {field})")
    if len(values) != count:
        raise InvalidRequest(
            f"input '{name}': shape {list(shape)} needs {count} values but {field} holds {len(values)}"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    dtype = DTYPES[datatype]
    if dtype.kind in "iu" and dtype.itemsize < 4:
        # int_contents/uint_contents are 32-bit: numpy would wrap a narrowing cast, so check the range.
        wide = np.asarray(values, dtype=np.int64)
        _check_range(name, datatype, wide, dtype)
        return wide.astype(dtype).reshape(shape)
    return np.asarray(values, dtype=dtype).reshape(shape)


def _from_raw(name: str, datatype: str, shape: tuple[int, ...], buf: bytes) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_from_raw(name, shape, count, buf)
    dtype = DTYPES[datatype]
    if len(buf) != count * dtype.itemsize:
        raise InvalidRequest(
            f"input '{name}': shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes "
            f"but its raw_input_contents has {len(buf)}"
        )
    if datatype == "BOOL":
        raw_bytes = np.frombuffer(buf, dtype=np.uint8)
        if raw_bytes.size and int(raw_bytes.max()) > 1:
            raise InvalidRequest(
                f"input '{name}': BOOL values in raw_input_contents must be bytes 0 or 1, "
                f"got {int(raw_bytes.max())}"
            )
    arr = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def conform(name: str, arr: np.ndarray, datatype: str) -> np.ndarray:
    """``arr`` as the model's declared ``datatype`` for input ``name``, or InvalidRequest when that would
    change a value: BYTES to or from numbers, floats or integers to BOOL, floats to integers, integers out
    of the target's range, finite floats that overflow the target float type."""
    if datatype == "BYTES":
        if arr.dtype.kind not in "OSU":
            raise InvalidRequest(f"input '{name}' is {_datatype_name(arr)} but the model expects BYTES")
        return arr
    target = DTYPES.get(datatype)
    if target is None:
        return arr
    if arr.dtype == target:
        return arr
    got = _datatype_name(arr)
    if arr.dtype.kind in "OSU":
        raise InvalidRequest(f"input '{name}' is BYTES but the model expects {datatype}")
    if target.kind == "b" or (arr.dtype.kind == "f" and target.kind in "iu"):
        raise InvalidRequest(f"input '{name}' is {got} but the model expects {datatype}")
    if target.kind in "iu":
        _check_range(name, datatype, arr, target)
        return arr.astype(target)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(target)
    overflow = np.isinf(out) & ~np.isinf(arr) if arr.dtype.kind == "f" else np.isinf(out)
    if overflow.any():
        bad = arr[overflow].ravel()[0]
        raise InvalidRequest(
            f"input '{name}': value {bad} is out of range for {datatype} (the model's datatype)"
        )
    return out


def _check_range(name: str, datatype: str, values: np.ndarray, target: np.dtype) -> None:
    if values.size == 0 or values.dtype.kind == "b":
        return
    info = np.iinfo(target)
    lo, hi = values.min(), values.max()
    if int(lo) < info.min or int(hi) > info.max:
        bad = int(lo) if int(lo) < info.min else int(hi)
        raise InvalidRequest(
            f"input '{name}': value {bad} is out of range for {datatype} ({info.min}..{info.max})"
        )


def _datatype_name(arr: np.ndarray) -> str:
    if arr.dtype.kind in "OSU":
        return "BYTES"
    return _DATATYPE_OF.get(arr.dtype.newbyteorder("<"), str(arr.dtype))


def _bytes_from_raw(name: str, shape: tuple[int, ...], count: int, buf: bytes) -> np.ndarray:
    items: list[bytes] = []
    pos = 0
    while pos < len(buf):
        if pos + 4 > len(buf):
            raise InvalidRequest(f"input '{name}': truncated BYTES length prefix in raw_input_contents")
        (n,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if pos + n > len(buf):
            raise InvalidRequest(f"input '{name}': BYTES element overruns raw_input_contents")
        items.append(bytes(buf[pos : pos + n]))
        pos += n
    if len(items) != count:
        raise InvalidRequest(
            f"input '{name}': shape {list(shape)} needs {count} BYTES elements but raw holds {len(items)}"
        )
    arr = np.empty(count, dtype=object)
    arr[:] = items
    return arr.reshape(shape)


def _normalise(arr: np.ndarray) -> np.ndarray:
    """Object arrays holding numbers become numeric; other dtypes stay."""
    if arr.dtype.kind == "O" and arr.size:
        try:
            guess = np.asarray(arr.tolist())
        except ValueError:
            return arr
        if guess.dtype.kind in "biuf":
            return guess
    if arr.dtype.kind in "biufOSU" and (
        arr.dtype.kind in "OSU" or arr.dtype.newbyteorder("<") in _DATATYPE_OF
    ):
        return arr
    if arr.dtype.kind == "f":
        return arr.astype(np.float64)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    raise MeshError(f"cannot encode an output of dtype {arr.dtype} as a V2 tensor")


def _to_bytes(x: object) -> bytes:
    if isinstance(x, bytes):
        return x
    return str(x).encode("utf-8")
