"""Janitor (every pod) and Reaper (leader): reconciliation rules, one row each, time driven by a FakeClock.

The pods' own periodic loops wait an hour (``MANUAL_CHECKS``), so only the test's ``run_once`` / ``sweep``
acts; the records are real etcd records, written by the pods or, to set up a situation, through a pod's
registry (e.g. a copy held by ``pod-9``, a pod that does not exist any more).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from mesh.kv.records import ModelRecord
from tests.fakes import FakeClock, RecordingLoadHooks
from tests.inprocess.conftest import case_ids, load_on, registry_writes_done
from tests.support.conditions import wait_until
from tests.support.inprocess import MANUAL_CHECKS, InProcessCluster, PodUnderTest

M = "m"
HOUR_S = 3600
GHOST = "pod-9"  # never alive


async def record(mesh: InProcessCluster, model_id: str = M) -> ModelRecord | None:
    """The record as etcd has it now (read through a live pod)."""
    return await mesh.live[0].pod.registry.get_strong(model_id)


async def edit(mesh: InProcessCluster, fn: Callable[[ModelRecord], ModelRecord], model_id: str = M) -> None:
    """Change a record as another writer would (a CAS through pod-0's registry table)."""
    await mesh[0].pod.registry.table.update(model_id, lambda cur: fn(cur) if cur is not None else None)


# ---------------------------------------------------------------------------------------------- Janitor
async def load_here(mesh: InProcessCluster) -> None:
    await mesh[0].client.register(M)
    await load_on(mesh, 0, M)


async def loaded_without_a_record(mesh: InProcessCluster) -> None:
    """pod-0 holds a copy the registry never knew (its record writes went nowhere)."""
    loader = mesh[0].pod.loader
    hooks, loader.hooks = loader.hooks, RecordingLoadHooks()
    try:
        from mesh.local.loader import LoadSpec

        await loader.ensure_local(M, LoadSpec(type="fake"), last_used=mesh.clock.now_ms(), exclusive=True)
    finally:
        loader.hooks = hooks


async def copy_missing_from_its_record(mesh: InProcessCluster) -> None:
    await load_here(mesh)
    await edit(mesh, lambda r: r.replace(instances={}, loaded={}))


async def stale_claim_of_this_pod(mesh: InProcessCluster) -> None:
    await mesh[0].client.register(M)
    await mesh[0].pod.registry.claim(M, mesh[0].id, exclusive=False, alive=())


def idle_for(seconds: float, *, inflight: int = 0):
    async def arrange(mesh: InProcessCluster) -> None:
        await load_here(mesh)
        mesh[0].pod.cache.get(M).inflight = inflight
        mesh.clock.advance(seconds)

    return arrange


def used_after(seconds: float):
    async def arrange(mesh: InProcessCluster) -> None:
        await load_here(mesh)
        mesh.clock.advance(seconds)
        mesh[0].pod.cache.get(M).last_used = mesh.clock.now_ms()  # a request touched it

    return arrange


@dataclass(frozen=True)
class JanitorCase:
    arrange: Callable[[InProcessCluster], Awaitable[None]]
    held: bool  # pod-0 still holds the copy afterwards
    recorded: bool  # the record lists pod-0 as holding it afterwards
    written: bool  # the janitor changed the record (revision moved)
    idle_unload_s: float = 0
    unloaded: bool = False  # the runtime was told to unload it
    lu_pushed: bool = False  # the record's last-used now equals the copy's


JANITOR = {
    "copy whose record is gone: unloaded": JanitorCase(
        loaded_without_a_record, held=False, recorded=False, written=False, unloaded=True
    ),
    "copy missing from its record: re-added": JanitorCase(
        copy_missing_from_its_record, held=True, recorded=True, written=True
    ),
    "record claims a copy the cache does not hold: claim removed": JanitorCase(
        stale_claim_of_this_pod, held=False, recorded=False, written=True
    ),
    "idle past idle_unload_s: unloaded and released": JanitorCase(
        idle_for(61), held=False, recorded=False, written=True, idle_unload_s=60, unloaded=True
    ),
    "idle, but idle unload off (0): kept": JanitorCase(
        idle_for(10 * HOUR_S), held=True, recorded=True, written=False
    ),
    "idle past idle_unload_s with a request in flight: kept": JanitorCase(
        idle_for(61, inflight=1), held=True, recorded=True, written=False, idle_unload_s=60
    ),
    "used an hour later than the record says: last-used pushed": JanitorCase(
        used_after(HOUR_S + 1), held=True, recorded=True, written=True, lu_pushed=True
    ),
    "used recently, within the hour: no write": JanitorCase(
        used_after(600), held=True, recorded=True, written=False
    ),
}


@pytest.mark.parametrize("case", JANITOR.values(), ids=case_ids(JANITOR))
async def test_janitor(cluster, case: JanitorCase) -> None:
    clock = FakeClock()
    mesh = await cluster(pods=1, settings={**MANUAL_CHECKS, "idle_unload_s": case.idle_unload_s}, clock=clock)
    await case.arrange(mesh)
    before = await record(mesh)
    pod = mesh[0].pod
    await pod.janitor.run_once()
    await registry_writes_done()
    after = await record(mesh)
    if pod.cache.get(M) is not None:
        pod.cache.get(M).inflight = 0  # the pretended request ends (the pod's stop drains in-flight calls)
    assert mesh[0].holds(M) == case.held
    assert (M in mesh[0].runtime.loaded) == case.held
    assert (M in mesh[0].runtime.unloads) == case.unloaded
    if after is not None:
        assert (mesh[0].id in after.instances) == case.recorded, after
        assert (mesh[0].id in after.loaded) == case.recorded, after
    else:
        assert not case.recorded
    if before is not None and after is not None:
        assert (after.revision != before.revision) == case.written
    if case.lu_pushed:
        assert after.last_used == pod.cache.get(M).last_used > before.last_used


# ---------------------------------------------------------------------------------------------- Reaper
def ghost_holds(*, loaded_too: bool = True, live_copy_on: int | None = None, **record_fields):
    """M registered; a copy on the dead ``pod-9`` (and optionally a live copy on a pod)."""

    async def arrange(mesh: InProcessCluster) -> None:
        await mesh[0].client.register(M)
        if live_copy_on is not None:
            await load_on(mesh, live_copy_on, M)
        t = mesh.clock.now_ms()
        await edit(
            mesh,
            lambda r: r.replace(
                instances={**r.instances, GHOST: t},
                loaded={**r.loaded, GHOST: t} if loaded_too else r.loaded,
                **record_fields,
            ),
        )

    return arrange


async def old_and_new_failures(mesh: InProcessCluster) -> None:
    await mesh[0].client.register(M)
    await mesh[0].pod.registry.record_failure(M, "pod-1", "old failure")
    mesh.clock.advance(EXPIRY_MS / 1000 + 1)
    await mesh[0].pod.registry.record_failure(M, "pod-2", "new failure")


EXPIRY_MS = 60_000


@dataclass(frozen=True)
class ReaperCase:
    arrange: Callable[[InProcessCluster], Awaitable[None]]
    holders: int  # live pods holding M once the sweep's work is done
    instances_after: set[str] | None = None  # exact record ``instances`` (None: the live holders)
    failures_after: set[str] = field(default_factory=set)
    leader: bool = True
    replace_lost: bool = True
    loads: int = 0  # new runtime loads of M caused by the sweep


REAPER = {
    "dead pod's copy removed; the live copy stays": ReaperCase(ghost_holds(live_copy_on=1), holders=1),
    "only loaded copy died: reloaded on a live pod": ReaperCase(ghost_holds(), holders=1, loads=1),
    "only copy died, replace_lost_models off: removed, not reloaded": ReaperCase(
        ghost_holds(), holders=0, replace_lost=False
    ),
    "dead pod was only loading it: claim removed, nothing reloaded": ReaperCase(
        ghost_holds(loaded_too=False), holders=0
    ),
    "failure records past the expiry removed, recent ones kept": ReaperCase(
        old_and_new_failures, holders=0, failures_after={"pod-2"}
    ),
    "not the leader: nothing changes": ReaperCase(
        ghost_holds(), holders=0, instances_after={GHOST}, leader=False
    ),
}


@pytest.mark.parametrize("case", REAPER.values(), ids=case_ids(REAPER))
async def test_reaper(cluster, case: ReaperCase) -> None:
    clock = FakeClock()
    mesh = await cluster(
        pods=3,
        settings={
            **MANUAL_CHECKS,
            "load_failure_expiry_ms": EXPIRY_MS,
            "replace_lost_models": case.replace_lost,
        },
        clock=clock,
    )
    leader = await wait_until(
        lambda: next((p for p in mesh.pods if p.pod.election.is_leader), None), what="a leader"
    )
    await case.arrange(mesh)
    await wait_until(lambda: _view_has(leader, case), what="the arranged record in the leader's view")
    loads_before = sum(p.runtime.loads[M] for p in mesh.pods)
    reaper = leader.pod.reaper if case.leader else next(p for p in mesh.pods if p is not leader).pod.reaper
    await reaper.sweep_if_leader()
    await wait_until(lambda: not reaper._reloads, what="reloads started by the sweep")
    await registry_writes_done()
    rec = await record(mesh)
    live = {p.id for p in mesh.pods}
    assert len(set(rec.loaded) & live) == case.holders, rec
    expected = case.instances_after if case.instances_after is not None else set(rec.loaded) & live
    assert set(rec.instances) == expected, rec
    assert set(rec.failures) == case.failures_after
    assert sum(p.runtime.loads[M] for p in mesh.pods) - loads_before == case.loads


async def test_a_model_below_min_copies_is_topped_up_at_once_and_only_once(cluster) -> None:
    """The leader hears a record fall below its ``min_copies`` (here: re-registered with a higher minimum) and
    tops it up at once, without waiting for its periodic sweep; a sweep while that copy loads or after it
    adds none (issue 12: minCopies 2 once ended with 3 copies)."""
    mesh = await cluster(pods=3, settings=MANUAL_CHECKS, clock=FakeClock())
    leader = await wait_until(
        lambda: next((p for p in mesh.pods if p.pod.election.is_leader), None), what="a leader"
    )
    await mesh[0].client.register(M)
    await load_on(mesh, 0, M)
    loads_before = sum(p.runtime.loads[M] for p in mesh.pods)
    live = {p.id for p in mesh.pods}

    async def live_holders() -> set[str]:
        return set((await record(mesh)).loaded) & live

    async def two_holders() -> bool:
        return len(await live_holders()) == 2

    await mesh[0].client.register(M, min_copies=2)
    await leader.pod.reaper.sweep_if_leader()  # a sweep racing the watch's top-up
    await wait_until(two_holders, what="a second copy")
    await leader.pod.reaper.sweep_if_leader()
    await wait_until(lambda: not leader.pod.reaper._reloads, what="top-ups started by the sweeps")
    await registry_writes_done()
    assert len(await live_holders()) == 2
    assert sum(p.runtime.loads[M] for p in mesh.pods) - loads_before == 1


def _view_has(pod: PodUnderTest, case: ReaperCase) -> bool:
    rec = pod.pod.views.current.model(M)
    return rec is not None and (bool(rec.instances) or bool(rec.failures))


async def test_a_killed_pods_models_come_back_elsewhere_without_waiting_for_a_sweep(cluster) -> None:
    """The leader hears the instance record go (the lease ended) and sweeps at once: the dead pod leaves
    every record and its only copy is loaded on a live pod."""
    mesh = await cluster(pods=3, settings=MANUAL_CHECKS)
    leader = await wait_until(
        lambda: next((p for p in mesh.pods if p.pod.election.is_leader), None), what="a leader"
    )
    victim = next(p for p in mesh.pods if p is not leader)
    await mesh[0].client.register(M)
    await load_on(mesh, victim.index, M)
    await mesh.kill(victim.index, revoke_lease=True)

    async def moved() -> bool:
        rec = await record(mesh)
        return victim.id not in rec.instances and any(i != victim.id for i in rec.loaded)

    await wait_until(moved, what="the copy reloaded on a live pod")
    assert sum(p.runtime.loads[M] for p in mesh.live) == 1


async def test_when_the_leader_dies_another_pod_takes_over_and_sweeps(cluster) -> None:
    mesh = await cluster(pods=3, settings=MANUAL_CHECKS)
    leader = await wait_until(
        lambda: next((p for p in mesh.pods if p.pod.election.is_leader), None), what="a leader"
    )
    await mesh[0].client.register(M)
    await load_on(mesh, leader.index, M)
    await mesh.kill(leader.index, revoke_lease=True)
    successor = await wait_until(
        lambda: next((p for p in mesh.live if p.pod.election.is_leader), None), what="a new leader"
    )
    await wait_until(
        lambda: all(p.pod.election.leader_id == successor.id for p in mesh.live),
        what="every pod to follow it",
    )

    async def moved() -> bool:
        rec = await record(mesh)
        return leader.id not in rec.instances and any(i != leader.id for i in rec.loaded)

    await wait_until(moved, what="the new leader's sweep to reload the dead leader's model")
