"""InstancePublisher: owns ``instances/<this instanceId>``; writes only this pod's record, bound to its lease.

The record is rebuilt from the local cache and request stats and written in batches, never per request:
checked every ``interval_s`` and soon after a load/eviction (``poke``), at most once per ``min_period_s``,
and skipped unless something significant changed (after ModelMesh's thresholds, modelmesh.md §2: shutdown
flag, capacity ≥2 %, used ≥20 %, count ≥10 % or any change while small, loads in progress
to/from 0 or by ≥3, rpm ≥100 or >10 %, LRU moved ≥20 s and ≥1/16 of its age) or nothing was written for
4 intervals. After a new lease the record is re-put at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.errors import MeshError
from mesh.kv.records import InstanceRecord
from mesh.kv.table import Table
from mesh.tasks import wait_event

log = logging.getLogger(__name__)


def significant(old: InstanceRecord | None, new: InstanceRecord, now_ms: int) -> bool:
    if old is None:
        return True
    if old.shutting_down != new.shutting_down or old.address != new.address or old.labels != new.labels:
        return True
    if abs(new.capacity - old.capacity) > 0.02 * max(1, old.capacity):
        return True
    if new.count != old.count and (abs(new.count - old.count) >= max(1, old.count // 10) or old.count < 20):
        return True
    if new.used != old.used and abs(new.used - old.used) >= 0.2 * max(1, old.used):
        return True
    if (old.loads_in_progress == 0) != (new.loads_in_progress == 0) or abs(
        new.loads_in_progress - old.loads_in_progress
    ) >= 3:
        return True
    if abs(new.rpm - old.rpm) >= 100 or (old.rpm and abs(new.rpm - old.rpm) > 0.1 * old.rpm):
        return True
    if old.lru_time != new.lru_time:
        delta = abs(new.lru_time - old.lru_time)
        age = max(1, now_ms - min(old.lru_time or now_ms, new.lru_time or now_ms))
        if delta >= 20_000 and delta >= age / 16:
            return True
    return False


class InstancePublisher:
    def __init__(
        self,
        *,
        instance_id: str,
        table: Table[InstanceRecord],
        build: Callable[[], InstanceRecord],
        lease_id: Callable[[], int | None],
        interval_s: float = 5.0,
        min_period_s: float = 1.0,
        on_write: Callable[[], None] = lambda: None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.instance_id = instance_id
        self.table = table
        self.build = build
        self.lease_id = lease_id
        self.interval_s = interval_s
        self.min_period_s = min_period_s
        self.on_write = on_write
        self.clock = clock
        self._poke = asyncio.Event()
        self._last: InstanceRecord | None = None
        self._last_write = 0.0

    def poke(self) -> None:
        self._poke.set()

    async def publish(self, *, force: bool = False) -> None:
        lease = self.lease_id()
        if lease is None:
            return
        new = self.build()
        now = self.clock.monotonic()
        stale = now - self._last_write > 4 * self.interval_s
        current = self.table.get(self.instance_id)
        if (
            not force
            and current is not None
            and not stale
            and not significant(self._last, new, self.clock.now_ms())
        ):
            return
        await self.table.update(self.instance_id, lambda cur: new, lease=lease)
        self._last = new
        self._last_write = now
        self.on_write()

    async def run(self) -> None:
        """The publishing loop (supervised by the pod): on each poke or interval, at most once a
        ``min_period_s``."""
        while True:
            await wait_event(self._poke, self.interval_s)
            self._poke.clear()
            wait = self.min_period_s - (self.clock.monotonic() - self._last_write)
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self.publish()
            except MeshError as exc:
                log.warning("could not publish instance record: %s", exc.message)
