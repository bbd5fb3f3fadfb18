"""What the data plane needs from the rest of the pod, as types it owns (ports): the cold path's answer.

The router depends on this protocol, not on the loader, the registry or etcd; ``mesh.cluster.availability``
implements it. Keeping the types here keeps the import graph one-way: cluster → dataplane.ports, never
dataplane → cluster.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from mesh.local.cache import CacheEntry


class RouteKind(enum.Enum):
    LOCAL = "local"  # an ACTIVE copy is (now) on this pod
    FORWARD = "forward"  # send the request to ``peer`` with ``mm-internal: internal``
    ABSENT = "absent"  # not loaded anywhere, and the caller asked not to load it


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    peer: str = ""
    address: str = ""
    internal: str = ""


LOCAL = Route(RouteKind.LOCAL)
ABSENT = Route(RouteKind.ABSENT)


class ColdPath(Protocol):
    """Makes a model available somewhere when no ACTIVE local copy serves a request."""

    async def locate(
        self,
        model_id: str,
        *,
        exclude: set[str],
        internal: str,
        hop: int,
        last_used: int,
        may_load: bool,
    ) -> Route:
        """Where to serve the request now; may wait for a load on this pod (then LOCAL). ``exclude`` holds
        the pods this request failed on (the cold path adds this pod when its own load fails)."""
        ...

    async def forget_local(self, entry: CacheEntry, reason: str) -> None:
        """The runtime no longer has the copy ``entry`` stood for (only that entry goes: a newer load of the
        same model may already be under way)."""
        ...
