"""Waiting for a condition instead of sleeping: tests state what they wait for, and fail saying so.

- ``wait_for(predicate)``: blocking, for tests that drive subprocess pods from threads.
- ``await wait_until(predicate)``: for async tests; ``predicate`` may be a plain function or a coroutine
  function. Polls every ``interval`` seconds on the event loop, so the code under test keeps running.

The timeouts are generous (hang guards on a loaded 2-core machine), never a statement about speed: a test
waits as long as its condition takes and not a moment longer.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

DEFAULT_TIMEOUT_S = 30.0


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.2,
    what: str = "condition",
):
    """Call ``predicate`` until it returns something truthy (returned), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


async def wait_until(
    predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.02,
    what: str = "condition",
):
    """Async ``wait_for``: await ``predicate`` (sync or async) until truthy, yielding to the loop between."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = None
    while True:
        last = predicate()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)
