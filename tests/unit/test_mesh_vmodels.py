"""The pure parts of vmodels: plans (new vmodel record from the current one) and the refs they imply."""

from __future__ import annotations

import pytest

from mesh.cluster.vmodel_plans import (
    DEFINED,
    TRANSITION_FAILED,
    TRANSITIONING,
    VNOT_FOUND,
    SetRequest,
    is_pending,
    plan_complete,
    plan_delete,
    plan_fail,
    plan_set,
    ref_deltas,
    vmodel_status,
)
from mesh.errors import AlreadyExists, FailedPrecondition, ModelNotFound
from mesh.kv.records import VModelRecord


def V(active: str, target: str | None = None, owner: str = "", failed: bool = False) -> VModelRecord:
    return VModelRecord(
        owner=owner, active=active, target=active if target is None else target, failed=failed
    )


def test_create_points_active_and_target_at_the_model():
    new = plan_set(None, SetRequest("v", "m1", owner="isvc"))
    assert (new.active, new.target, new.owner, new.failed) == ("m1", "m1", "isvc", False)
    assert ref_deltas(None, new) == {"m1": 1}
    assert vmodel_status(new) == DEFINED


def test_update_only_of_missing_vmodel_is_not_found():
    with pytest.raises(ModelNotFound):
        plan_set(None, SetRequest("v", "m1", update_only=True))


def test_new_target_keeps_active_and_refs_both():
    cur = V("m1")
    new = plan_set(cur, SetRequest("v", "m2"))
    assert (new.active, new.target) == ("m1", "m2")
    assert is_pending(new) and vmodel_status(new) == TRANSITIONING
    assert ref_deltas(cur, new) == {"m2": 1}


def test_completion_releases_the_old_active():
    cur = V("m1", "m2")
    new = plan_complete(cur, "m2")
    assert (new.active, new.target) == ("m2", "m2")
    assert ref_deltas(cur, new) == {"m1": -1}
    # stale completion (the vmodel moved on) changes nothing
    assert plan_complete(V("m1", "m3"), "m2") == V("m1", "m3")
    assert plan_complete(None, "m2") is None


def test_force_switches_at_once():
    cur = V("m1")
    new = plan_set(cur, SetRequest("v", "m2", force=True))
    assert (new.active, new.target) == ("m2", "m2")
    assert ref_deltas(cur, new) == {"m1": -1, "m2": 1}


def test_retarget_mid_transition_drops_the_abandoned_target():
    cur = V("m1", "m2")
    new = plan_set(cur, SetRequest("v", "m3"))
    assert (new.active, new.target) == ("m1", "m3")
    assert ref_deltas(cur, new) == {"m2": -1, "m3": 1}


def test_target_back_to_active_cancels_the_transition():
    cur = V("m1", "m2", failed=True)
    new = plan_set(cur, SetRequest("v", "m1"))
    assert (new.active, new.target, new.failed) == ("m1", "m1", False)
    assert ref_deltas(cur, new) == {"m2": -1}


def test_same_target_is_a_no_op_or_a_retry_after_failure():
    cur = V("m1", "m2")
    assert plan_set(cur, SetRequest("v", "m2")) is cur
    failed = V("m1", "m2", failed=True)
    retry = plan_set(failed, SetRequest("v", "m2"))
    assert not retry.failed and is_pending(retry)
    assert ref_deltas(failed, retry) == {}


def test_failure_marks_and_keeps_active():
    cur = V("m1", "m2")
    new = plan_fail(cur, "m2")
    assert new.failed and new.active == "m1" and vmodel_status(new) == TRANSITION_FAILED
    assert not is_pending(new)
    assert ref_deltas(cur, new) == {}
    assert plan_fail(new, "m2") is new
    assert plan_fail(V("m2"), "m2") == V("m2")


@pytest.mark.parametrize(
    ("case", "cur", "request_owner", "outcome"),
    [
        # (ModelMesh's VModelManager answers, as its clients see them)
        ("another owner may not set it", V("m1", owner="a"), "b", AlreadyExists),
        ("the owner may set it", V("m1", owner="a"), "a", "a"),
        ("a request naming no owner acts on any vmodel", V("m1", owner="a"), "", "a"),
        ("an unowned vmodel takes the first owner given", V("m1"), "c", "c"),
        ("a new vmodel gets the request's owner", None, "d", "d"),
    ],
)
def test_owner_on_set(case, cur, request_owner, outcome):
    req = SetRequest("v", "m2", owner=request_owner)
    if isinstance(outcome, type):
        with pytest.raises(outcome, match="owned by 'a'"):
            plan_set(cur, req)
    else:
        assert plan_set(cur, req).owner == outcome, case


@pytest.mark.parametrize(
    ("case", "owner", "deleted"),
    [
        ("the owner deletes it", "a", True),
        ("a request naming no owner deletes it", "", True),
        ("another owner: OK without effect", "b", False),
    ],
)
def test_owner_on_delete(case, owner, deleted):
    owned = V("m1", owner="a")
    assert (plan_delete(owned, owner) is None) is deleted, case
    assert plan_delete(None, owner) is None


def test_expected_target_is_compare_and_swap():
    cur = V("m1", "m2")
    with pytest.raises(FailedPrecondition, match=r"'m2'.*'m1'"):
        plan_set(cur, SetRequest("v", "m3", expected_target="m1"))
    assert plan_set(cur, SetRequest("v", "m3", expected_target="m2")).target == "m3"
    # as ModelMesh: the expectation applies to an existing vmodel; a missing one is created
    created = plan_set(None, SetRequest("v", "m3", expected_target="m2"))
    assert (created.active, created.target) == ("m3", "m3")


def test_delete_releases_every_ref_once():
    assert ref_deltas(V("m1"), None) == {"m1": -1}
    assert ref_deltas(V("m1", "m2"), None) == {"m1": -1, "m2": -1}
    assert vmodel_status(None) == VNOT_FOUND
