"""Model status as ModelMesh reports it (NOT_FOUND, NOT_LOADED, LOADING, LOADED, LOADING_FAILED), derived from
a ModelRecord plus this pod's own cache (which knows its copy's state before the registry does)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mesh.kv.records import ModelRecord
from mesh.local.cache import CacheEntry, EntryState

NOT_FOUND = "NOT_FOUND"
NOT_LOADED = "NOT_LOADED"
LOADING = "LOADING"
LOADED = "LOADED"
LOADING_FAILED = "LOADING_FAILED"


@dataclass(frozen=True, slots=True)
class CopyStatus:
    instance_id: str
    status: str
    time: int


@dataclass(frozen=True, slots=True)
class ModelStatus:
    status: str
    errors: list[str] = field(default_factory=list)
    copies: list[CopyStatus] = field(default_factory=list)


def model_status(
    rec: ModelRecord | None,
    *,
    self_id: str,
    local: CacheEntry | None,
    alive: set[str],
    now_ms: int,
    failure_expiry_ms: int,
) -> ModelStatus:
    if rec is None:
        return ModelStatus(NOT_FOUND)
    copies: list[CopyStatus] = []
    for iid, started in rec.instances.items():
        if iid != self_id and iid not in alive:
            continue
        if iid == self_id and local is not None:
            state = LOADED if local.state is EntryState.ACTIVE else LOADING
        elif iid == self_id:
            continue  # the record lags behind a local unload/failure
        else:
            state = LOADED if iid in rec.loaded else LOADING
        copies.append(CopyStatus(iid, state, rec.loaded.get(iid, started)))
    if local is not None and self_id not in rec.instances:
        copies.append(
            CopyStatus(self_id, LOADED if local.state is EntryState.ACTIVE else LOADING, local.load_started)
        )
    recent = rec.recent_failures(now_ms, failure_expiry_ms)
    for iid, t in recent.items():
        copies.append(CopyStatus(iid, LOADING_FAILED, t))
    copies.sort(key=lambda c: c.time, reverse=True)
    errors = list(dict.fromkeys(rec.failure_messages[i] for i in recent if i in rec.failure_messages))
    states = {c.status for c in copies}
    if LOADED in states:
        status = LOADED
    elif LOADING in states:
        status = LOADING
    elif recent:
        status = LOADING_FAILED
    else:
        status = NOT_LOADED
    return ModelStatus(status, errors if status == LOADING_FAILED else [], copies)
