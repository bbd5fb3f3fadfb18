"""Drain: what graceful shutdown (SIGTERM) does with this pod's models before the pod leaves.

Models used in the last hour (``MIGRATION_CUTOFF_MS``) that no other live, non-leaving pod holds are loaded
elsewhere first, most recently used first, each as an *additional* copy (this pod's own claim stands until
it leaves, so an exclusive first load would lose to it), within the shutdown deadline. Then every local copy
is unloaded and released from the registry, least recently used first, and the releases are awaited (within
the deadline) so that peers stop routing here before the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.cluster.availability import Availability
from mesh.cluster.view import ViewHolder
from mesh.errors import MeshError
from mesh.local.cache import LocalCache
from mesh.local.loader import Loader

log = logging.getLogger(__name__)

MIGRATION_CUTOFF_MS = 3600 * 1000


class Drain:
    def __init__(
        self,
        *,
        instance_id: str,
        views: ViewHolder,
        cache: LocalCache,
        loader: Loader,
        availability: Availability,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.instance_id = instance_id
        self.views = views
        self.cache = cache
        self.loader = loader
        self.availability = availability
        self.clock = clock

    async def run(self, deadline: float) -> None:
        """Migrate hot models, then release every local copy. ``deadline`` is on ``clock.monotonic()``."""
        await self.migrate(deadline)
        for entry in sorted(self.cache.entries(), key=lambda e: e.last_used):
            with contextlib.suppress(MeshError):
                await self.loader.unload(entry.model_id, reason="shutdown")
        await self.loader.releases_settled(deadline - self.clock.monotonic())

    async def migrate(self, deadline: float) -> None:
        """Load recently used local models on other pods before leaving."""
        me = self.instance_id
        view = self.views.current
        if not any(i != me and not r.shutting_down for i, r in view.instances.items()):
            return
        cutoff = self.clock.now_ms() - MIGRATION_CUTOFF_MS
        recent = sorted(
            (e for e in self.cache.entries() if e.last_used >= cutoff), key=lambda e: -e.last_used
        )
        for entry in recent:
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                log.warning("shutdown deadline reached before every model was migrated")
                return
            view = self.views.current
            rec = view.model(entry.model_id)
            if rec is None:
                continue
            instances = view.instances
            if any(i != me and i in instances and not instances[i].shutting_down for i in rec.loaded):
                continue  # another copy already serves it
            try:
                async with asyncio.timeout(remaining):
                    target = await self.availability.add_copy(
                        entry.model_id, size=entry.size, last_used=entry.last_used, exclude={me}
                    )
            except (MeshError, TimeoutError) as exc:
                log.warning("could not migrate %s: %s", entry.model_id, exc)
                continue
            if target is None:
                log.warning("could not migrate %s: no other pod can take it", entry.model_id)
            else:
                log.info("migrated %s to %s before shutdown", entry.model_id, target)
