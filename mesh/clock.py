"""The clock: the one place the mesh reads time, injected into every component that needs it.

Two kinds of time, never mixed:
- ``now_ms()``: wall-clock epoch milliseconds. Stored in etcd records (last-used, load and failure times) and
  compared across pods, as ModelMesh does.
- ``monotonic()``: seconds for deadlines, intervals and durations inside one process.

``SystemClock`` reads the real clocks. Tests and the simulator inject a clock they advance themselves
(``tests/fakes.py`` ``FakeClock``; ``loadtests/sim``), so time-dependent policy can be tested without sleeps.
Components take ``clock: Clock = SYSTEM_CLOCK`` in their constructor and never call ``time`` directly.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock time, epoch milliseconds."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (deadlines, durations)."""
        ...


class SystemClock:
    """The real clocks."""

    __slots__ = ()

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Clock = SystemClock()


def now_ms() -> int:
    """Wall-clock epoch ms from the system clock, for code with no injected clock (CLI, client, tooling)."""
    return SYSTEM_CLOCK.now_ms()
