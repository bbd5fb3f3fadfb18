"""CopyScaler: how many copies a model gets, one rule per row, on three in-process pods with a FakeClock.

A row sets how the model is used on pod-0 (requests counted before one stats roll-up, so ``rpm`` is exactly
that count; continuous use over a span of fake time), how much the copies have aged, and then runs the
scaler's check once on the pod(s) it names. The expectation is the number of live copies afterwards (and, for
removals, which pod gave its copy up). Rates: threshold 60 rpm; a second copy after 420 s of continuous use;
an extra copy is removed after 600 s unused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from tests.fakes import FakeClock
from tests.inprocess.conftest import case_ids, load_on, registry_writes_done
from tests.support.conditions import wait_until
from tests.support.inprocess import MANUAL_CHECKS, InProcessCluster

M = "m"
THRESHOLD = 60
SETTINGS = {
    **MANUAL_CHECKS,
    "scaleup_rpm_threshold": THRESHOLD,
    "second_copy_after_s": 420,
    "extra_copy_idle_s": 600,
}
GUARD_S = MANUAL_CHECKS["scale_check_interval_s"] + 10  # no scale-up within this long of another load


def requests(mesh: InProcessCluster, rpm: int, index: int = 0) -> None:
    """pod ``index`` counted ``rpm`` requests for M in the last stats tick (a one-minute tick)."""
    stats = mesh[index].pod.stats
    for _ in range(rpm):
        stats.record(M)
    stats.roll(mesh.clock.now_ms())


async def live_copies(mesh: InProcessCluster) -> set[str]:
    rec = await mesh[0].pod.registry.get_strong(M)
    return {i for i in rec.loaded if i in {p.id for p in mesh.pods}}


def single_copy(*, min_copies: int = 0, max_copies: int = 0, aged_s: float = 0):
    async def arrange(mesh: InProcessCluster) -> None:
        await mesh[0].client.register(M, min_copies=min_copies, max_copies=max_copies)
        await load_on(mesh, 0, M)
        mesh.clock.advance(aged_s)

    return arrange


def hot(rpm: int, *, aged_s: float = GUARD_S, **record):
    async def arrange(mesh: InProcessCluster) -> None:
        await single_copy(**record)(mesh)
        mesh.clock.advance(aged_s)
        requests(mesh, rpm)

    return arrange


def in_use_for(seconds: float, *, others_full: bool = False):
    """Requests in every one-minute tick for ``seconds``: continuous use, at a low rate. ``others_full``:
    pod-1 and pod-2 each hold another model filling them (the cluster has under 10 % free)."""

    async def arrange(mesh: InProcessCluster) -> None:
        if others_full:  # used before M: a copy of M could evict them, were it allowed
            for i in (1, 2):
                await mesh[0].client.register(f"filler-{i}")
                await load_on(mesh, i, f"filler-{i}")
            mesh.clock.advance(1)
        await single_copy()(mesh)
        if others_full:
            await _published(mesh)
        elapsed = 0.0
        while True:
            requests(mesh, 2)
            if elapsed >= seconds:
                return
            step = min(60.0, seconds - elapsed)
            mesh.clock.advance(step)
            elapsed += step

    return arrange


def two_copies_idle_for(seconds: float, *, fuller: int = 1):
    """Copies on pod-0 and pod-1, unused for ``seconds``; pod ``fuller`` also holds another model."""

    async def arrange(mesh: InProcessCluster) -> None:
        await mesh[0].client.register(M)
        await mesh[0].client.register("filler")
        await load_on(mesh, 0, M)
        await load_on(mesh, 1, M, copy=True)
        await load_on(mesh, fuller, "filler")
        await _published(mesh)
        mesh.clock.advance(seconds)

    return arrange


async def squeezed_extra_copy(mesh: InProcessCluster) -> None:
    """pod-1 holds a second copy and is full (no room for a model of the default size); the copy is used,
    but at a low rate."""
    mesh[1].runtime.behave("filler", size=70_000)
    await two_copies_idle_for(0)(mesh)
    requests(mesh, 2, index=1)


async def _published(mesh: InProcessCluster) -> None:
    """Until each pod's published record (used bytes) is in every view: removal ranks holders by it."""
    for p in mesh.pods:
        await p.pod.publisher.publish(force=True)
    await wait_until(
        lambda: all(
            q.pod.views.current.instance(p.id).used == p.pod.cache.used for p in mesh.pods for q in mesh.pods
        ),
        what="published used bytes",
    )


@dataclass(frozen=True)
class Case:
    arrange: Callable[[InProcessCluster], Awaitable[None]]
    copies: int  # live copies after the check
    check_on: tuple[int, ...] = (0,)  # pods whose scaler runs, in order
    removed_from: str | None = None  # the pod that gave up its copy
    runtime: dict | None = None  # FakeRuntime arguments for every pod


CASES = {
    "rate at the threshold: one more copy": Case(hot(THRESHOLD), copies=2),
    "rate at 5x the threshold: two more copies (at most 2 per check)": Case(hot(5 * THRESHOLD), copies=3),
    "rate below the threshold: nothing": Case(hot(THRESHOLD - 1), copies=1),
    "hot, but max copies 2: one more only": Case(hot(5 * THRESHOLD, max_copies=2), copies=2),
    "hot, but a copy loaded within the guard: not yet": Case(
        hot(5 * THRESHOLD, aged_s=GUARD_S - 60), copies=1
    ),
    "fewer live copies than min copies: one more": Case(single_copy(min_copies=2, aged_s=GUARD_S), copies=2),
    "fewer copies than min, but a copy loaded within the guard: not yet": Case(
        single_copy(min_copies=2), copies=1
    ),
    "in continuous use for second_copy_after_s: a second copy": Case(in_use_for(420), copies=2),
    "in continuous use, but not long enough: one copy": Case(in_use_for(360), copies=1),
    "continuous use, cluster under 10% free: no second copy": Case(
        in_use_for(420, others_full=True), copies=1, runtime={"capacity": 21_000}
    ),
    "extra copy idle past extra_copy_idle_s: the fuller holder removes it": Case(
        two_copies_idle_for(601, fuller=1), copies=1, check_on=(0, 1), removed_from="pod-1"
    ),
    "extra copy idle: removed by pod-0 when pod-0 is the fuller one": Case(
        two_copies_idle_for(601, fuller=0), copies=1, check_on=(1, 0), removed_from="pod-0"
    ),
    "extra copy used within extra_copy_idle_s: kept": Case(
        two_copies_idle_for(599), copies=2, check_on=(0, 1)
    ),
    "extra copy on a full pod at a low rate: removed": Case(
        squeezed_extra_copy, copies=1, check_on=(1,), removed_from="pod-1", runtime={"capacity": 100_000}
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=case_ids(CASES))
async def test_copy_scaler(cluster, case: Case) -> None:
    clock = FakeClock()
    mesh = await cluster(pods=3, settings=SETTINGS, runtime=case.runtime, clock=clock)
    for (
        p
    ) in mesh.pods:  # the leader's reaper tops up min copies too (tested on its own): only the scaler acts
        p.pod.reaper.is_leader = lambda: False
    await case.arrange(mesh)
    before = await live_copies(mesh)
    for i in case.check_on:
        await mesh[i].pod.scaler.run_once()
    await registry_writes_done()
    after = await live_copies(mesh)
    assert len(after) == case.copies, after
    for pod_id in after - before:  # every added copy is loaded on that pod's runtime
        assert M in mesh[int(pod_id.rsplit("-", 1)[1])].runtime.loaded
    if case.removed_from is not None:
        assert before - after == {case.removed_from}
        assert M in mesh[int(case.removed_from[-1])].runtime.unloads
