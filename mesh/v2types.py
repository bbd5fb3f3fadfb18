"""The KServe V2 datatypes as numpy and protobuf see them: one table for every side that reads or writes tensors
(the pod's REST JSON translation in ``mesh.dataplane.v2json`` and the built-in runtime's tensors in
``runtime_adapters.builtin.tensors``), so the two cannot drift on a datatype's width, byte order or field.

A leaf module (numpy only): the runtime side may import it (tests/unit/test_layering.py ``MESH_LEAVES``)."""

from __future__ import annotations

import numpy as np

#: V2 datatype -> little-endian numpy dtype (BYTES is variable-length and handled apart).
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

#: V2 datatype -> its typed field in ``InferTensorContents`` (FP16 has none: it travels only as raw bytes).
CONTENTS_FIELD: dict[str, str] = {
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
    "BYTES": "bytes_contents",
}
