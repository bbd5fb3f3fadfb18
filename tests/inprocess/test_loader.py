"""Loader: one pod's load/unload pipeline, case by case, against a FakeRuntime over the real SPI.

The registry side is ``RecordingLoadHooks`` (what the loader asked etcd to record, in order), the runtime a
``FakeRuntime`` reached through the real ``RuntimeClient``, time a ``FakeClock``. The cache holds 30 kB;
every model is 10 kB unless a row says otherwise. A row names the models loaded before (``preload``: id and
last-used time), the runtime's behaviour, the load under test, something that happens while it runs
(``during``), and the expected outcome: the error (or none), what the runtime was asked to load and to
unload (in order), what the cache holds afterwards, and the registry calls for the model under test. The
claim runs alongside the runtime's size prediction, so a load refused for its size still claimed first and
releases the claim.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from mesh.errors import (
    CapacityExhausted,
    LoadedElsewhere,
    MeshError,
    ModelLoadFailed,
    ModelTooLarge,
    RuntimeUnavailable,
    ShuttingDown,
)
from mesh.local.cache import LocalCache
from mesh.local.loader import Loader, LoadSpec
from mesh.local.runtime_client import RuntimeClient
from mesh.metrics import MeshMetrics
from mesh.tasks import TaskSupervisor
from tests.fakes import FakeClock, FakeRuntime, RecordingLoadHooks
from tests.inprocess.conftest import case_ids
from tests.support.conditions import wait_until

CAPACITY = 30_000
SIZE = 10_000
X = "x"  # the model under test


@dataclass
class Rig:
    runtime: FakeRuntime
    hooks: RecordingLoadHooks
    loader: Loader
    cache: LocalCache
    tasks: TaskSupervisor
    clock: FakeClock
    metrics: MeshMetrics

    async def load(self, model_id: str, last_used: int, *, exclusive: bool = True):
        return await self.loader.ensure_local(
            model_id, LoadSpec(type="fake"), last_used=last_used, exclusive=exclusive
        )

    async def idle(self) -> None:
        """Until the loader's background work (loads, unloads, registry releases) has finished."""
        await wait_until(lambda: len(self.tasks) == 0, what="the loader's background tasks")


@pytest.fixture
async def rig():
    runtime = await FakeRuntime(capacity=CAPACITY, model_size=SIZE, default_model_size=SIZE).start()
    clock = FakeClock()
    client = RuntimeClient(runtime.address, clock=clock)
    info = await client.wait_ready(10)
    tasks = TaskSupervisor()
    hooks = RecordingLoadHooks()
    metrics = MeshMetrics()
    cache = LocalCache(info.capacity)
    loader = Loader(
        instance_id="pod-under-test",
        cache=cache,
        runtime=client,
        hooks=hooks,
        info=info,
        metrics=metrics,
        tasks=tasks,
        clock=clock,
    )
    try:
        yield Rig(runtime, hooks, loader, cache, tasks, clock, metrics)
    finally:
        await tasks.close()
        await client.close()
        await runtime.stop()


# --- what happens while the load under test runs (it hangs in the runtime until released)
async def supervisor_reports_runtime_crash(rig: Rig, callers: list[asyncio.Task]) -> None:
    rig.loader.runtime_lost()
    # the waiting callers fail at once, not when the dead runtime's connection finally drops
    await wait_until(lambda: all(c.done() for c in callers), what="waiting callers to fail")
    await rig.runtime.crash()


async def runtime_stops_answering(rig: Rig, callers: list[asyncio.Task]) -> None:
    await rig.runtime.crash()


async def shutting_down(rig: Rig) -> None:
    rig.loader.accepting = False


@dataclass(frozen=True)
class Case:
    preload: list[tuple[str, int]] = field(
        default_factory=list
    )  # (model id, last used) loaded first, in order
    behave: dict = field(default_factory=dict)  # FakeRuntime behaviour of X
    last_used: int = 1_000  # of the load under test
    callers: int = 1  # concurrent ensure_local calls for X
    exclusive: bool = True
    lose_claim_to: list[str] = field(default_factory=list)
    unregistered_meanwhile: bool = False
    before: Callable[[Rig], Awaitable[None]] | None = None  # before the load is asked for
    during: Callable[[Rig, list[asyncio.Task]], Awaitable[None]] | None = None  # while X's load hangs
    # expected
    error: type[MeshError] | None = None
    error_text: str = ""
    loads: int = 1  # runtime loadModel calls for X
    unloads: list[str] = field(default_factory=list)  # unloadModel calls after the preload, in order
    cache: set[str] = field(default_factory=set)  # model ids held afterwards
    calls: list[tuple] = field(default_factory=list)  # registry hook calls for X, in order
    cached_size: int = SIZE  # X's cache entry size when it stays


CASES = {
    "first caller loads and records the copy": Case(cache={X}, calls=[("claim", X), ("loaded", X, SIZE)]),
    "ten concurrent callers share one runtime load": Case(
        callers=10, cache={X}, calls=[("claim", X), ("loaded", X, SIZE)]
    ),
    "exclusive claim lost: LoadedElsewhere, the runtime is never asked": Case(
        lose_claim_to=["pod-b"], error=LoadedElsewhere, error_text="pod-b", loads=0, calls=[("claim", X)]
    ),
    "an additional copy (not exclusive) loads even though another pod holds one": Case(
        lose_claim_to=["pod-b"], exclusive=False, cache={X}, calls=[("claim", X), ("loaded", X, SIZE)]
    ),
    "load failure: recorded with the message of the runtime, which is told to unload": Case(
        behave={"fail": "corrupt artifact: bad magic"},
        error=ModelLoadFailed,
        error_text="corrupt artifact: bad magic",
        unloads=[X],
        calls=[("claim", X), ("failed", X, "corrupt artifact: bad magic")],
    ),
    "full cache: the least recently used model is evicted": Case(
        preload=[("a", 100), ("b", 300), ("c", 200)],
        unloads=["a"],
        cache={"b", "c", X},
        calls=[("claim", X), ("loaded", X, SIZE)],
    ),
    "two evictions follow last-used order, not load order": Case(
        preload=[("a", 300), ("b", 100), ("c", 200)],
        behave={"predicted_size": 2 * SIZE},
        unloads=["b", "c"],
        cache={"a", X},
        calls=[("claim", X), ("loaded", X, SIZE)],
    ),
    "a load used longer ago than every cached model evicts nothing": Case(
        preload=[("a", 2_000), ("b", 3_000), ("c", 4_000)],
        last_used=1_000,
        error=CapacityExhausted,
        error_text="used more recently",
        loads=0,
        cache={"a", "b", "c"},
        calls=[("claim", X), ("released", X)],  # the claim ran alongside the sizing; given back
    ),
    "measured size above the prediction evicts more after the load": Case(
        preload=[("a", 100), ("b", 200)],
        behave={"predicted_size": SIZE, "size": 15_000},
        unloads=["a"],
        cache={"b", X},
        calls=[("claim", X), ("loaded", X, 15_000)],
        cached_size=15_000,
    ),
    "size unknown after the load: modelSize is asked": Case(
        behave={"size": 0, "measured_size": 12_345},
        cache={X},
        calls=[("claim", X), ("loaded", X, 12_345)],
        cached_size=12_345,
    ),
    "model larger than the whole cache: RESOURCE_EXHAUSTED naming both sizes": Case(
        behave={"predicted_size": 50_000},
        error=ModelTooLarge,
        error_text="50000 bytes",
        loads=0,
        calls=[("claim", X), ("released", X)],
    ),
    "runtime crash reported by the supervisor fails every waiting caller": Case(
        behave={"hang": True},
        callers=3,
        during=supervisor_reports_runtime_crash,
        error=RuntimeUnavailable,
        calls=[("claim", X), ("released", X)],
    ),
    "runtime stops answering mid-load: unavailable, not a model failure": Case(
        behave={"hang": True},
        callers=2,
        during=runtime_stops_answering,
        error=RuntimeUnavailable,
        calls=[("claim", X), ("released", X)],
    ),
    "record deleted while loading: the copy is unloaded again": Case(
        unregistered_meanwhile=True, unloads=[X], calls=[("claim", X), ("loaded", X, SIZE)]
    ),
    "shutting down: no new load": Case(before=shutting_down, error=ShuttingDown, loads=0),
}


@pytest.mark.parametrize("case", CASES.values(), ids=case_ids(CASES))
async def test_loader(rig: Rig, case: Case) -> None:
    for model_id, last_used in case.preload:
        await rig.load(model_id, last_used)
    await rig.idle()
    rig.runtime.unloads.clear()
    rig.hooks.calls.clear()
    if case.behave:
        rig.runtime.behave(X, **case.behave)
    rig.hooks.lose_to = case.lose_claim_to
    if case.unregistered_meanwhile:
        rig.hooks.unregistered.add(X)
    if case.before:
        await case.before(rig)

    callers = [
        asyncio.create_task(rig.load(X, case.last_used, exclusive=case.exclusive))
        for _ in range(case.callers)
    ]
    if case.during:
        await wait_until(lambda: rig.runtime.loads[X] == 1, what="the load to reach the runtime")
        await case.during(rig, callers)
    results = await asyncio.gather(*callers, return_exceptions=True)

    for result in results:
        if case.error is None:
            assert not isinstance(result, BaseException), result
            assert result.model_id == X and result.active
        else:
            assert isinstance(result, case.error), result
            assert case.error_text in result.message
    await rig.idle()
    assert rig.runtime.loads[X] == case.loads
    assert rig.runtime.unloads == case.unloads
    assert {e.model_id for e in rig.cache.entries()} == case.cache
    assert rig.cache.used == sum(e.size for e in rig.cache.entries()) <= rig.cache.capacity
    assert [c for c in rig.hooks.calls if c[1] == X] == case.calls
    if X in case.cache:
        assert rig.cache.get(X).size == case.cached_size
    evicted = [m for m in case.unloads if m != X]
    assert rig.hooks.of("released") == evicted + [X for c in case.calls if c == ("released", X)]


async def test_loads_run_at_most_max_loading_concurrency_at_once(rig: Rig) -> None:
    for i in range(3):
        rig.runtime.behave(f"m{i}", hang=True)
    loads = [asyncio.create_task(rig.load(f"m{i}", 1_000 + i)) for i in range(3)]
    await wait_until(lambda: rig.runtime.total_loads == 2, what="two loads in the runtime")
    assert rig.runtime.peak_concurrent_loads == 2  # the runtime's maxLoadingConcurrency
    for i in range(3):
        rig.runtime.release(f"m{i}")
    await asyncio.gather(*loads)
    assert rig.runtime.total_loads == 3 and rig.runtime.peak_concurrent_loads == 2


async def test_a_failed_load_is_counted_and_the_next_request_tries_again(rig: Rig) -> None:
    rig.runtime.behave(X, fail="no such file")
    with pytest.raises(ModelLoadFailed):
        await rig.load(X, 1_000)
    assert rig.metrics.registry.get_sample_value("modelmesh_loadmodel_failure_total") == 1
    rig.runtime.behave(X, fail=None)
    entry = await rig.load(X, 2_000)
    assert entry.active and rig.runtime.loads[X] == 2
