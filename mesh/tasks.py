"""Background work of a pod: every task is started through one ``TaskSupervisor``, so none is lost or leaked.

Three shapes:
- ``supervise(name, factory)``: a long-running loop (a watch, the publisher, a periodic check). If it
  crashes it is logged with its traceback, counted (``on_restart``, the pod's metrics), and restarted after a
  backoff (0.5 s doubling to 30 s); cancellation stops it for good.
- ``every(name, interval_s, check, kick=)``: a supervised periodic check, run every ``interval_s`` or as soon
  as ``kick`` is set. A failing check that is a ``MeshError`` (etcd briefly unreachable, say) is logged and the
  loop goes on; anything else is a bug, and the supervisor restarts the loop.
- ``spawn(name, coro)``: a one-shot task (a load, an unload, a reload elsewhere). Tracked until done; a
  failure is logged; cancelled on ``close``.

Tasks are named ``mesh:<what>`` so tests can check that none outlives its owner. Waiting for a kick uses
``asyncio.timeout`` rather than ``asyncio.wait_for``: on Python 3.11, ``wait_for`` can swallow a
cancellation that arrives just as the awaited event fires, and a pod then never finished stopping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from mesh.errors import MeshError

log = logging.getLogger(__name__)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass (True if set). Never swallows cancellation."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False


async def periodic(
    interval_s: float, check: Callable[[], Awaitable[object]], *, what: str, kick: asyncio.Event | None = None
) -> None:
    """Run ``check`` every ``interval_s`` seconds, and as soon as ``kick`` is set when one is given."""
    while True:
        if kick is None:
            await asyncio.sleep(interval_s)
        else:
            await wait_event(kick, interval_s)
            kick.clear()
        try:
            await check()
        except MeshError as exc:
            log.warning("%s failed: %s", what, exc.message)


class TaskSupervisor:
    def __init__(
        self,
        *,
        on_restart: Callable[[str], None] = lambda name: None,
        first_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._on_restart = on_restart
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    def supervise(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """Run ``factory()`` until cancelled, restarting it with backoff whenever it ends or fails."""
        return self._track(self._keep_running(name, factory), name)

    def every(
        self,
        name: str,
        interval_s: float,
        check: Callable[[], Awaitable[object]],
        *,
        kick: asyncio.Event | None = None,
    ) -> asyncio.Task[None]:
        return self.supervise(name, lambda: periodic(interval_s, check, what=name, kick=kick))

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a one-shot ``coro`` in the background; its failure is logged, not lost."""
        task = self._track(coro, name)
        task.add_done_callback(_log_failure)
        return task

    def _track(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        if self._closed:  # the owner has stopped: nothing new runs (cancelled before its first step)
            task.cancel()
            return task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _keep_running(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        delay = self._first_backoff_s
        while True:
            try:
                await factory()
                log.warning("task %s ended by itself; restarting in %.1fs", name, delay)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task %s crashed; restarting in %.1fs", name, delay)
            self._on_restart(name)
            await asyncio.sleep(delay)
            delay = min(self._max_backoff_s, delay * 2)

    async def close(self) -> None:
        """Cancel every task and wait for them (including tasks they start while stopping)."""
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._closed = True


def start_loop(
    tasks: TaskSupervisor | None, name: str, factory: Callable[[], Coroutine[Any, Any, None]]
) -> asyncio.Task[None]:
    """Start a self-healing loop (a watch, a keepalive): under ``tasks`` when the owner has a supervisor, else
    as a plain task (a standalone table or session in a test). The loop's owner cancels it to stop it."""
    if tasks is not None:
        return tasks.supervise(name, factory)
    return asyncio.get_running_loop().create_task(factory(), name=name)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None:
        return
    if isinstance(exc, MeshError):
        log.warning("task %s failed: %s", task.get_name(), exc.message)
    else:
        log.error("task %s failed", task.get_name(), exc_info=exc)
