"""mesh.dataplane.headers: routing metadata parsing and the minimal protobuf wire-format reader/splicer,
checked against the real protobuf runtime (ModelInferRequest) and fuzzed with seeded random inputs."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError

from mesh.dataplane.headers import (
    INTERNAL_HIT,
    INTERNAL_LOAD,
    parse_metadata,
    read_string_field,
    splice_string,
)
from mesh.errors import InvalidRequest
from mesh.ids import MAX_ID_LENGTH
from protos.inference.grpc_predict_v2_pb2 import ModelInferRequest

# ---------------------------------------------------------------------------------------------------------
# parse_metadata


def test_no_metadata() -> None:
    for md in (None, [], ()):
        info = parse_metadata(md)
        assert info.model_id is None and info.vmodel_id is None
        assert info.hop == 0 and info.exclude == set() and info.internal == "" and info.last_used == 0
        assert info.passthrough == []


@pytest.mark.parametrize(
    ("metadata", "model_id", "vmodel_id"),
    [
        ([("mm-model-id", "m1")], "m1", None),
        ([("MM-Model-Id", "m1")], "m1", None),
        ([("mm-model-id-bin", b"m1")], "m1", None),
        ([("mm-model-id-bin", "modèle-✓".encode())], "modèle-✓", None),
        ([("mm-model-id", b"m-bytes")], "m-bytes", None),
        ([("tas-model-id", "legacy")], "legacy", None),
        ([("mm-vmodel-id", "v1")], None, "v1"),
        ([("mm-vmodel-id-bin", "vé".encode())], None, "vé"),
        # the same id twice (e.g. text and -bin) is one model
        ([("mm-model-id", "m1"), ("mm-model-id-bin", b"m1")], "m1", None),
        ([("mm-model-id", "m1"), ("mm-model-id", "m1")], "m1", None),
    ],
)
def test_model_ids(metadata, model_id, vmodel_id) -> None:
    info = parse_metadata(metadata)
    assert info.model_id == model_id
    assert info.vmodel_id == vmodel_id


def test_model_and_vmodel_is_invalid_argument() -> None:
    with pytest.raises(InvalidRequest, match="both") as ei:
        parse_metadata([("mm-model-id", "m"), ("mm-vmodel-id", "v")])
    assert ei.value.grpc_code.name == "INVALID_ARGUMENT"


def test_several_distinct_model_ids_rejected() -> None:
    with pytest.raises(InvalidRequest, match="multi-model"):
        parse_metadata([("mm-model-id", "a"), ("mm-model-id", "b")])
    with pytest.raises(InvalidRequest, match="multi-model"):
        parse_metadata([("mm-model-id", "a"), ("mm-model-id-bin", b"b")])


def test_several_distinct_vmodel_ids_rejected() -> None:
    with pytest.raises(InvalidRequest):
        parse_metadata([("mm-vmodel-id", "a"), ("mm-vmodel-id", "b")])


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a/b",
        "/",
        "a\x00b",
        "a\nb",
        "a\tb",
        "a\x7fb",
        " lead",
        "trail ",
        ".",
        "..",
        "x" * (MAX_ID_LENGTH + 1),
    ],
)
@pytest.mark.parametrize("header", ["mm-model-id", "mm-vmodel-id", "mm-model-id-bin"])
def test_invalid_ids_rejected(header: str, bad: str) -> None:
    value: str | bytes = bad.encode() if header.endswith("-bin") else bad
    with pytest.raises(InvalidRequest) as ei:
        parse_metadata([(header, value)])
    # the message names the header kind, never dumps raw control characters
    assert "header" in ei.value.message
    assert "\x00" not in ei.value.message and "\n" not in ei.value.message


def test_id_at_max_length_ok() -> None:
    assert parse_metadata([("mm-model-id", "x" * MAX_ID_LENGTH)]).model_id == "x" * MAX_ID_LENGTH


def test_bin_header_not_utf8() -> None:
    with pytest.raises(InvalidRequest, match="UTF-8"):
        parse_metadata([("mm-model-id-bin", b"\xff\xfe")])


def test_internal_headers() -> None:
    info = parse_metadata(
        [
            ("mm-model-id", "m"),
            ("mm-hop", "2"),
            ("mm-exclude", "pod-a,pod-b,,pod-c"),
            ("mm-exclude", "pod-d"),
            ("mm-internal", INTERNAL_HIT),
            ("mm-lu", "1700000000123"),
            ("mm-balanced", "TRUE"),
        ]
    )
    assert info.hop == 2
    assert info.exclude == {"pod-a", "pod-b", "pod-c", "pod-d"}
    assert info.internal == INTERNAL_HIT
    assert info.last_used == 1_700_000_000_123
    assert info.balanced is True
    assert info.passthrough == []
    assert parse_metadata([("mm-internal", INTERNAL_LOAD)]).internal == INTERNAL_LOAD
    assert parse_metadata([("mm-balanced", "no")]).balanced is False
    assert parse_metadata([("mm-hop", b"3")]).hop == 3


@pytest.mark.parametrize("header", ["mm-hop", "mm-lu"])
@pytest.mark.parametrize("value", ["", "x", "1.5", "0x10"])
def test_non_integer_internal_headers(header: str, value: str) -> None:
    with pytest.raises(InvalidRequest, match=header):
        parse_metadata([(header, value)])


def test_passthrough_filtering() -> None:
    md = [
        ("mm-model-id", "m"),
        ("mm-something-new", "x"),
        ("grpc-timeout", "10S"),
        ("grpc-accept-encoding", "gzip"),
        ("tas-other", "x"),
        ("content-type", "application/grpc"),
        ("user-agent", "grpc-python"),
        ("te", "trailers"),
        (":authority", "h"),
        ("host", "h"),
        ("X-Request-Id", "abc"),
        ("authorization", "Bearer t"),
        ("trace-bin", b"\x00\x01"),
    ]
    info = parse_metadata(md)
    assert info.passthrough == [
        ("x-request-id", "abc"),
        ("authorization", "Bearer t"),
        ("trace-bin", b"\x00\x01"),
    ]


# ---------------------------------------------------------------------------------------------------------
# read_string_field against protobuf


def _request(rng: random.Random, *, name: str = "model-a", n_inputs: int = 1, raw_sizes=(16,)) -> bytes:
    req = ModelInferRequest(model_name=name, model_version="3", id="req-1")
    req.parameters["k"].string_param = "v"
    for i in range(n_inputs):
        t = req.inputs.add(name=f"in{i}", datatype="FP32", shape=[1, 4])
        t.contents.fp32_contents.extend([0.5, 1.5, 2.5, 3.5])
    req.outputs.add(name="out")
    for size in raw_sizes:
        req.raw_input_contents.append(rng.randbytes(size))
    return req.SerializeToString()


@pytest.mark.parametrize(
    "raw_sizes",
    [(), (0,), (1,), (127,), (128,), (16_383,), (16_384,), (1 << 20,), (3, 300, 70_000)],
)
@pytest.mark.parametrize("name", ["m", "model-a", "é-ünïcode-✓", "x" * 200, "a" * 5000])
def test_read_model_name_matches_protobuf(name: str, raw_sizes) -> None:
    rng = random.Random(len(name) * 1000 + sum(raw_sizes))
    buf = _request(rng, name=name, raw_sizes=raw_sizes, n_inputs=2)
    assert read_string_field(buf, 1) == ModelInferRequest.FromString(buf).model_name == name
    assert read_string_field(buf, 2) == "3"
    assert read_string_field(buf, 3) == "req-1"


def test_read_missing_field_is_none() -> None:
    req = ModelInferRequest(id="x")
    req.raw_input_contents.append(b"\x0a\x03abc")  # looks like field 1 but nested in field 7
    assert read_string_field(req.SerializeToString(), 1) is None
    assert read_string_field(b"", 1) is None


def test_read_empty_string_field() -> None:
    # proto3 omits empty strings, but an explicit empty field 1 on the wire is an empty name
    assert read_string_field(b"\x0a\x00", 1) == ""


def test_last_occurrence_wins_on_concatenation() -> None:
    rng = random.Random(7)
    a = _request(rng, name="first")
    b = _request(rng, name="second")
    merged = a + b
    assert ModelInferRequest.FromString(merged).model_name == "second"
    assert read_string_field(merged, 1) == "second"
    # a message without the field does not reset it
    no_name = ModelInferRequest(id="z").SerializeToString()
    assert ModelInferRequest.FromString(a + no_name).model_name == "first"
    assert read_string_field(a + no_name, 1) == "first"


def test_other_wire_types_are_skipped() -> None:
    # field 2 varint (300), field 3 fixed64, field 4 fixed32, then field 1 = "ok"
    buf = b"\x10\xac\x02" + b"\x19" + b"\x00" * 8 + b"\x25" + b"\x00" * 4 + b"\x0a\x02ok"
    assert read_string_field(buf, 1) == "ok"


@pytest.mark.parametrize(
    "buf",
    [
        b"\x0a",  # tag, no length
        b"\x0a\x05abc",  # length past the end
        b"\x0a\x80",  # truncated length varint
        b"\x80",  # truncated tag
        b"\x08",  # varint field with no value
        b"\x08\x80\x80",  # truncated varint value
        b"\x09\x00\x00",  # fixed64 cut short
        b"\x0d\x00",  # fixed32 cut short
        b"\x0b",  # start group (wire type 3)
        b"\x0c",  # end group (wire type 4)
        b"\x0e",  # wire type 6
        b"\x0f",  # wire type 7
        b"\x02\x00",  # field number 0
        b"\x08\x01",  # field 1 as a varint: not a string
        b"\x0a\x02\xff\xfe",  # field 1 not UTF-8
        b"\x10" + b"\xff" * 10 + b"\x01",  # varint longer than 10 bytes
    ],
)
def test_malformed_raises_invalid_request(buf: bytes) -> None:
    with pytest.raises(InvalidRequest):
        read_string_field(buf, 1)


def _check_read(buf: bytes) -> None:
    """read_string_field either raises InvalidRequest or agrees with protobuf whenever protobuf parses."""
    try:
        ours = read_string_field(buf, 1)
    except InvalidRequest:
        return
    try:
        theirs = ModelInferRequest.FromString(buf).model_name
    except DecodeError:
        return  # nested content protobuf rejects; we never look inside
    assert (ours or "") == theirs


def test_fuzz_random_bytes() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        n = rng.randrange(0, 64)
        _check_read(rng.randbytes(n))


def test_fuzz_truncations_and_mutations() -> None:
    rng = random.Random(99)
    base = [
        _request(rng, name="model-x", raw_sizes=(5, 200)),
        _request(rng, name="é" * 70, raw_sizes=(130,), n_inputs=3),
    ]
    cases = 0
    for buf in base:
        for cut in range(len(buf) + 1):
            _check_read(buf[:cut])
            cases += 1
    for _ in range(2500):
        buf = bytearray(rng.choice(base))
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(buf))
            if op == 0:
                buf[pos] = rng.randrange(256)
            elif op == 1:
                del buf[pos : pos + rng.randrange(1, 8)]
            else:
                buf[pos:pos] = rng.randbytes(rng.randrange(1, 4))
        _check_read(bytes(buf))
        cases += 1
    assert cases > 3000


def test_fuzz_prefix_of_valid_then_garbage() -> None:
    rng = random.Random(5)
    good = ModelInferRequest(model_name="keep").SerializeToString()
    for _ in range(500):
        _check_read(good + rng.randbytes(rng.randrange(1, 12)))


# ---------------------------------------------------------------------------------------------------------
# splice_string


def _without(msg: ModelInferRequest, field: str) -> ModelInferRequest:
    copy = ModelInferRequest()
    copy.CopyFrom(msg)
    copy.ClearField(field)
    return copy


@pytest.mark.parametrize("new", ["replaced", "é-ünïcode-✓", "x" * 300, ""])
@pytest.mark.parametrize("old", ["old", "", "y" * 200])
def test_splice_top_level(old: str, new: str) -> None:
    rng = random.Random(3)
    buf = _request(rng, name=old, raw_sizes=(10, 1000), n_inputs=2)
    out = splice_string(buf, [1], new)
    before, after = ModelInferRequest.FromString(buf), ModelInferRequest.FromString(out)
    assert after.model_name == new
    assert _without(after, "model_name") == _without(before, "model_name")
    assert read_string_field(out, 1) == new
    # everything but field 1 kept byte for byte, in order
    assert list(after.raw_input_contents) == list(before.raw_input_contents)


def test_splice_removes_every_occurrence() -> None:
    rng = random.Random(4)
    buf = _request(rng, name="a") + _request(rng, name="b")
    out = splice_string(buf, [1], "c")
    assert out.startswith(b"\x0a\x01c")
    assert read_string_field(out[3:], 1) is None  # no other field 1 left
    assert len(out) == len(buf) - 2 * 3 + 3  # two 3-byte "a"/"b" fields out, one in


def test_splice_empty_path_is_identity() -> None:
    buf = _request(random.Random(1))
    assert splice_string(buf, [], "x") == buf


def test_splice_nested_single_input() -> None:
    rng = random.Random(6)
    buf = _request(rng, name="top", n_inputs=1)
    out = splice_string(buf, [5, 1], "renamed-✓")
    before, after = ModelInferRequest.FromString(buf), ModelInferRequest.FromString(out)
    assert after.inputs[0].name == "renamed-✓"
    assert after.model_name == "top"
    after.inputs[0].name = before.inputs[0].name
    assert after == before


def test_splice_nested_creates_missing_message() -> None:
    buf = ModelInferRequest(model_name="m").SerializeToString()
    after = ModelInferRequest.FromString(splice_string(buf, [5, 1], "n"))
    assert [t.name for t in after.inputs] == ["n"]
    assert after.model_name == "m"


def test_splice_nested_keeps_other_repeated_elements() -> None:
    rng = random.Random(8)
    buf = _request(rng, name="top", n_inputs=3)
    after = ModelInferRequest.FromString(splice_string(buf, [5, 1], "x"))
    assert len(after.inputs) == 3


def test_splice_malformed_raises_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        splice_string(b"\x0a\x05ab", [1], "x")
