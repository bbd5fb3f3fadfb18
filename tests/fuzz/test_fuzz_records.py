"""Properties of etcd record decoding (mesh.kv.records).

- ``from_json`` on any bytes or any JSON value returns a record or raises ``RecordDecodeError``: never
  another exception (deep nesting, huge integers, bad UTF-8 and wrongly typed known fields included).
- Valid records round-trip exactly, and unknown fields survive a decode/encode cycle unchanged (rolling
  upgrades: an older pod never drops a newer pod's fields).
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.kv.records import InstanceRecord, ModelRecord, RecordDecodeError, VModelRecord

pytestmark = pytest.mark.fuzz

RECORDS = (ModelRecord, InstanceRecord, VModelRecord)
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
ints = st.integers(-(2**63), 2**63)
json_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats(allow_nan=False) | text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=12,
)
# Objects that use the records' own short names, with values of any type.
known_names = sorted({j for cls in RECORDS for j in cls._FIELDS.values()})
objects = st.dictionaries(st.one_of(st.sampled_from(known_names), text), json_values, max_size=8)


def _decode(cls, raw) -> None:
    try:
        record = cls.from_json(raw)
    except RecordDecodeError:
        return
    assert isinstance(record, cls)
    cls.from_json(record.to_json())  # whatever decoded also encodes and decodes again


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
@given(raw=st.one_of(st.binary(max_size=300), st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n)))
def test_arbitrary_bytes(cls, raw) -> None:
    _decode(cls, raw)


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
@given(value=st.one_of(objects, json_values))
def test_arbitrary_json(cls, value) -> None:
    _decode(cls, json.dumps(value).encode())


def test_known_failures_are_decode_errors() -> None:
    for raw in (b"[" * 5000, b'{"instanceIds": 5}', b'{"lu": true}', b'{"refs": 1.5}', b"\xff\xfe{",
                b'{"lu": ' + b"1" * 5000 + b"}", b'{"fails": {"p": 3}}', b"[]"):  # fmt: skip
        with pytest.raises(RecordDecodeError):
            ModelRecord.from_json(raw)


unknown_keys = text.filter(lambda k: k not in known_names)
model_records = st.builds(
    ModelRecord,
    type=text, path=text, key=text,
    instances=st.dictionaries(text, ints, max_size=3), loaded=st.dictionaries(text, ints, max_size=3),
    failures=st.dictionaries(text, ints, max_size=3), failure_messages=st.dictionaries(text, text, max_size=3),
    refs=ints, auto_delete=st.booleans(), last_used=ints, size=ints,
    extra=st.dictionaries(unknown_keys, json_values, max_size=3),
)  # fmt: skip
instance_records = st.builds(
    InstanceRecord, address=text, labels=st.lists(text, max_size=3), capacity=ints, rpm=ints,
    shutting_down=st.booleans(), extra=st.dictionaries(unknown_keys, json_values, max_size=3),
)  # fmt: skip
vmodel_records = st.builds(
    VModelRecord, owner=text, active=text, target=text, failed=st.booleans(),
    extra=st.dictionaries(unknown_keys, json_values, max_size=3),
)  # fmt: skip


@given(st.one_of(model_records, instance_records, vmodel_records), st.integers(0, 2**40))
def test_valid_records_round_trip_with_unknown_fields(record, revision) -> None:
    raw = record.to_json()
    back = type(record).from_json(raw, revision)
    assert back == record and back.extra == record.extra and back.revision == revision
    assert back.to_json() == raw
