"""The Reaper does not spin when its top-ups end at once (found by tests/chaos/test_chaos_runtime.py).

While a pod's runtime restarts, adding a copy there fails at once (or, asked of a peer, "succeeds" at once
without a copy). With more models below ``minCopies`` than ``MAX_PARALLEL_RELOADS``, every finished top-up
kicked a new sweep that started the same top-ups again: the leader ran ~8,000 top-ups a second for the
seconds of a runtime restart (one WARNING line each) and its requests waited out their deadlines. A model
whose top-up or reload was just tried now waits for a later sweep (``RETRY_AFTER_S``), and a failed one
brings that sweep forward to ``RETRY_AFTER_S`` later instead of the periodic sweep (max(5 s, lease TTL)).
"""

from __future__ import annotations

import asyncio
import collections

from mesh.clock import SYSTEM_CLOCK
from mesh.cluster import janitor
from mesh.cluster.janitor import MAX_PARALLEL_RELOADS, Reaper
from mesh.errors import RuntimeUnavailable
from mesh.kv.records import ModelRecord
from mesh.tasks import TaskSupervisor


class FrozenClock:
    def now_ms(self) -> int:
        return 1_000_000

    def monotonic(self) -> float:
        return 100.0


class View:
    def __init__(self, models: dict[str, ModelRecord]) -> None:
        self.models = models

    def alive(self) -> set[str]:
        return {"a", "b"}


class Views:
    def __init__(self, view: View) -> None:
        self.current = view


class InstantAvailability:
    """add_copy ends at once, the way it does against a pod whose runtime is restarting."""

    default_size = 1000

    def __init__(self, *, fail: bool) -> None:
        self.fail = fail
        self.calls: collections.Counter[str] = collections.Counter()

    async def add_copy(self, model_id: str, **_) -> str | None:
        self.calls[model_id] += 1
        if self.fail:
            raise RuntimeUnavailable("the model runtime of this pod is restarting")
        return "b"  # "added", but the view never shows the copy


async def _run_reaper(availability, models: int, *, clock=None, until=None) -> None:
    records = {
        f"m{i}": ModelRecord(type="sklearn", path="p", instances={"a": 1}, loaded={"a": 2}, min_copies=2)
        for i in range(models)
    }
    tasks = TaskSupervisor()
    reaper = Reaper(
        registry=None,  # no dead pods and no failures here: the sweep never writes
        views=Views(View(records)),
        failure_expiry_ms=60_000,
        interval_s=3600,
        availability=availability,
        tasks=tasks,
        is_leader=lambda: True,
        clock=clock or FrozenClock(),
    )
    tasks.every("mesh:reaper", reaper.interval_s, reaper.sweep_if_leader, kick=reaper.kick)
    reaper.kick.set()
    if until is None:
        for _ in range(3000):  # a bounded number of event-loop turns, no wall clock
            await asyncio.sleep(0)
    else:
        await asyncio.wait_for(until.wait(), 10)
    await tasks.close()


async def test_failing_top_ups_are_not_restarted_in_a_loop() -> None:
    availability = InstantAvailability(fail=True)
    await _run_reaper(availability, models=MAX_PARALLEL_RELOADS + 2)
    assert dict(availability.calls) == {f"m{i}": 1 for i in range(MAX_PARALLEL_RELOADS + 2)}


async def test_top_ups_that_change_nothing_are_not_restarted_in_a_loop() -> None:
    availability = InstantAvailability(fail=False)
    await _run_reaper(availability, models=MAX_PARALLEL_RELOADS + 2)
    assert dict(availability.calls) == {f"m{i}": 1 for i in range(MAX_PARALLEL_RELOADS + 2)}


class FailsOnce(InstantAvailability):
    """The first top-up of each model fails (its target was restarting); the next one works."""

    def __init__(self, models: int) -> None:
        super().__init__(fail=True)
        self.models = models
        self.all_retried = asyncio.Event()

    async def add_copy(self, model_id: str, **_) -> str | None:
        self.calls[model_id] += 1
        if len([m for m, n in self.calls.items() if n >= 2]) == self.models:
            self.all_retried.set()
        if self.calls[model_id] == 1:
            raise RuntimeUnavailable("the model runtime of this pod is restarting")
        return "b"


async def test_a_failed_top_up_is_retried_soon_without_the_periodic_sweep(monkeypatch) -> None:
    monkeypatch.setattr(janitor, "RETRY_AFTER_S", 0.05)  # the periodic sweep is an hour away
    availability = FailsOnce(models=MAX_PARALLEL_RELOADS + 2)
    await _run_reaper(
        availability, MAX_PARALLEL_RELOADS + 2, clock=SYSTEM_CLOCK, until=availability.all_retried
    )
    assert all(n >= 2 for n in availability.calls.values()), availability.calls
