"""``Session``: this process's etcd lease, kept alive, and replaced when it is lost.

Owns the lease that the pod's instance record and election key are bound to. A supervised task
(``mesh:session:<name>``) refreshes it every ``ttl/3``. etcd does not raise when refreshing an expired lease
(it answers TTL 0, deps.md §2), so a refresh returning ``<= 0`` means the lease is gone (expired while we
could not reach etcd, or revoked): a new lease is granted and every lease listener (``on_lease`` first) is
awaited with the new id so owners re-put their keys. A listener that fails is retried on the next tick.
While etcd is unreachable the task keeps retrying with backoff and ``healthy`` is False.

``healthy`` also turns False on its own the moment the lease may have ended: each successful refresh arms a
timer for (time the refresh was sent + the TTL etcd answered), which is no later than etcd's own expiry. A
refresh that hangs (a cut link) would otherwise leave ``healthy`` True until the call times out, which can
be after the lease ended and another pod took over its leadership and models (issue 12: two leaders).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.errors import KvUnavailable
from mesh.kv.client import KvClient, retry
from mesh.tasks import TaskSupervisor, start_loop

log = logging.getLogger(__name__)

LeaseListener = Callable[[int], Awaitable[None]]


class Session:
    def __init__(
        self,
        kv: KvClient,
        ttl: int = 10,
        on_lease: LeaseListener | None = None,
        *,
        name: str = "session",
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if ttl < 1:
            raise ValueError("lease ttl must be at least 1 second")
        self._kv = kv
        self.ttl = ttl
        self.name = name
        self._listeners: list[LeaseListener] = [on_lease] if on_lease else []
        self._health_listeners: list[Callable[[bool], None]] = []
        self._rng = rng or random.Random()
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._notify_pending = False
        self.lease_id = 0
        self.healthy = False
        self._expiry: asyncio.TimerHandle | None = None

    def add_lease_listener(self, fn: LeaseListener) -> None:
        """``await fn(new_lease_id)`` after each re-grant (not for the first lease, which ``start`` returns)."""
        self._listeners.append(fn)

    def add_health_listener(self, fn: Callable[[bool], None]) -> None:
        """``fn(healthy)`` each time the session goes from healthy to unhealthy or back (on the loop)."""
        self._health_listeners.append(fn)

    def _set_healthy(self, healthy: bool) -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        for fn in list(self._health_listeners):
            try:
                fn(healthy)
            except Exception:
                log.exception("%s: health listener failed", self.name)

    def _arm_expiry(self, sent: float, remaining_s: float) -> None:
        """The lease holds at least until ``sent + remaining_s`` (etcd counts from when it got the request)."""
        self._disarm_expiry()
        delay = max(0.0, sent + remaining_s - self._clock.monotonic())
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _disarm_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expired(self) -> None:
        self._expiry = None
        if self.healthy:
            log.warning(
                "%s: lease %x not refreshed within its TTL; it may have ended", self.name, self.lease_id
            )
        self._set_healthy(False)

    def remove_lease_listener(self, fn: LeaseListener) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    async def start(self, *, deadline: float | None = None, tasks: TaskSupervisor | None = None) -> int:
        """Grant the first lease (retrying for up to ``deadline`` s, default ``ttl``) and start keepalive."""
        if self._task is None:
            sent = self._clock.monotonic()
            self.lease_id = await retry(lambda: self._kv.lease_grant(self.ttl), deadline=deadline or self.ttl)
            self.healthy = True
            self._arm_expiry(sent, self.ttl)
            self._task = start_loop(tasks, f"mesh:session:{self.name}", self._run)
        return self.lease_id

    async def stop(self, revoke: bool = True) -> None:
        """Stop refreshing; with ``revoke`` also revoke the lease now (deleting its keys) if etcd answers."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._disarm_expiry()
        if revoke and self.lease_id:
            try:
                await self._kv.lease_revoke(self.lease_id)
            except Exception as exc:  # it will expire on its own
                log.info("%s: could not revoke lease %x: %s", self.name, self.lease_id, exc)
        self.healthy = False

    async def _run(self) -> None:
        interval = self.ttl / 3
        delay = 0.1
        while True:
            await asyncio.sleep(interval if self.healthy else self._rng.uniform(delay / 2, delay))
            try:
                await self._tick()
                delay = 0.1
                self._set_healthy(True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.healthy:
                    level = logging.INFO if isinstance(exc, KvUnavailable) else logging.WARNING
                    log.log(level, "%s: lease keepalive failed: %s", self.name, exc)
                self._set_healthy(False)
                delay = min(interval, delay * 2)

    async def _tick(self) -> None:
        sent = self._clock.monotonic()
        remaining = await self._kv.lease_keepalive_once(self.lease_id)
        if remaining <= 0:
            self._disarm_expiry()
            self._set_healthy(False)  # the lease is gone: nothing bound to it holds any more
            sent = self._clock.monotonic()
            old, self.lease_id = self.lease_id, await self._kv.lease_grant(self.ttl)
            remaining = self.ttl
            log.warning("%s: lease %x was lost; granted %x", self.name, old, self.lease_id)
            self._notify_pending = True
        self._arm_expiry(sent, remaining)
        if self._notify_pending:
            lease = self.lease_id
            for fn in list(self._listeners):
                await fn(lease)
            self._notify_pending = False
