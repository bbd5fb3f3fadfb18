"""Properties of the built-in runtime's tensor decoding (runtime_adapters.builtin.tensors).

- Any ModelInferRequest (datatypes known or not, shapes negative, huge or empty, typed contents of any
  field, raw buffers of any length) decodes to arrays of exactly the declared shape and datatype, or raises
  ``InvalidRequest``; nothing else, and never a silently wrapped value.
- Any bytes parsed as the servicer parses them, then decoded: only ``InvalidRequest``.
- ``conform`` to a model's datatype either keeps every value exactly (integers) / within the target type
  (floats) or raises ``InvalidRequest``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mesh.errors import InvalidRequest
from protos.inference import grpc_predict_v2_pb2 as pb
from runtime_adapters.builtin import inference, tensors

pytestmark = pytest.mark.fuzz

DATATYPES = [*tensors.DTYPES, "BYTES"]
FIELD_VALUES = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}
shapes = st.lists(
    st.one_of(st.integers(-2, 5), st.sampled_from([2**31, 2**62, 2**63 - 1])), min_size=0, max_size=4
)


@st.composite
def requests(draw) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    n = draw(st.integers(0, 3))
    raw = draw(st.booleans())
    for i in range(n):
        datatype = draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=6)))
        shape = draw(shapes)
        t = req.inputs.add(
            name=draw(st.sampled_from(["x", "y", f"in{i}", ""])), datatype=datatype, shape=shape
        )
        if raw:
            size = draw(st.integers(0, 64))
            req.raw_input_contents.append(draw(st.binary(min_size=size, max_size=size)))
        else:
            field = draw(st.sampled_from(sorted(FIELD_VALUES)))
            getattr(t.contents, field).extend(draw(st.lists(FIELD_VALUES[field], max_size=12)))
    if raw and draw(st.booleans()):
        req.raw_input_contents.append(b"extra")
    return req


@st.composite
def well_formed(draw) -> tuple[pb.ModelInferRequest, np.ndarray, str]:
    """A typed request whose values are in range for its declared datatype, and those values."""
    datatype = draw(st.sampled_from([d for d in tensors.CONTENTS_FIELD if d != "BYTES"]))
    dtype = tensors.DTYPES[datatype]
    shape = draw(st.lists(st.integers(0, 3), min_size=1, max_size=3))
    values = draw(hnp.arrays(dtype, shape, elements={"allow_nan": False} if dtype.kind == "f" else None))
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="x", datatype=datatype, shape=shape)
    getattr(t.contents, tensors.CONTENTS_FIELD[datatype]).extend(values.ravel().tolist())
    return req, values, datatype


def _decode(req: pb.ModelInferRequest) -> None:
    try:
        arrays, _ = tensors.decode_inputs(req)
    except InvalidRequest:
        return
    for t, (name, arr) in zip(req.inputs, arrays.items(), strict=True):
        assert arr.shape == tuple(t.shape), name
        if t.datatype == "BYTES":
            assert arr.dtype == object
        else:
            assert arr.dtype == tensors.DTYPES[t.datatype].newbyteorder("="), name


@given(requests())
def test_any_request_decodes_to_declared_shape_and_type_or_invalid_argument(req) -> None:
    _decode(req)


@given(st.binary(max_size=300))
def test_any_bytes_through_the_servicer_parser(data) -> None:
    try:
        req = inference._parse(pb.ModelInferRequest, data)
    except InvalidRequest:
        return
    _decode(req)


@given(well_formed())
def test_in_range_values_decode_exactly(case) -> None:
    req, values, _ = case
    arrays, raw = tensors.decode_inputs(req)
    assert not raw
    np.testing.assert_array_equal(arrays["x"], values)


@given(
    st.integers(-(2**40), 2**40),
    st.sampled_from(["UINT8", "UINT16", "INT8", "INT16"]),
)
def test_out_of_range_typed_values_are_never_wrapped(value, datatype) -> None:
    info = np.iinfo(tensors.DTYPES[datatype])
    field = tensors.CONTENTS_FIELD[datatype]
    representable = 0 <= value < 2**32 if field == "uint_contents" else -(2**31) <= value < 2**31
    if not representable:
        return  # the proto field itself cannot hold it
    req = pb.ModelInferRequest(model_name="m")
    getattr(req.inputs.add(name="x", datatype=datatype, shape=[1]).contents, field).append(value)
    if info.min <= value <= info.max:
        assert tensors.decode_inputs(req)[0]["x"].tolist() == [value]
    else:
        with pytest.raises(InvalidRequest, match=f"out of range for {datatype}"):
            tensors.decode_inputs(req)


arrays = st.one_of(
    hnp.arrays(st.sampled_from([np.dtype(d) for d in ("i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2",
                                                      "f4", "f8", "?")]), hnp.array_shapes(max_dims=2, max_side=4)),
    st.lists(st.binary(max_size=4), max_size=4).map(lambda xs: np.array(xs, dtype=object)),
)  # fmt: skip


@given(arrays, st.sampled_from(DATATYPES))
def test_conform_keeps_values_or_refuses(arr, datatype) -> None:
    try:
        out = tensors.conform("in", arr, datatype)
    except InvalidRequest:
        return
    if datatype == "BYTES":
        assert out is arr
        return
    assert out.dtype == tensors.DTYPES[datatype] and out.shape == arr.shape
    if out.dtype.kind in "iub" and arr.dtype.kind in "iub":
        assert out.astype(object).tolist() == arr.astype(object).tolist()
    elif arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        assert np.array_equal(np.isfinite(out), finite)
