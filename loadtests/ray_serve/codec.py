"""KServe V2 tensors for the Ray Serve side of the peer comparison: numeric inputs in, sklearn outputs out.

Owns what the Ray deployment does with a ModelInferRequest, so that it computes and returns what the mesh's
built-in runtime does for the same request bytes: one numeric input tensor (typed ``contents`` or
``raw_input_contents``) becomes a numpy array; the estimator's ``predict`` (and ``predict_proba`` when it has
one) are written back as V2 outputs, raw when the request was raw, typed otherwise, with the same datatype
rules as ``runtime_adapters.builtin.tensors`` (floats stay FP32/FP64, integers INT64...). A unit test checks
that both produce byte-identical responses for the sample models.

It imports numpy only and works on any generated ``inference`` message classes (duck typing): the Ray venv
compiles the V2 proto itself, and its messages must not meet the mesh's ``protos`` package in one process.
Anything this benchmark does not send (BYTES, FP16 typed, several inputs) is refused with ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_DATATYPE_OF = {dt: name for name, dt in DTYPES.items()}


def decode_input(request: Any) -> tuple[np.ndarray, bool]:
    """The request's single numeric input as a 2-D array, and whether it came as raw contents."""
    if len(request.inputs) != 1:
        raise ValueError(f"expected exactly 1 input tensor, got {len(request.inputs)}")
    tensor = request.inputs[0]
    dtype = DTYPES.get(tensor.datatype)
    if dtype is None:
        raise ValueError(f"unsupported datatype {tensor.datatype!r}")
    shape = tuple(int(d) for d in tensor.shape)
    count = math.prod(shape) if shape else 0
    raw = bool(request.raw_input_contents)
    if raw:
        buf = request.raw_input_contents[0]
        if len(buf) != count * dtype.itemsize:
            raise ValueError(f"shape {list(shape)} of {tensor.datatype} needs {count * dtype.itemsize} bytes")
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
    else:
        field = TYPED_FIELD.get(tensor.datatype)
        if field is None:
            raise ValueError(f"{tensor.datatype} values must be sent raw")
        values = getattr(tensor.contents, field)
        if len(values) != count:
            raise ValueError(f"shape {list(shape)} needs {count} values, {field} holds {len(values)}")
        arr = np.array(values, dtype=dtype).reshape(shape)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    return arr, raw


def predict(estimator: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """``predict`` and, when the estimator has it, ``predict_proba``: the built-in runtime's sklearn outputs."""
    out = {"predict": np.asarray(estimator.predict(x))}
    if hasattr(estimator, "predict_proba"):
        out["predict_proba"] = np.asarray(estimator.predict_proba(x))
    return out


def encode_outputs(response: Any, outputs: Mapping[str, np.ndarray], *, raw: bool) -> Any:
    """Append numeric ``outputs`` to ``response`` (raw buffers or typed contents) and return it."""
    for name, value in outputs.items():
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"output {name!r} has dtype {arr.dtype}; this benchmark encodes numbers only")
        datatype = _DATATYPE_OF.get(arr.dtype.newbyteorder("<"))
        if datatype is None:  # e.g. a platform-specific integer width
            arr = arr.astype(np.float64 if arr.dtype.kind == "f" else np.int64)
            datatype = _DATATYPE_OF[arr.dtype.newbyteorder("<")]
        if not raw and datatype == "FP16":
            arr, datatype = arr.astype("<f4"), "FP32"
        out = response.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        if raw:
            response.raw_output_contents.append(arr.astype(DTYPES[datatype], copy=False).tobytes())
        else:
            getattr(out.contents, TYPED_FIELD[datatype]).extend(arr.ravel().tolist())
    return response
