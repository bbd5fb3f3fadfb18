"""mesh.tasks: supervised loops restart and are counted, periodic checks survive failures, and a stop is never
swallowed (the SIGTERM hang of issue 13 item 12: a cancellation arriving as the kick fires)."""

from __future__ import annotations

import asyncio

import pytest

from mesh.errors import KvUnavailable
from mesh.tasks import TaskSupervisor, periodic, wait_event


async def test_a_crashing_loop_is_restarted_and_counted() -> None:
    restarts: list[str] = []
    runs = 0
    third_run = asyncio.Event()

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            third_run.set()
            await asyncio.Event().wait()
        raise RuntimeError("bug")

    tasks = TaskSupervisor(on_restart=restarts.append, first_backoff_s=0.001)
    tasks.supervise("mesh:test-loop", loop)
    await asyncio.wait_for(third_run.wait(), 5)
    assert restarts == ["mesh:test-loop", "mesh:test-loop"]
    await tasks.close()
    assert len(tasks) == 0


async def test_a_periodic_check_goes_on_after_a_mesh_error() -> None:
    calls = 0
    kick = asyncio.Event()
    second = asyncio.Event()

    async def check() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            second.set()
        raise KvUnavailable("etcd down")

    task = asyncio.get_running_loop().create_task(periodic(3600, check, what="check", kick=kick))
    kick.set()
    await asyncio.sleep(0)
    for _ in range(100):
        if calls >= 1:
            break
        await asyncio.sleep(0)
    kick.set()
    await asyncio.wait_for(second.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("rounds", range(20))
async def test_cancel_as_the_kick_fires_is_never_swallowed(rounds: int) -> None:
    """The kick and the cancellation land in the same loop iteration; the waiter must still end cancelled."""
    kick = asyncio.Event()
    waiter = asyncio.get_running_loop().create_task(wait_event(kick, 3600))
    await asyncio.sleep(0)  # the waiter is now blocked on the event
    for _ in range(rounds % 3):
        await asyncio.sleep(0)
    kick.set()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_close_cancels_everything_including_what_stopping_tasks_start() -> None:
    tasks = TaskSupervisor()
    started_in_finally: list[asyncio.Task] = []

    async def one_shot() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            started_in_finally.append(tasks.spawn("mesh:cleanup", asyncio.sleep(3600)))

    tasks.spawn("mesh:one-shot", one_shot())
    tasks.every("mesh:periodic", 3600, lambda: asyncio.sleep(0))
    await asyncio.sleep(0)
    await asyncio.wait_for(tasks.close(), 5)
    assert len(tasks) == 0
    assert started_in_finally and all(t.done() for t in started_in_finally)
    late = tasks.spawn("mesh:late", asyncio.sleep(3600))  # after close: never runs
    await asyncio.sleep(0)
    assert late.cancelled()
