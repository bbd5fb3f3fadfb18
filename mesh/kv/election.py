"""``Election``: leader election on one etcd key (``Keys.leader``), owned by this module alone.

The leader is the candidate whose id sits at ``key``. A candidate campaigns with a create-if-absent txn that
binds the key to its ``Session`` lease, so the key (and leadership) vanishes when the leader stops, revokes
or loses its lease. A supervised task (``mesh:election:<name>``) reads the key, watches it from that read's
revision, and campaigns again whenever it is deleted; it also campaigns after the session re-grants its
lease. ``is_leader`` is True only while this candidate's id is at the key *under its current lease* and the
watch is connected: while etcd is unreachable nobody here may act as leader (another pod may take over once
our lease expires), so the state drops to "no leader known" and ``on_change`` callbacks hear ``None``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Callable

from mesh.errors import KvUnavailable, MeshError
from mesh.kv.client import KvClient, KvEntry
from mesh.kv.session import Session
from mesh.tasks import TaskSupervisor, start_loop

log = logging.getLogger(__name__)


class Election:
    def __init__(
        self,
        kv: KvClient,
        key: str,
        candidate_id: str,
        session: Session,
        *,
        name: str = "leader",
        rng: random.Random | None = None,
    ) -> None:
        self._kv = kv
        self.key = key
        self.candidate_id = candidate_id
        self._session = session
        self.name = name
        self._rng = rng or random.Random()
        self._callbacks: list[Callable[[str | None], object]] = []
        self._task: asyncio.Task[None] | None = None
        self._cb_tasks: set[asyncio.Task[object]] = set()
        self._leader: str | None = None
        self._reported: tuple[str | None, bool] = (None, False)
        self._leader_lease = 0
        self._leader_rev = 0

    # --- state --------------------------------------------------------------------------------

    @property
    def leader_id(self) -> str | None:
        """The current leader's candidate id, or None while unknown: no leader, etcd unreachable, or our own
        lease possibly ended (then the key we last saw may name a leader that is no longer one)."""
        return self._leader if self._session.healthy else None

    @property
    def is_leader(self) -> bool:
        return (
            self._leader == self.candidate_id
            and self._leader_lease == self._session.lease_id
            and self._session.healthy
        )

    def on_change(self, callback: Callable[[str | None], object]) -> None:
        """``callback(leader_id)`` whenever the known leader changes. Called on the loop; if it returns an
        awaitable, that runs as its own task. Check ``is_leader`` inside it."""
        self._callbacks.append(callback)

    def _set(self, leader: str | None, lease: int = 0, revision: int = 0) -> None:
        self._leader, self._leader_lease, self._leader_rev = leader, lease, revision
        self._report()

    def _report(self) -> None:
        """Tell ``on_change`` callbacks when (leader, is_leader) differs from what they last heard. Also run
        when the session's health changes: winning while the session was still recovering is leadership
        only once it is healthy, and the callbacks must hear it then (issue 12, bug 3)."""
        now = (self.leader_id, self.is_leader)
        if now == self._reported:
            return
        self._reported = now
        leader = self.leader_id
        log.info("%s: leader is now %s (%s)", self.name, leader, "us" if self.is_leader else "not us")
        for cb in list(self._callbacks):
            try:
                result = cb(leader)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._cb_tasks.add(task)
                    task.add_done_callback(self._cb_tasks.discard)
            except Exception:
                log.exception("%s: on_change callback failed", self.name)

    def _set_from(self, entry: KvEntry | None) -> None:
        if entry is None:
            self._set(None)
        else:
            self._set(entry.value.decode(errors="replace"), entry.lease, entry.mod_revision)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, tasks: TaskSupervisor | None = None) -> None:
        """Campaign once (so ``is_leader`` is known when this returns, if etcd answers), then keep watching."""
        if self._task is not None:
            return
        self._session.add_lease_listener(self._on_new_lease)
        self._session.add_health_listener(lambda healthy: self._report())
        try:
            await self._campaign()
        except MeshError as exc:
            log.info("%s: first campaign failed: %s", self.name, exc)
        self._task = start_loop(tasks, f"mesh:election:{self.name}", self._run)

    async def resign(self) -> None:
        """Stop campaigning and give up leadership (delete the key if it is still ours)."""
        task, self._task = self._task, None
        self._session.remove_lease_listener(self._on_new_lease)
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._leader == self.candidate_id and self._leader_rev:
            try:
                await self._kv.cas_delete(self.key, self._leader_rev)
            except MeshError as exc:  # our lease will end it
                log.info("%s: could not delete the leader key: %s", self.name, exc)
        self._set(None)

    stop = resign

    # --- campaigning --------------------------------------------------------------------------

    async def _campaign(self) -> None:
        """Create the key under our lease if absent; either way, learn who leads."""
        lease = self._session.lease_id
        if not lease:
            return
        _won, entry = await self._kv.cas_put(self.key, self.candidate_id.encode(), 0, lease=lease)
        self._set_from(entry)

    async def _on_new_lease(self, lease_id: int) -> None:
        try:
            await self._campaign()
        except MeshError as exc:  # the watch loop will campaign when the old key goes away
            log.info("%s: campaign after new lease failed: %s", self.name, exc)

    async def _run(self) -> None:
        delay = 0.05
        while True:
            try:
                # Read, then watch from the read's revision: no change to the key can fall in between.
                entry, revision = await self._kv.get_with_revision(self.key)
                if entry is None:
                    await self._try_campaign()
                else:
                    self._set_from(entry)
                async for batch in self._kv.watch_prefix(self.key, revision + 1):
                    delay = 0.05
                    for ev in batch:
                        if ev.key != self.key:  # a prefix watch also matches longer keys
                            continue
                        if ev.kind == "delete":
                            self._set(None)
                            await self._try_campaign()
                        else:
                            self._set(ev.value.decode(errors="replace"), ev.lease, ev.mod_revision)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._set(None)
                if not isinstance(exc, KvUnavailable):
                    log.warning("%s: election loop error: %s", self.name, exc)
            await asyncio.sleep(self._rng.uniform(delay / 2, delay))
            delay = min(2.0, delay * 2)

    async def _try_campaign(self) -> None:
        try:
            await self._campaign()
        except KvUnavailable:
            raise
        except MeshError as exc:  # e.g. our lease is gone: the session re-grants and we campaign then
            log.info("%s: campaign failed: %s", self.name, exc)
