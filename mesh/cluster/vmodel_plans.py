"""vModel plans: pure functions from the current vModel record (and a request) to the next one, and the
refs bookkeeping that goes with them. No I/O; ``mesh.cluster.vmodels`` commits what these decide.

Invariant kept by every commit: ``refs(m)`` = number of vmodels whose ``{active, target}`` contains ``m``
(``ref_deltas``), so a model is never unregistered while a vmodel points at it.

Owner semantics, as ModelMesh's ``VModelManager`` (clients can tell): the owner is checked only when the
request names one. ``setVModel`` naming another owner than the existing vmodel's fails with ALREADY_EXISTS;
``deleteVModel`` naming another owner succeeds without effect; a request naming no owner acts on any vmodel;
a vmodel without an owner takes the first one given. ``expectedTargetModelId`` is a compare-and-swap on an
existing vmodel's target; it does not stop the creation of a vmodel that does not exist yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh.errors import AlreadyExists, FailedPrecondition, ModelNotFound
from mesh.kv.records import VModelRecord

DEFINED = "DEFINED"
TRANSITIONING = "TRANSITIONING"
TRANSITION_FAILED = "TRANSITION_FAILED"
VNOT_FOUND = "NOT_FOUND"


@dataclass(frozen=True, slots=True)
class SetRequest:
    """The parts of ``SetVModelRequest`` that decide the new vmodel record."""

    vmodel_id: str
    target: str
    owner: str = ""
    update_only: bool = False
    expected_target: str = ""
    force: bool = False


def owned_by_other(cur: VModelRecord | None, owner: str) -> bool:
    """The request names an owner and the existing vmodel has a different one."""
    return bool(owner) and cur is not None and bool(cur.owner) and cur.owner != owner


def plan_set(cur: VModelRecord | None, req: SetRequest) -> VModelRecord:
    """The vmodel record after ``setVModel`` (``cur`` itself when nothing changes). Raises on owner
    mismatch (ALREADY_EXISTS), expectedTargetModelId mismatch and updateOnly of a missing vmodel."""
    if owned_by_other(cur, req.owner):
        assert cur is not None
        raise AlreadyExists(f"vmodel '{req.vmodel_id}' already exists and is owned by '{cur.owner}'")
    if req.expected_target and cur is not None and cur.target != req.expected_target:
        raise FailedPrecondition(
            f"vmodel '{req.vmodel_id}' target is '{cur.target}', not the expected '{req.expected_target}'"
        )
    if cur is None:
        if req.update_only:
            raise ModelNotFound(req.vmodel_id, kind="vmodel")
        # Nothing else to serve: the new model is active at once, loaded or not.
        return VModelRecord(owner=req.owner, active=req.target, target=req.target)
    # Same target clears ``failed`` (retry); the active model as target abandons a pending transition.
    new = cur.replace(owner=cur.owner or req.owner, target=req.target, failed=False)
    if req.force:
        new = new.replace(active=new.target)
    return cur if new == cur else new


def plan_complete(cur: VModelRecord | None, target: str) -> VModelRecord | None:
    """Switch traffic to ``target`` if the vmodel is still transitioning to it."""
    if cur is None or cur.target != target or cur.active == target:
        return cur
    return cur.replace(active=target, failed=False)


def plan_fail(cur: VModelRecord | None, target: str) -> VModelRecord | None:
    """Mark the transition to ``target`` failed (the active model keeps serving)."""
    if cur is None or cur.target != target or cur.active == target or cur.failed:
        return cur
    return cur.replace(failed=True)


def plan_delete(cur: VModelRecord | None, owner: str) -> VModelRecord | None:
    """Delete the vmodel, unless the request names another owner (then nothing happens, as ModelMesh)."""
    if owned_by_other(cur, owner):
        return cur
    return None


def referenced(rec: VModelRecord | None) -> set[str]:
    """Models a vmodel record holds a ref on (active and target, once each)."""
    if rec is None:
        return set()
    return {m for m in (rec.active, rec.target) if m}


def ref_deltas(old: VModelRecord | None, new: VModelRecord | None) -> dict[str, int]:
    """refs changes that keep ``refs(m) = #vmodels referencing m`` when ``old`` becomes ``new``."""
    before, after = referenced(old), referenced(new)
    deltas = {m: -1 for m in before - after}
    deltas.update({m: 1 for m in after - before})
    return deltas


def is_pending(rec: VModelRecord | None) -> bool:
    return rec is not None and rec.active != rec.target and not rec.failed


def vmodel_status(rec: VModelRecord | None) -> str:
    if rec is None:
        return VNOT_FOUND
    if rec.active == rec.target:
        return DEFINED
    return TRANSITION_FAILED if rec.failed else TRANSITIONING
