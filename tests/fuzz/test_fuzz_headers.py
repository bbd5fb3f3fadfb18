"""Properties of the data plane's header parser and protobuf field scanner/splicer (mesh.dataplane.headers).

- ``parse_metadata``, ``read_string_field`` and ``splice_string`` on anything raise nothing but
  ``InvalidRequest`` (INVALID_ARGUMENT for the client).
- On well-formed messages: splicing then reading field 1 returns the id; every other field is kept byte for
  byte and in order; splicing again changes nothing; a nested path rewrites only its enclosing field; and
  protobuf itself decodes the result to the same message with the id set.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.dataplane import headers
from mesh.errors import InvalidRequest
from protos.inference import grpc_predict_v2_pb2 as pb

pytestmark = pytest.mark.fuzz

KNOWN_KEYS = [headers.MODEL_ID, headers.MODEL_ID_BIN, headers.VMODEL_ID, headers.VMODEL_ID_BIN,
              headers.LEGACY_MODEL_ID, headers.HOP, headers.EXCLUDE, headers.INTERNAL, headers.LAST_USED,
              headers.BALANCED, "grpc-timeout", "content-type", "x-user"]  # fmt: skip
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
ids = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=64)
metadata = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from(KNOWN_KEYS), st.text("abcdefghijklmnopqrstuvwxyz-_.0123456789", min_size=1)
        ),
        st.one_of(text, st.binary(max_size=40), st.integers().map(str), st.sampled_from(["9" * 5000, "-1"])),
    ),
    max_size=8,
)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint((number << 3) | wire)


def one_field(number: int, wire: int, data: st.DataObject) -> bytes:
    if wire == 0:
        return tag(number, 0) + varint(data.draw(st.integers(0, 2**64 - 1)))
    if wire == 1:
        return tag(number, 1) + data.draw(st.binary(min_size=8, max_size=8))
    if wire == 5:
        return tag(number, 5) + data.draw(st.binary(min_size=4, max_size=4))
    payload = data.draw(st.binary(max_size=30))
    return tag(number, 2) + varint(len(payload)) + payload


@st.composite
def messages(draw, numbers=st.integers(1, 40), max_fields: int = 8) -> list[tuple[int, bytes]]:
    """A well-formed message as its list of (field number, encoded field)."""
    data = draw(st.data())
    fields = []
    for _ in range(draw(st.integers(0, max_fields))):
        number = draw(numbers)
        fields.append((number, one_field(number, draw(st.sampled_from([0, 1, 2, 5])), data)))
    return fields


def split(buf: bytes) -> list[tuple[int, bytes]]:
    """An independent oracle: the top-level fields of a well-formed message."""

    def read_varint(pos: int) -> tuple[int, int]:
        shift = result = 0
        while True:
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result, pos

    out, pos = [], 0
    while pos < len(buf):
        start = pos
        key, pos = read_varint(pos)
        wire = key & 7
        if wire == 0:
            _, pos = read_varint(pos)
        elif wire == 2:
            length, pos = read_varint(pos)
            pos += length
        else:
            pos += 8 if wire == 1 else 4
        out.append((key >> 3, buf[start:pos]))
    return out


@given(metadata)
def test_parse_metadata_only_raises_invalid_request(md) -> None:
    try:
        info = headers.parse_metadata(md)
    except InvalidRequest:
        return
    assert info.model_id is None or isinstance(info.model_id, str)


@given(st.binary(max_size=200), st.integers(1, 2**29 - 1))
def test_read_string_field_on_anything(buf, number) -> None:
    try:
        value = headers.read_string_field(buf, number)
    except InvalidRequest:
        return
    assert value is None or isinstance(value, str)


@given(st.binary(max_size=200), st.lists(st.integers(1, 2**29 - 1), max_size=3), ids)
def test_splice_on_anything(buf, path, model_id) -> None:
    try:
        out = headers.splice_string(buf, path, model_id)
    except InvalidRequest:
        return
    assert isinstance(out, bytes)


@given(messages(), ids)
def test_splice_sets_the_id_and_keeps_every_other_field(fields, model_id) -> None:
    buf = b"".join(f for _, f in fields)  # field 1 may even be a non-string here: a splice replaces it
    out = headers.splice_string(buf, [1], model_id)
    assert headers.read_string_field(out, 1) == model_id
    assert [f for n, f in split(out) if n != 1] == [f for n, f in fields if n != 1]
    assert [n for n, _ in split(out)].count(1) == 1
    assert headers.splice_string(out, [1], model_id) == out  # idempotent


@given(messages(numbers=st.integers(1, 6)), messages(numbers=st.integers(1, 6)), ids)
def test_nested_splice_rewrites_only_the_last_enclosing_field(outer, inner, model_id) -> None:
    inner_buf = b"".join(f for _, f in inner)
    enclosing = tag(2, 2) + varint(len(inner_buf)) + inner_buf
    fields = [(n, f) for n, f in outer if n != 2] + [(2, enclosing)]
    buf = b"".join(f for _, f in fields)
    out = headers.splice_string(buf, [2, 1], model_id)
    prefix = b"".join(f for _, f in fields[:-1])
    assert out.startswith(prefix)
    ((number, rewritten),) = split(out[len(prefix) :])
    assert number == 2
    value = rewritten[len(tag(2, 2)) :]
    length_end = next(i for i, b in enumerate(value) if not b & 0x80) + 1
    assert headers.read_string_field(value[length_end:], 1) == model_id
    assert headers.splice_string(out, [2, 1], model_id) == out


@given(
    st.builds(
        pb.ModelInferRequest,
        model_name=text,
        model_version=text,
        id=text,
        raw_input_contents=st.lists(st.binary(max_size=16), max_size=3),
    ),
    ids,
)
def test_protobuf_agrees_with_the_splice(request, model_id) -> None:
    request.inputs.add(name="x", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    out = headers.splice_string(request.SerializeToString(), [1], model_id)
    decoded = pb.ModelInferRequest.FromString(out)
    request.model_name = model_id
    assert decoded == request
