"""Periodic background work: one loop shape for every "check every N seconds (or sooner when kicked)" task.

A failing check (any MeshError, e.g. etcd briefly unreachable) is logged and the loop goes on; anything
else is a bug and ends the task loudly. Tasks are named ``mesh:<what>`` by their creators.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from mesh.errors import MeshError

log = logging.getLogger(__name__)


async def every(
    interval_s: float, check: Callable[[], Awaitable[object]], *, what: str, kick: asyncio.Event | None = None
) -> None:
    """Run ``check`` every ``interval_s`` seconds, and as soon as ``kick`` is set when one is given."""
    while True:
        if kick is None:
            await asyncio.sleep(interval_s)
        else:
            try:
                await asyncio.wait_for(kick.wait(), timeout=interval_s)
            except TimeoutError:
                pass
            kick.clear()
        try:
            await check()
        except MeshError as exc:
            log.warning("%s failed: %s", what, exc)


def log_failure(task: asyncio.Task) -> None:
    """Done-callback for fire-and-forget tasks: say why one failed instead of losing the exception."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("task %s failed: %s", task.get_name(), task.exception())
