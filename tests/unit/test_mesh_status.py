"""mesh.cluster.status.model_status: ModelMesh's status values from a ModelRecord plus this pod's cache."""

from __future__ import annotations

from mesh.cluster.status import (
    LOADED,
    LOADING,
    LOADING_FAILED,
    NOT_FOUND,
    NOT_LOADED,
    CopyStatus,
    model_status,
)
from mesh.kv.records import ModelRecord
from mesh.local.cache import CacheEntry, EntryState

NOW = 1_700_000_000_000
EXPIRY = 900_000
SELF = "self-pod"


def status(rec, *, local=None, alive=frozenset({"p1", "p2", "p3"})):
    return model_status(
        rec, self_id=SELF, local=local, alive=set(alive), now_ms=NOW, failure_expiry_ms=EXPIRY
    )


def entry(state: EntryState, started: int = NOW - 10) -> CacheEntry:
    return CacheEntry(model_id="m", size=1, last_used=NOW, state=state, load_started=started)


def test_not_found() -> None:
    st = status(None)
    assert st.status == NOT_FOUND and st.errors == [] and st.copies == []


def test_not_loaded() -> None:
    assert status(ModelRecord(type="t", path="p")).status == NOT_LOADED


def test_local_entry_loading() -> None:
    st = status(ModelRecord(), local=entry(EntryState.LOADING, NOW - 5))
    assert st.status == LOADING
    assert st.copies == [CopyStatus(SELF, LOADING, NOW - 5)]


def test_local_entry_active_is_loaded_before_registry_knows() -> None:
    rec = ModelRecord(instances={SELF: NOW - 100})  # registry still says loading
    st = status(rec, local=entry(EntryState.ACTIVE))
    assert st.status == LOADED
    assert st.copies == [CopyStatus(SELF, LOADED, NOW - 100)]


def test_record_lags_local_unload() -> None:
    rec = ModelRecord(instances={SELF: NOW - 100}, loaded={SELF: NOW - 50})
    assert status(rec, local=None).status == NOT_LOADED


def test_remote_loaded_and_loading() -> None:
    rec = ModelRecord(instances={"p1": NOW - 100, "p2": NOW - 30}, loaded={"p1": NOW - 60})
    st = status(rec)
    assert st.status == LOADED
    assert st.copies == [CopyStatus("p2", LOADING, NOW - 30), CopyStatus("p1", LOADED, NOW - 60)]
    assert status(ModelRecord(instances={"p1": NOW - 100})).status == LOADING


def test_dead_instances_ignored() -> None:
    rec = ModelRecord(instances={"dead": NOW - 100, "p1": NOW - 10}, loaded={"dead": NOW - 90})
    st = status(rec)
    assert st.status == LOADING
    assert [c.instance_id for c in st.copies] == ["p1"]
    assert status(ModelRecord(instances={"dead": 1}, loaded={"dead": 2})).status == NOT_LOADED


def test_loading_failed_with_recent_errors_only() -> None:
    rec = ModelRecord(
        failures={"p1": NOW - 1_000, "p2": NOW - EXPIRY - 1, "p3": NOW - 2_000},
        failure_messages={"p1": "boom", "p2": "expired message", "p3": "boom"},
    )
    st = status(rec)
    assert st.status == LOADING_FAILED
    assert st.errors == ["boom"]  # deduplicated, expired one ignored
    assert st.copies == [
        CopyStatus("p1", LOADING_FAILED, NOW - 1_000),
        CopyStatus("p3", LOADING_FAILED, NOW - 2_000),
    ]


def test_failure_exactly_at_expiry_is_expired() -> None:
    rec = ModelRecord(failures={"p1": NOW - EXPIRY}, failure_messages={"p1": "old"})
    st = status(rec)
    assert st.status == NOT_LOADED and st.errors == []


def test_all_failures_expired_is_not_loaded() -> None:
    rec = ModelRecord(failures={"p1": NOW - EXPIRY - 5}, failure_messages={"p1": "x"})
    st = status(rec)
    assert st.status == NOT_LOADED and st.errors == [] and st.copies == []


def test_failure_without_message() -> None:
    st = status(ModelRecord(failures={"p1": NOW - 1}))
    assert st.status == LOADING_FAILED and st.errors == []


def test_loaded_wins_over_failure_and_hides_errors() -> None:
    rec = ModelRecord(
        instances={"p2": NOW - 500},
        loaded={"p2": NOW - 400},
        failures={"p1": NOW - 100},
        failure_messages={"p1": "boom"},
    )
    st = status(rec)
    assert st.status == LOADED and st.errors == []
    assert [c.status for c in st.copies] == [LOADING_FAILED, LOADED]  # newest first


def test_loading_wins_over_failure() -> None:
    rec = ModelRecord(instances={"p2": NOW - 500}, failures={"p1": NOW - 100}, failure_messages={"p1": "x"})
    assert status(rec).status == LOADING


def test_copies_newest_first() -> None:
    rec = ModelRecord(
        instances={"p1": NOW - 300, "p2": NOW - 100, "p3": NOW - 200},
        loaded={"p1": NOW - 50, "p3": NOW - 150},
    )
    st = status(rec, local=entry(EntryState.LOADING, NOW - 20))
    times = [c.time for c in st.copies]
    assert times == sorted(times, reverse=True)
    assert [c.instance_id for c in st.copies] == [SELF, "p1", "p2", "p3"]
