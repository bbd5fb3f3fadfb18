"""Typed records for everything stored in etcd, with compact JSON that preserves unknown fields.

Each record is a frozen dataclass. ``from_json(raw, revision)`` / ``to_json()`` convert; short JSON names
come from each class's ``_FIELDS`` mapping (ModelMesh's names where it had one, modelmesh.md §2); fields
equal to their default are omitted (like ModelMesh's NON_DEFAULT Jackson inclusion); keys we do not know
are kept in ``extra`` and written back unchanged, so an older pod never drops a newer pod's fields during a
rolling upgrade. ``revision`` is the etcd mod_revision the record was read at (0 = not from the store); it
is what compare-and-swap compares, and it is never serialised.

Times are epoch milliseconds; sizes are bytes. ``from_json`` raises only ``RecordDecodeError``: for bytes
that are not a JSON object (nesting too deep included) and for known fields of the wrong JSON type, so a
corrupt value never becomes a record whose fields later fail far from the cause.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from mesh.errors import MeshError

R = TypeVar("R", bound="_Record")


class RecordDecodeError(MeshError, ValueError):
    """A stored value is not a valid record (not a JSON object, or a known field of the wrong type)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _any(v: Any) -> bool:  # a field whose annotation has no check below
    return True


# Checks of known fields by annotation (annotations are strings here: ``from __future__ import annotations``).
_TYPE_CHECKS: dict[str, Any] = {
    "str": lambda v: isinstance(v, str),
    "int": _is_int,
    "bool": lambda v: isinstance(v, bool),
    "list[str]": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "dict[str, int]": lambda v: isinstance(v, dict) and all(_is_int(x) for x in v.values()),
    "dict[str, str]": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
}


class _Schema:
    """Per record class, computed once: JSON name → (field, check), and each field's default."""

    __slots__ = ("by_json", "defaults", "fields")

    def __init__(self, cls: type) -> None:
        fields = [f for f in dataclasses.fields(cls) if f.name not in ("extra", "revision")]
        names: dict[str, str] = cls._FIELDS  # type: ignore[attr-defined]
        self.fields = [(f.name, names[f.name]) for f in fields]
        self.by_json = {names[f.name]: (f.name, _TYPE_CHECKS.get(f.type, _any)) for f in fields}
        self.defaults = {
            f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in fields
        }


#: The shared value of every empty map field: records never mutate their maps (they are replaced, and the
#: records are frozen), so 100,000 records need not carry 500,000 empty dicts (modelmesh.md: users run ~100k
#: models). Immutable, so a mutation by mistake raises instead of corrupting every record.
EMPTY_MAP: Any = MappingProxyType({})

#: Model types repeat across thousands of records: one string object each.
_INTERNED_FIELDS = frozenset({"type"})


class _Record:
    """JSON (de)serialisation shared by all records, driven by ``_FIELDS`` (python name → json name)."""

    _FIELDS: ClassVar[dict[str, str]]

    @classmethod
    def _get_schema(cls) -> _Schema:
        schema = cls.__dict__.get("_schema_cache")
        if schema is None:
            schema = _Schema(cls)
            type.__setattr__(cls, "_schema_cache", schema)
        return schema

    def to_json(self) -> bytes:
        out: dict[str, Any] = dict(self.extra)  # type: ignore[attr-defined]
        schema = self._get_schema()
        for name, json_name in schema.fields:
            value = getattr(self, name)
            if value == schema.defaults[name]:
                continue
            out[json_name] = dict(value) if isinstance(value, MappingProxyType) else value
        return json.dumps(out, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls: type[R], raw: bytes | str, revision: int = 0) -> R:
        try:
            data = json.loads(raw) if raw else {}
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, huge ints, deep nesting
            raise RecordDecodeError(f"{cls.__name__}: not valid JSON ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise RecordDecodeError(f"{cls.__name__}: expected a JSON object")
        by_json = cls._get_schema().by_json
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] | None = None
        for key, value in data.items():
            known = by_json.get(key)
            if known is None:
                if extra is None:
                    extra = {}
                extra[key] = value
                continue
            name, check = known
            if not check(value):
                raise RecordDecodeError(f"{cls.__name__}: field {key!r} has the wrong type")
            if name in _INTERNED_FIELDS:
                value = sys.intern(value)
            elif type(value) is dict and not value:
                value = EMPTY_MAP
            kwargs[name] = value
        return cls(**kwargs, extra=extra or EMPTY_MAP, revision=revision)  # type: ignore[call-arg]

    def replace(self: R, **changes: Any) -> R:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True, slots=True)
class ModelRecord(_Record):
    """The truth about one registered model (``registry/<modelId>``).

    ``instances`` maps instanceId → load start time for every copy that is loading or loaded;
    ``loaded`` maps instanceId → load completion time (a subset of ``instances``), so any pod can tell
    LOADING from LOADED. ``failures``/``failure_messages`` record recent load failures per instance;
    they expire (``MM_LOAD_FAILURE_EXPIRY_TIME_MS``). ``size`` is the last measured size of a copy, so
    placing further copies uses the model's real weight instead of the default size.
    """

    type: str = ""
    path: str = ""
    key: str = ""
    instances: dict[str, int] = field(default_factory=lambda: EMPTY_MAP)
    loaded: dict[str, int] = field(default_factory=lambda: EMPTY_MAP)
    failures: dict[str, int] = field(default_factory=lambda: EMPTY_MAP)
    failure_messages: dict[str, str] = field(default_factory=lambda: EMPTY_MAP)
    refs: int = 0
    auto_delete: bool = False
    last_used: int = 0
    last_unload: int = 0
    min_copies: int = 0
    max_copies: int = 0
    registered_at: int = 0
    size: int = 0
    size_override: int = 0
    owner: str = ""
    extra: dict[str, Any] = field(default_factory=lambda: EMPTY_MAP, compare=False)
    revision: int = field(default=0, compare=False)

    _FIELDS: ClassVar[dict[str, str]] = {
        "type": "type",
        "path": "mPath",
        "key": "encKey",
        "instances": "instanceIds",
        "loaded": "loadedAt",
        "failures": "failedIn",
        "failure_messages": "fails",
        "refs": "refs",
        "auto_delete": "autoDel",
        "last_used": "lu",
        "last_unload": "lul",
        "min_copies": "minCopies",
        "max_copies": "maxCopies",
        "registered_at": "regTime",
        "size": "size",
        "size_override": "sizeOvr",
        "owner": "o",
    }

    def recent_failures(self, now_ms: int, expiry_ms: int) -> dict[str, int]:
        """Failure records younger than ``expiry_ms``."""
        return {i: t for i, t in self.failures.items() if now_ms - t < expiry_ms}


@dataclass(frozen=True, slots=True)
class InstanceRecord(_Record):
    """One pod's published state (``instances/<instanceId>``), bound to its etcd lease."""

    address: str = ""
    zone: str = ""
    location: str = ""
    labels: list[str] = field(default_factory=list)
    capacity: int = 0
    used: int = 0
    lru_time: int = 0
    count: int = 0
    loads_in_progress: int = 0
    loading_threads: int = 0
    rpm: int = 0
    version: str = ""
    start_time: int = 0
    shutting_down: bool = False
    extra: dict[str, Any] = field(default_factory=lambda: EMPTY_MAP, compare=False)
    revision: int = field(default=0, compare=False)

    _FIELDS: ClassVar[dict[str, str]] = {
        "address": "addr",
        "zone": "zone",
        "location": "loc",
        "labels": "labels",
        "capacity": "cap",
        "used": "used",
        "lru_time": "lruTime",
        "count": "count",
        "loads_in_progress": "lInProg",
        "loading_threads": "lThreads",
        "rpm": "rpm",
        "version": "vers",
        "start_time": "startTime",
        "shutting_down": "shutdown",
    }

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.used)


@dataclass(frozen=True, slots=True)
class VModelRecord(_Record):
    """A virtual model (alias) pointing at concrete models (``vmodels/<vModelId>``)."""

    owner: str = ""
    active: str = ""
    target: str = ""
    failed: bool = False
    extra: dict[str, Any] = field(default_factory=lambda: EMPTY_MAP, compare=False)
    revision: int = field(default=0, compare=False)

    _FIELDS: ClassVar[dict[str, str]] = {
        "owner": "o",
        "active": "amid",
        "target": "tmid",
        "failed": "failed",
    }
