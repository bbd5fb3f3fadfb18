"""Drain (graceful shutdown): which of a leaving pod's models are loaded elsewhere first, one rule per row.

pod-0 leaves (``drain.run``, as SIGTERM does after publishing ``shuttingDown``); pod-1 stays. Time is a
FakeClock, so "used in the last hour" is set without waiting. Afterwards pod-0 holds nothing and no record
lists it; the row says whether pod-1 got a copy. (Real SIGTERM of a pod process under traffic:
tests/integration/test_mesh_cluster.py.)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from tests.fakes import FakeClock
from tests.inprocess.conftest import case_ids, load_on
from tests.support.conditions import wait_until
from tests.support.inprocess import MANUAL_CHECKS, InProcessCluster

M = "m"
SETTINGS = {**MANUAL_CHECKS, "type_constraints": json.dumps({"only-a": {"required": ["a"]}})}
LABELS = [{"labels": ["a"]}, {}]


def used_here(model_type: str = "fake", *, idle_s: float = 0):
    async def arrange(mesh: InProcessCluster) -> None:
        await mesh[0].client.register(M, model_type)
        await load_on(mesh, 0, M)
        mesh.clock.advance(idle_s)

    return arrange


async def also_on_pod_1(mesh: InProcessCluster) -> None:
    await used_here()(mesh)
    await load_on(mesh, 1, M, copy=True)


async def pod_1_leaving_too(mesh: InProcessCluster) -> None:
    await used_here()(mesh)
    mesh[1].pod.shutting_down = True
    await mesh[1].pod.publisher.publish(force=True)
    await wait_until(lambda: mesh[0].pod.views.current.instance("pod-1").shutting_down, what="pod-1 leaving")


@dataclass(frozen=True)
class Case:
    arrange: Callable[[InProcessCluster], Awaitable[None]]
    migrated: bool  # pod-1 loaded a copy because pod-0 was leaving
    pod_1_holds: bool  # pod-1 holds a copy afterwards


CASES = {
    "used within the hour, only here: loaded on the other pod first": Case(used_here(), True, True),
    "last used over an hour ago: left to load on demand": Case(used_here(idle_s=3601), False, False),
    "already served by another live pod: no second move": Case(also_on_pod_1, False, True),
    "no other pod may load its type: not moved": Case(used_here("only-a"), False, False),
    "the other pod is leaving too: nothing moves": Case(pod_1_leaving_too, False, False),
}


@pytest.mark.parametrize("case", CASES.values(), ids=case_ids(CASES))
async def test_drain(cluster, case: Case) -> None:
    clock = FakeClock()
    mesh = await cluster(pods=2, settings=SETTINGS, pod_settings=LABELS, clock=clock)
    await case.arrange(mesh)
    loads_before = mesh[1].runtime.loads[M]
    leaving = mesh[0].pod
    leaving.shutting_down = True
    leaving.loader.accepting = False
    await leaving.drain.run(clock.monotonic() + 30)
    assert (mesh[1].runtime.loads[M] - loads_before == 1) == case.migrated
    assert mesh[1].holds(M) == case.pod_1_holds
    assert len(leaving.cache) == 0 and M not in mesh[0].runtime.loaded
    await wait_until(lambda: _released(mesh), what="pod-0's copy released from the record")


async def _released(mesh: InProcessCluster) -> bool:
    rec = await mesh[1].pod.registry.get_strong(M)
    return "pod-0" not in rec.instances
