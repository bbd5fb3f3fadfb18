"""mesh.local.loader on the miss path: what it asks the runtime, and what a stale copy may remove.

The runtime and the registry hooks are small recording stand-ins (pure logic of the loader: the real runtime
and etcd are exercised by the integration tests); the cache and the loader are the real ones.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from mesh.errors import ModelNotHere
from mesh.local.cache import EntryState, LocalCache
from mesh.local.loader import Loader, LoadSpec
from mesh.local.runtime_client import RuntimeInfo
from mesh.metrics import MeshMetrics
from mesh.tasks import TaskSupervisor
from tests.support.conditions import wait_until

SIZE = 4096


class RecordingRuntime:
    """Answers the SPI calls the loader makes and records them; ``gate`` holds loads until set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def predict_size(self, model_id: str, model_type: str, path: str, key: str) -> int | None:
        self.calls.append(("predict", model_id))
        return SIZE

    async def load(self, model_id: str, model_type: str, path: str, key: str, **_: object) -> int:
        self.calls.append(("load", model_id))
        await self.gate.wait()
        return SIZE

    async def unload(self, model_id: str, timeout_s: float = 60.0) -> None:
        self.calls.append(("unload", model_id))

    async def model_size(self, model_id: str) -> int | None:
        return SIZE


class Hooks:
    async def claim(self, model_id: str, *, exclusive: bool, unreachable: frozenset[str]) -> None:
        pass

    async def loaded(self, model_id: str, *, last_used: int, size: int) -> None:
        pass

    async def released(self, model_id: str, *, last_used: int) -> None:
        pass

    async def failed(self, model_id: str, cause: str) -> None:
        pass


def _loader(runtime: RecordingRuntime) -> Loader:
    info = RuntimeInfo(
        capacity=1 << 20,
        max_loading_concurrency=2,
        load_timeout_ms=5000,
        default_model_size=SIZE,
        version="t",
    )
    return Loader(
        instance_id="pod-0",
        cache=LocalCache(1 << 20),
        runtime=runtime,  # type: ignore[arg-type]
        hooks=Hooks(),
        info=info,
        metrics=MeshMetrics(CollectorRegistry()),
        tasks=TaskSupervisor(),
    )


def _spec(known_size: int = 0) -> LoadSpec:
    return LoadSpec(type="sklearn", path="m", key="", known_size=known_size)


@pytest.mark.asyncio
async def test_a_reload_of_a_measured_model_skips_the_size_prediction() -> None:
    runtime = RecordingRuntime()
    loader = _loader(runtime)
    await loader.wait(await loader.ensure_local("first", _spec(), last_used=1, exclusive=True))
    await loader.wait(await loader.ensure_local("again", _spec(known_size=SIZE), last_used=1, exclusive=True))
    assert runtime.calls.count(("predict", "first")) == 1
    assert ("predict", "again") not in runtime.calls  # measured before: no runtime round trip
    assert loader.cache.get("again").size == SIZE
    await loader.tasks.close()


@pytest.mark.asyncio
async def test_a_stale_copy_does_not_remove_the_reload_started_after_it() -> None:
    """A request whose invoke found the runtime without the model drops *its* entry only: a newer load of the
    same model (started by another request meanwhile) goes on and its waiters are served."""
    runtime = RecordingRuntime()
    loader = _loader(runtime)
    stale = await loader.wait(await loader.ensure_local("m", _spec(), last_used=1, exclusive=True))
    loader.cache.remove("m")  # evicted (its runtime copy went) while a request was about to invoke it
    runtime.gate.clear()
    waiter = asyncio.create_task(
        loader.ensure_local("m", _spec(known_size=SIZE), last_used=2, exclusive=True)
    )
    await wait_until(lambda: runtime.calls.count(("load", "m")) == 2, what="the reload at the runtime")
    fresh = loader.cache.get("m")
    assert fresh is not None and fresh is not stale and fresh.state is EntryState.LOADING
    assert not await loader.unload("m", reason="runtime no longer has it", only=stale)
    assert loader.cache.get("m") is fresh
    runtime.gate.set()
    assert (await waiter) is fresh and fresh.state is EntryState.ACTIVE
    await loader.tasks.close()


@pytest.mark.asyncio
async def test_a_load_whose_entry_was_removed_fails_its_waiters_retryably() -> None:
    runtime = RecordingRuntime()
    runtime.gate.clear()
    loader = _loader(runtime)
    waiter = asyncio.create_task(
        loader.ensure_local("m", _spec(known_size=SIZE), last_used=1, exclusive=True)
    )
    await wait_until(lambda: ("load", "m") in runtime.calls, what="the load at the runtime")
    assert loader.cache.remove("m") is not None
    runtime.gate.set()
    with pytest.raises(ModelNotHere):  # the router retries: not the client's NOT_FOUND
        await waiter
    assert ("unload", "m") in runtime.calls  # the memory it took is given back
    await loader.tasks.close()
