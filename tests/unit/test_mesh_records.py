"""mesh.kv.records JSON round trips, mesh.kv.keys key building, mesh.ids validation."""

from __future__ import annotations

import json

import pytest

from mesh.errors import InvalidRequest
from mesh.ids import MAX_ID_LENGTH, check_id, default_instance_id, instance_id, model_id, vmodel_id
from mesh.kv.keys import Keys
from mesh.kv.records import InstanceRecord, ModelRecord, VModelRecord

FULL_MODEL = ModelRecord(
    type="sklearn",
    path="s3://b/m",
    key="k",
    instances={"p1": 1, "p2": 2},
    loaded={"p1": 3},
    failures={"p3": 4},
    failure_messages={"p3": "boom"},
    refs=2,
    auto_delete=True,
    last_used=5,
    last_unload=6,
    min_copies=1,
    max_copies=3,
    registered_at=7,
    size=4096,
    size_override=8192,
    owner="team-a",
)
FULL_INSTANCE = InstanceRecord(
    address="10.0.0.1:8033",
    zone="z",
    location="node-1",
    labels=["mt:sklearn", "gpu"],
    capacity=100,
    used=40,
    lru_time=8,
    count=3,
    loads_in_progress=1,
    loading_threads=2,
    rpm=50,
    version="v1",
    start_time=9,
    shutting_down=True,
)
FULL_VMODEL = VModelRecord(owner="o", active="m1", target="m2", failed=True)


@pytest.mark.parametrize("rec", [FULL_MODEL, FULL_INSTANCE, FULL_VMODEL], ids=["model", "instance", "vmodel"])
def test_round_trip(rec) -> None:
    raw = rec.to_json()
    back = type(rec).from_json(raw, revision=42)
    assert back == rec
    assert back.revision == 42
    assert back.extra == {}
    assert back.to_json() == raw


def test_json_uses_short_names() -> None:
    data = json.loads(FULL_MODEL.to_json())
    assert data["instanceIds"] == {"p1": 1, "p2": 2}
    assert data["loadedAt"] == {"p1": 3}
    assert data["failedIn"] == {"p3": 4}
    assert data["mPath"] == "s3://b/m" and data["lu"] == 5 and data["autoDel"] is True
    assert data["o"] == "team-a"  # the owner, as in VModelRecord
    assert set(data) == set(ModelRecord._FIELDS.values())
    inst = json.loads(FULL_INSTANCE.to_json())
    assert inst["addr"] == "10.0.0.1:8033" and inst["lruTime"] == 8 and inst["shutdown"] is True
    assert json.loads(FULL_VMODEL.to_json()) == {"o": "o", "amid": "m1", "tmid": "m2", "failed": True}


@pytest.mark.parametrize("cls", [ModelRecord, InstanceRecord, VModelRecord])
def test_defaults_omitted(cls) -> None:
    assert cls().to_json() == b"{}"
    assert cls.from_json(b"{}") == cls()
    assert cls.from_json(b"") == cls()
    assert cls.from_json("{}") == cls()


def test_partial_defaults_omitted() -> None:
    assert json.loads(ModelRecord(type="t", refs=0, instances={}).to_json()) == {"type": "t"}
    assert json.loads(InstanceRecord(capacity=5, labels=[]).to_json()) == {"cap": 5}


def test_revision_never_serialised() -> None:
    rec = ModelRecord.from_json(b'{"type":"t"}', revision=99)
    assert rec.revision == 99
    assert b"99" not in rec.to_json() and "revision" not in json.loads(rec.to_json())
    assert rec.replace(revision=7).to_json() == rec.to_json()


def test_unknown_fields_preserved_through_replace() -> None:
    raw = json.dumps({"type": "t", "futureField": {"a": [1, 2]}, "zz": 3, "instanceIds": {"p": 1}})
    rec = ModelRecord.from_json(raw, revision=3)
    assert rec.extra == {"futureField": {"a": [1, 2]}, "zz": 3}
    changed = rec.replace(instances={**rec.instances, "q": 2}, refs=1)
    assert changed.extra == rec.extra and changed.revision == 3
    out = json.loads(changed.to_json())
    assert out == {
        "type": "t",
        "futureField": {"a": [1, 2]},
        "zz": 3,
        "instanceIds": {"p": 1, "q": 2},
        "refs": 1,
    }
    # a known field reset to its default disappears, unknown ones stay
    assert json.loads(changed.replace(type="").to_json()).keys() == {
        "futureField",
        "zz",
        "instanceIds",
        "refs",
    }


def test_unknown_fields_do_not_affect_equality() -> None:
    assert InstanceRecord.from_json(b'{"cap":1,"x":1}') == InstanceRecord.from_json(b'{"cap":1,"y":2}')


@pytest.mark.parametrize("raw", [b"[]", b"3", b'"s"', b"null", b"true", b"[{}]"])
@pytest.mark.parametrize("cls", [ModelRecord, InstanceRecord, VModelRecord])
def test_non_object_json_is_value_error(cls, raw: bytes) -> None:
    with pytest.raises(ValueError, match=cls.__name__):
        cls.from_json(raw)


def test_invalid_json_is_value_error() -> None:
    with pytest.raises(ValueError):  # json.JSONDecodeError is a ValueError
        ModelRecord.from_json(b"{not json")


def test_records_are_frozen() -> None:
    with pytest.raises(AttributeError):
        FULL_MODEL.type = "x"  # type: ignore[misc]


def test_recent_failures() -> None:
    rec = ModelRecord(failures={"a": 1_000, "b": 500, "c": 1_099})
    assert rec.recent_failures(now_ms=1_100, expiry_ms=100) == {"c": 1_099}
    assert rec.recent_failures(now_ms=1_100, expiry_ms=601) == {"a": 1_000, "b": 500, "c": 1_099}


def test_instance_free() -> None:
    assert InstanceRecord(capacity=100, used=30).free == 70
    assert InstanceRecord(capacity=100, used=130).free == 0


# ---------------------------------------------------------------------------------------------------------
# Keys


def test_keys_layout() -> None:
    k = Keys.for_root("/mm/prod/")
    assert k.registry("m1") == "/mm/prod/registry/m1"
    assert k.instance("pod-1") == "/mm/prod/instances/pod-1"
    assert k.vmodel("v") == "/mm/prod/vmodels/v"
    assert k.config("c") == "/mm/prod/config/c"
    assert k.leader == "/mm/prod/leader"
    assert k.registry_prefix == "/mm/prod/registry/"
    assert k.instances_prefix == "/mm/prod/instances/"
    assert k.vmodels_prefix == "/mm/prod/vmodels/"
    assert k.config_prefix == "/mm/prod/config/"
    assert Keys.id_from(k.registry_prefix, k.registry("a b")) == "a b"
    assert k.registry("modèle") == "/mm/prod/registry/modèle"


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("/mm/prod/", "/mm/prod/"),
        ("/mm/prod", "/mm/prod/"),
        ("mm/prod", "/mm/prod/"),
        ("mm", "/mm/"),
        ("", "/mm/default/"),
        ("   ", "/mm/default/"),
        (" /x/ ", "/x/"),
        ("/", "/"),
    ],
)
def test_root_normalisation(root: str, expected: str) -> None:
    assert Keys.for_root(root).root == expected


@pytest.mark.parametrize("bad", ["a/b", "/", "", "..", ".", "a\nb", " a"])
def test_keys_reject_bad_ids(bad: str) -> None:
    k = Keys.for_root("/mm/t/")
    for build in (k.registry, k.instance, k.vmodel, k.config):
        with pytest.raises(InvalidRequest):
            build(bad)


def test_keys_error_names_the_kind() -> None:
    k = Keys.for_root("/mm/t/")
    with pytest.raises(InvalidRequest, match="instance id"):
        k.instance("a/b")
    with pytest.raises(InvalidRequest, match="vmodel id"):
        k.vmodel("a/b")


# ---------------------------------------------------------------------------------------------------------
# ids


@pytest.mark.parametrize(
    "good",
    ["a", "model-1", "m.v2", "...", ".a", "a..b", "with space", "ünïcode✓", "x" * MAX_ID_LENGTH, "a:b"],
)
def test_check_id_accepts(good: str) -> None:
    assert check_id(good) == good


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ("", "empty"),
        ("x" * (MAX_ID_LENGTH + 1), "too long"),
        ("a/b", "'/'"),
        ("/", "'/'"),
        ("a\x00", "control"),
        ("a\x1f", "control"),
        ("a\x7f", "control"),
        ("\ta", "control"),
        (" a", "whitespace"),
        ("a ", "whitespace"),
        ("a\u00a0", "whitespace"),  # non-breaking space is stripped by str.strip()
        (".", r"'\.'"),
        ("..", r"'\.\.'"),
    ],
)
def test_check_id_rejects(bad: str, match: str) -> None:
    with pytest.raises(InvalidRequest, match=match):
        check_id(bad)


def test_check_id_non_string() -> None:
    with pytest.raises(InvalidRequest):
        check_id(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        check_id(b"abc")  # type: ignore[arg-type]


def test_check_id_message_is_escaped_and_bounded() -> None:
    with pytest.raises(InvalidRequest) as ei:
        check_id("bad\x01" + "z" * 200, what="thing")
    msg = ei.value.message
    assert msg.startswith("thing ")
    assert "\x01" not in msg and "\\x01" in msg
    assert len(msg) < 200


def test_typed_constructors() -> None:
    assert model_id("m") == "m" and vmodel_id("v") == "v" and instance_id("i") == "i"
    with pytest.raises(InvalidRequest, match="vmodel id"):
        vmodel_id("a/b")
    with pytest.raises(InvalidRequest, match="instance id"):
        instance_id("")


def test_default_instance_id() -> None:
    a, b = (
        default_instance_id("modelmesh-serving-abcdef123456"),
        default_instance_id("modelmesh-serving-abcdef123456"),
    )
    assert a.startswith("abcdef123456-") and a != b
    check_id(a)
