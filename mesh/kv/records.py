"""Typed records for everything stored in etcd, with compact JSON that preserves unknown fields.

Each record is a frozen dataclass. ``from_json(raw, revision)`` / ``to_json()`` convert; short JSON names
come from each class's ``_FIELDS`` mapping (ModelMesh's names where it had one, modelmesh.md §2); fields
equal to their default are omitted (like ModelMesh's NON_DEFAULT Jackson inclusion); keys we do not know
are kept in ``extra`` and written back unchanged, so an older pod never drops a newer pod's fields during a
rolling upgrade. ``revision`` is the etcd mod_revision the record was read at (0 = not from the store); it
is what compare-and-swap compares, and it is never serialised.

Times are epoch milliseconds; sizes are bytes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="_Record")


class _Record:
    """JSON (de)serialisation shared by all records, driven by ``_FIELDS`` (python name → json name)."""

    _FIELDS: ClassVar[dict[str, str]]

    def to_json(self) -> bytes:
        out: dict[str, Any] = dict(self.extra)  # type: ignore[attr-defined]
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name in ("extra", "revision"):
                continue
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if value == default:
                continue
            out[self._FIELDS[f.name]] = value
        return json.dumps(out, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls: type[R], raw: bytes | str, revision: int = 0) -> R:
        data = json.loads(raw) if raw else {}
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected a JSON object")
        by_json = {j: p for p, j in cls._FIELDS.items()}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            name = by_json.get(key)
            if name is None:
                extra[key] = value
            else:
                kwargs[name] = value
        return cls(**kwargs, extra=extra, revision=revision)  # type: ignore[call-arg]

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
    instances: dict[str, int] = field(default_factory=dict)
    loaded: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    failure_messages: dict[str, str] = field(default_factory=dict)
    refs: int = 0
    auto_delete: bool = False
    last_used: int = 0
    last_unload: int = 0
    min_copies: int = 0
    max_copies: int = 0
    registered_at: int = 0
    size: int = 0
    owner: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
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
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
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
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    revision: int = field(default=0, compare=False)

    _FIELDS: ClassVar[dict[str, str]] = {
        "owner": "o",
        "active": "amid",
        "target": "tmid",
        "failed": "failed",
    }
