"""Availability (the cold path) and placement decisions, case by case, on in-process pods.

``locate`` (for a request), ``ensure_loaded`` and ``add_copy`` (without one) are called directly on pod-0's
``Availability``; the other pods are real peers reached over gRPC, the records live in the real etcd, and
time is a ``FakeClock`` shared by every pod (failure expiry without waiting). Each row states the situation
and the decision expected: a Route (where the request goes), the pod chosen, or the error.

pod-0 carries label ``a``, pod-2 label ``c``; type ``only-c`` may only load on pod-2 (a deterministic target).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from mesh.dataplane import headers as h
from mesh.dataplane.ports import ABSENT, LOCAL, Route, RouteKind
from mesh.errors import MeshError, ModelLoadFailed, ModelNotFound, ModelNotHere, NoPlacement
from tests.fakes import FakeClock
from tests.inprocess.conftest import Failed, case_ids, load_on, outcome, registry_writes_done
from tests.support.conditions import wait_until
from tests.support.inprocess import InProcessCluster

M = "m"
EXPIRY_MS = 60_000
SETTINGS = {
    "type_constraints": json.dumps({"only-c": {"required": ["c"]}}),
    "load_failure_expiry_ms": EXPIRY_MS,
    "max_load_failures": 3,
    "max_hops": 4,
}
LABELS = [{"labels": ["a"]}, {}, {"labels": ["c"]}]


async def three_pods(cluster, clock: FakeClock) -> InProcessCluster:
    return await cluster(pods=3, settings=SETTINGS, pod_settings=LABELS, clock=clock)


def fwd(mesh: InProcessCluster, index: int, internal: str) -> Route:
    return Route(RouteKind.FORWARD, mesh[index].id, mesh[index].address, internal)


# ---------------------------------------------------------------------------------------------- arrangements
def registered(model_type: str = "fake"):
    async def arrange(mesh: InProcessCluster) -> None:
        await mesh[0].client.register(M, model_type)
        await wait_until(lambda: all(p.pod.views.current.model(M) for p in mesh.pods), what="record in views")

    return arrange


def loaded_on(index: int, model_type: str = "fake"):
    async def arrange(mesh: InProcessCluster) -> None:
        await registered(model_type)(mesh)
        await load_on(mesh, index, M)

    return arrange


def failed_on(*indexes: int, model_type: str = "fake"):
    async def arrange(mesh: InProcessCluster) -> None:
        await registered(model_type)(mesh)
        for i in indexes:
            await mesh[0].pod.registry.record_failure(M, mesh[i].id, f"boom on pod-{i}")
        await wait_until(
            lambda: len(mesh[0].pod.views.current.model(M).failures) == len(indexes), what="failures in view"
        )

    return arrange


async def claimed_by_pod_1_loading(mesh: InProcessCluster) -> None:
    """pod-1 has claimed M and is loading it (its runtime holds the load until released)."""
    await registered()(mesh)
    mesh[1].runtime.behave(M, hang=True)
    pod1 = mesh[1].pod
    pod1.tasks.spawn("mesh:test-load", pod1.availability.ensure_loaded(M, last_used=1, local_only=True))
    await wait_until(lambda: mesh[1].runtime.loads[M] == 1, what="pod-1 loading")
    await wait_until(lambda: "pod-1" in mesh[0].pod.views.current.model(M).instances, what="claim in view")


def then_expire(arrange):
    async def run(mesh: InProcessCluster) -> None:
        await arrange(mesh)
        mesh.clock.advance(EXPIRY_MS / 1000 + 1)

    return run


# ---------------------------------------------------------------------------------------------- locate
@dataclass(frozen=True)
class Locate:
    arrange: Callable[[InProcessCluster], Awaitable[None]]
    expect: Callable[[InProcessCluster], Route] | type[MeshError] | set
    exclude: tuple[int, ...] = ()
    internal: str = ""
    hop: int = 0
    may_load: bool = True
    loads: dict[int, int] = field(default_factory=dict)  # runtime loads of M per pod afterwards
    text: str = ""  # in the error message


LOCATE = {
    "loaded on a live peer: forward there as a hit": Locate(
        loaded_on(1), lambda mesh: fwd(mesh, 1, h.INTERNAL_HIT), loads={1: 1}
    ),
    "loaded only on excluded pods: placed on the pod left": Locate(
        loaded_on(1), lambda mesh: fwd(mesh, 2, h.INTERNAL_LOAD), exclude=(0, 1), loads={1: 1}
    ),
    "loaded nowhere, constrained to pod-2: forward-load there": Locate(
        registered("only-c"), lambda mesh: fwd(mesh, 2, h.INTERNAL_LOAD)
    ),
    "hop limit reached, loaded nowhere: loads here rather than forward": Locate(
        registered("only-c"), lambda mesh: LOCAL, hop=4, loads={0: 1}
    ),
    "hop limit reached, loaded on a peer: not forwarded again, UNAVAILABLE": Locate(
        loaded_on(1), NoPlacement, hop=4, loads={1: 1}
    ),
    "hit-only request on a pod without the model: not here": Locate(
        loaded_on(1), ModelNotHere, internal=h.INTERNAL_HIT, loads={1: 1}
    ),
    "asked by a peer to load: loads here": Locate(
        registered(), lambda mesh: LOCAL, internal=h.INTERNAL_LOAD, loads={0: 1}
    ),
    "asked to load, but another pod claimed it first: hand over to that pod": Locate(
        claimed_by_pod_1_loading,
        lambda mesh: fwd(mesh, 1, h.INTERNAL_HIT),
        internal=h.INTERNAL_LOAD,
        loads={1: 1},
    ),
    "ModelReady-style lookup of a model loaded nowhere: absent, nothing loads": Locate(
        registered(), lambda mesh: ABSENT, may_load=False
    ),
    "failed on max_load_failures pods recently: LOADING_FAILED, no new load": Locate(
        failed_on(0, 1, 2), ModelLoadFailed, text="boom on pod-1"
    ),
    "failures expired: placed again": Locate(then_expire(failed_on(0, 1, 2)), {"pod-0", "pod-1", "pod-2"}),
    "failed recently on pod-1, pod-0 excluded: pod-2 takes it": Locate(
        failed_on(1), lambda mesh: fwd(mesh, 2, h.INTERNAL_LOAD), exclude=(0,)
    ),
    "every pod excluded: no placement (UNAVAILABLE)": Locate(registered(), NoPlacement, exclude=(0, 1, 2)),
    "unknown model: NOT_FOUND": Locate(registered(), ModelNotFound),
}


@pytest.mark.parametrize("case", LOCATE.values(), ids=case_ids(LOCATE))
async def test_locate(cluster, case: Locate) -> None:
    clock = FakeClock()
    mesh = await three_pods(cluster, clock)
    await case.arrange(mesh)
    model = "unknown" if case.expect is ModelNotFound else M
    exclude = {mesh[i].id for i in case.exclude}
    call = mesh[0].pod.availability.locate(
        model,
        exclude=exclude,
        internal=case.internal,
        hop=case.hop,
        last_used=clock.now_ms(),
        may_load=case.may_load,
    )
    loads = dict(case.loads)
    if isinstance(case.expect, type):
        with pytest.raises(case.expect) as err:
            await call
        assert case.text in err.value.message
    else:
        route = await call
        if isinstance(case.expect, set):  # placed: loaded here, or sent to a peer to load
            target = mesh[0].id if route is LOCAL else route.peer
            assert target in case.expect and route.internal in ("", h.INTERNAL_LOAD), route
            if route is LOCAL:
                loads[0] = loads.get(0, 0) + 1
        else:
            assert route == case.expect(mesh)
    for p in mesh.pods:
        p.runtime.release(M)
    assert {p.index: p.runtime.loads[M] for p in mesh.pods if p.runtime.loads[M]} == loads


async def test_a_burst_of_misses_is_spread_by_reservations(cluster) -> None:
    """pod-0 (no room) places three misses in a row before any peer republishes its record: each load is
    remembered against its target, so the three land on three pods instead of piling onto one."""
    mesh = await cluster(
        pods=4,
        settings={"default_model_size": 60_000},
        runtime={"capacity": 100_000},
        pod_runtimes=[{"capacity": 50_000}],
    )
    for i in range(3):
        await mesh[0].client.register(f"m{i}")
    await wait_until(lambda: all(mesh[0].pod.views.current.model(f"m{i}") for i in range(3)), what="records")
    avail = mesh[0].pod.availability
    routes = [await avail.locate(f"m{i}", exclude=set(), last_used=1, may_load=True) for i in range(3)]
    assert all(r.kind is RouteKind.FORWARD and r.internal == h.INTERNAL_LOAD for r in routes), routes
    assert sorted(r.peer for r in routes) == ["pod-1", "pod-2", "pod-3"]


# ---------------------------------------------------------------------------------------------- ensure_loaded
@dataclass(frozen=True)
class Ensure:
    arrange: Callable[[InProcessCluster], Awaitable[None]]
    expect: int | type[MeshError]  # the pod returned, or the error
    local_only: bool = False
    fail_on: tuple[int, ...] = ()  # pods whose runtime fails to load M
    loads: dict[int, int] = field(default_factory=dict)  # exact, and for pods not in fail_on
    failures: tuple[int, ...] | None = ()  # pods recorded as failed (None: those of fail_on it tried)


ENSURE = {
    "already loaded on a live pod: that pod, nothing loads": Ensure(loaded_on(2), 2, loads={2: 1}),
    "loaded nowhere: the placed pod loads it (asked over gRPC)": Ensure(
        registered("only-c"), 2, loads={2: 1}
    ),
    "local only: loads here": Ensure(registered("only-c"), 0, local_only=True, loads={0: 1}),
    "local only, claimed elsewhere first: returns the holder": Ensure(
        claimed_by_pod_1_loading, 1, local_only=True, loads={1: 1}
    ),
    "the placed pod fails: tried on the others until one loads": Ensure(
        registered(), 2, fail_on=(0, 1), loads={2: 1}, failures=None
    ),
    "every pod fails: LOADING_FAILED with the failures recorded": Ensure(
        registered(), ModelLoadFailed, fail_on=(0, 1, 2), loads={0: 1, 1: 1, 2: 1}, failures=(0, 1, 2)
    ),
}


@pytest.mark.parametrize("case", ENSURE.values(), ids=case_ids(ENSURE))
async def test_ensure_loaded(cluster, case: Ensure) -> None:
    clock = FakeClock()
    mesh = await three_pods(cluster, clock)
    for i in case.fail_on:
        mesh[i].runtime.behave(M, fail=f"cannot load on pod-{i}")
    await case.arrange(mesh)
    call = mesh[0].pod.availability.ensure_loaded(M, last_used=clock.now_ms(), local_only=case.local_only)
    if isinstance(case.expect, int):
        assert await call == mesh[case.expect].id
    else:
        with pytest.raises(case.expect):
            await call
    for p in mesh.pods:
        p.runtime.release(M)
    loads = {p.index: p.runtime.loads[M] for p in mesh.pods if p.runtime.loads[M]}
    tried = {i for i in case.fail_on if loads.pop(i, 0) == 1}  # placement chose the order: each at most once
    assert loads == {i: n for i, n in case.loads.items() if i not in case.fail_on}
    rec = await mesh[0].pod.registry.get_strong(M)
    failures = tried if case.failures is None else set(case.failures)
    assert set(rec.failures) == {mesh[i].id for i in failures}


# ---------------------------------------------------------------------------------------------- add_copy
ADD_COPY = {
    "one copy on pod-0: the new copy goes to another pod": (loaded_on(0), {"pod-1", "pod-2"}),
    "every pod holds a copy: none added": (None, None),
    "constrained to pod-2, which holds it: none added": (loaded_on(2, "only-c"), None),
}


@pytest.mark.parametrize(("arrange", "expect"), ADD_COPY.values(), ids=case_ids(ADD_COPY))
async def test_add_copy(cluster, arrange, expect) -> None:
    clock = FakeClock()
    mesh = await three_pods(cluster, clock)
    if arrange is None:  # on every pod
        await registered()(mesh)
        for i in range(3):
            await load_on(mesh, i, M, copy=i > 0)
    else:
        await arrange(mesh)
    holders = set((await mesh[0].pod.registry.get_strong(M)).instances)
    target = await mesh[0].pod.availability.add_copy(M, size=0, last_used=clock.now_ms(), exclude=holders)
    if expect is None:
        assert target is None
        assert sum(p.runtime.total_loads for p in mesh.pods) == len(holders)
    else:
        assert target in expect
        assert mesh[int(target[-1])].holds(M)

        async def recorded() -> bool:  # the LOADED write follows the load (waiters go first)
            return set((await mesh[0].pod.registry.get_strong(M)).loaded) == holders | {target}

        await wait_until(recorded, what=f"the copy on {target} recorded as loaded")


# ---------------------------------------------------------------------------------------------- through a request
async def test_a_model_failing_everywhere_is_tried_on_each_pod_once_then_fails_fast(cluster) -> None:
    mesh = await cluster(pods=3)
    for p in mesh.pods:
        p.runtime.behave(model_type="broken", fail="no-such-model: file not found")
    await mesh[1].client.register("broken", "broken")
    got = await outcome(mesh[1].client.infer("broken"))
    assert isinstance(got, Failed) and "no-such-model" in got.text, got
    status = await mesh[1].client.status("broken")
    assert status["status"] == "LOADING_FAILED"
    assert {c["location"] for c in status["copies"] if c["status"] == "LOADING_FAILED"} == {
        "pod-0",
        "pod-1",
        "pod-2",
    }
    assert [p.runtime.loads["broken"] for p in mesh.pods] == [1, 1, 1]
    # once every pod failed recently, requests fail fast with the recorded cause and load nothing
    await wait_until(
        lambda: len(mesh[2].pod.views.current.model("broken").failures) == 3, what="failures seen by pod-2"
    )
    again = await outcome(mesh[2].client.infer("broken"))
    assert isinstance(again, Failed) and "no-such-model" in again.text, again
    assert [p.runtime.loads["broken"] for p in mesh.pods] == [1, 1, 1]


async def test_concurrent_ensure_loaded_from_every_pod_loads_once(cluster) -> None:
    mesh = await cluster(pods=3)
    await registered()(mesh)
    for p in mesh.pods:
        p.runtime.behave(M, load_delay_s=0.2)
    await asyncio.gather(
        *(p.pod.availability.ensure_loaded(M, last_used=1) for p in mesh.pods for _ in range(2))
    )
    assert sum(p.runtime.total_loads for p in mesh.pods) == 1
    await registry_writes_done()
    assert len((await mesh[0].pod.registry.get_strong(M)).loaded) == 1
