"""LocalCache: the models held by this pod, weighted by model bytes; LRU by default, or a cost-aware policy.

Entries are ordered by absolute last-used timestamps (epoch ms), as in ModelMesh's modified CLHM
(modelmesh.md §4), so a load triggered with a past ``lastUsed`` (e.g. ``loadNow`` registration, or a copy
moved from another pod) is placed at its true recency and never displaces models used more recently.

``LocalCache(capacity)`` is that LRU. ``LocalCache(capacity, policy=CostAware())`` lets an eviction policy
(``mesh/local/eviction.py``, ``MM_EVICTION_POLICY``) order the victims instead, under the same rule: only
entries used no more recently than the incoming load are candidates.

Pure bookkeeping, no I/O: ``reserve`` returns the victims to evict and the caller unloads them. A touch on
the hot path is attribute stores only (``last_used``, and ``hits`` for the cost-aware policy). Finding
victims is O(n log n) over entries, which only happens on a miss. Entries that are still loading are never
victims.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mesh.errors import CapacityExhausted, ModelTooLarge
from mesh.local.eviction import EvictionPolicy

if TYPE_CHECKING:
    import asyncio


class EntryState(enum.Enum):
    LOADING = "LOADING"
    ACTIVE = "ACTIVE"


@dataclass(slots=True, eq=False)
class CacheEntry:
    model_id: str
    size: int
    last_used: int
    state: EntryState = EntryState.LOADING
    load_started: int = 0
    loaded_at: int = 0
    ready: asyncio.Future | None = None
    inflight: int = 0
    hits: int = 0
    """Requests served from this entry (the router's touch adds one); the cost-aware policy's frequency."""
    since: int = 0
    """When ``hits`` started counting (epoch ms; kept across an eviction by the cost-aware policy)."""
    load_ms: int = 0
    """A remembered load time, used by the cost-aware policy until this entry's own load is measured."""
    extra: dict = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state is EntryState.ACTIVE


class LocalCache:
    def __init__(self, capacity: int, policy: EvictionPolicy | None = None) -> None:
        self.capacity = capacity
        self.policy = policy
        self._entries: dict[str, CacheEntry] = {}
        self._used = 0

    # -- reads (hot path)
    def get(self, model_id: str) -> CacheEntry | None:
        return self._entries.get(model_id)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._entries

    @property
    def used(self) -> int:
        return self._used

    @property
    def free(self) -> int:
        return max(0, self.capacity - self._used)

    def entries(self) -> list[CacheEntry]:
        return list(self._entries.values())

    def oldest_last_used(self) -> int | None:
        return min((e.last_used for e in self._entries.values()), default=None)

    def loading_count(self) -> int:
        return sum(1 for e in self._entries.values() if e.state is EntryState.LOADING)

    # -- mutations
    def reserve(
        self,
        model_id: str,
        size: int,
        last_used: int,
        now: int,
        *,
        evict: bool = True,
        seen: tuple[int, int] | None = None,
    ) -> tuple[CacheEntry, list[CacheEntry]]:
        """Insert a LOADING entry of ``size`` bytes, evicting ACTIVE entries (least recently used first, or in
        the policy's order).

        Returns (entry, victims). The victims are already removed from the cache. Raises ModelTooLarge if
        ``size`` exceeds the whole capacity, CapacityExhausted if not enough can be evicted (everything else is
        loading, or more recently used than ``last_used``), or if room is needed and ``evict`` is False (a
        proactive load fills spare room only). ``seen`` = (uses, since ms) is history of the model known from
        elsewhere (the registry's last use), for a policy that counts uses; LRU ignores it.
        """
        if model_id in self._entries:
            raise ValueError(f"model {model_id} already in cache")
        if size > self.capacity:
            raise ModelTooLarge(model_id, size, self.capacity)
        if not evict and size > self.free:
            raise CapacityExhausted(
                f"no spare room for {size} bytes ({self.free} free of {self.capacity}) and this load may not evict"
            )
        if self.policy is None:
            victims = self._victims(size, last_used)
        else:
            victims = self._policy_victims(size, last_used, now)
        for v in victims:
            self._remove(v)
        entry = CacheEntry(model_id=model_id, size=size, last_used=last_used, load_started=now)
        if self.policy is not None:
            self.policy.evicted(victims, now)
            self.policy.admitted(entry, now, seen)
        self._entries[model_id] = entry
        self._used += size
        return entry, victims

    def grow(
        self, model_id: str, size: int, last_used: int, now: int = 0, *, evict: bool = True
    ) -> list[CacheEntry]:
        """Set a LOADING entry's predicted size, choosing victims by the same rules as ``reserve`` (an entry
        reserved before its size was known: the prediction runs alongside the claim). Returns the victims,
        already removed; raises ModelTooLarge / CapacityExhausted as ``reserve`` does (also when room is
        needed and ``evict`` is False)."""
        entry = self._entries[model_id]
        if size > self.capacity:
            raise ModelTooLarge(model_id, size, self.capacity)
        delta = size - entry.size
        if not evict and delta > self.free:
            raise CapacityExhausted(
                f"no spare room for {size} bytes ({self.free} free of {self.capacity}) and this load may not evict"
            )
        victims: list[CacheEntry] = []
        if delta > 0:
            if self.policy is None:
                victims = self._victims(delta, last_used)
            else:
                victims = self._policy_victims(delta, last_used, now or entry.load_started)
        for v in victims:
            self._remove(v)
        if victims and self.policy is not None:
            self.policy.evicted(victims, now or entry.load_started)
        self._used += delta
        entry.size = size
        return victims

    def resize(self, model_id: str, size: int, now: int = 0) -> list[CacheEntry]:
        """Set the measured size of an entry; evicts other entries (LRU, or the policy's order at ``now``) if
        the cache is now over capacity."""
        entry = self._entries[model_id]
        self._used += size - entry.size
        entry.size = size
        over = self._used - self.capacity
        if over <= 0:
            return []
        candidates = self._evictable(exclude=model_id)
        if self.policy is None:
            ordered = sorted(candidates, key=lambda e: e.last_used)
        else:
            now = now or entry.loaded_at or entry.load_started
            ordered = _fresh_last(self.policy.order(candidates, now), now)
        victims = _take(ordered, over)
        for v in victims:
            self._remove(v)
        if self.policy is not None:
            self.policy.evicted(victims, now)
        return victims

    def remove(self, model_id: str) -> CacheEntry | None:
        entry = self._entries.get(model_id)
        if entry is not None:
            self._remove(entry)
        return entry

    def clear(self) -> list[CacheEntry]:
        entries = list(self._entries.values())
        self._entries.clear()
        self._used = 0
        return entries

    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity

    # -- internals
    def _remove(self, entry: CacheEntry) -> None:
        if self._entries.get(entry.model_id) is entry:
            del self._entries[entry.model_id]
            self._used -= entry.size

    def _evictable(self, exclude: str | None = None) -> list[CacheEntry]:
        return [e for e in self._entries.values() if e.state is EntryState.ACTIVE and e.model_id != exclude]

    def _victims(self, size: int, last_used: int) -> list[CacheEntry]:
        need = size - self.free
        if need <= 0:
            return []
        victims: list[CacheEntry] = []
        for e in sorted(self._evictable(), key=lambda e: e.last_used):
            if need <= 0:
                break
            if e.last_used > last_used:
                raise CapacityExhausted(
                    f"cache is full of models used more recently than this one (needs {size} bytes, "
                    f"{self.free} free of {self.capacity})"
                )
            victims.append(e)
            need -= e.size
        if need > 0:
            raise CapacityExhausted(
                f"no room for {size} bytes: {self.free} free of {self.capacity}, the rest is loading"
            )
        return victims

    # -- policy path (``policy`` given): the same guard as the LRU path, victims in the policy's order
    def _policy_victims(self, size: int, last_used: int, now: int) -> list[CacheEntry]:
        need = size - self.free
        if need <= 0:
            return []
        evictable = self._evictable()
        candidates = [e for e in evictable if e.last_used <= last_used]
        victims = _take(_fresh_last(self.policy.order(candidates, now), now), need)  # type: ignore[union-attr]
        if sum(v.size for v in victims) < need:
            if len(candidates) < len(evictable):
                raise CapacityExhausted(
                    f"cache is full of models used more recently than this one (needs {size} bytes, "
                    f"{self.free} free of {self.capacity})"
                )
            raise CapacityExhausted(
                f"no room for {size} bytes: {self.free} free of {self.capacity}, the rest is loading"
            )
        return victims


#: An entry loaded less than this long ago goes after every other candidate: the requests that waited for its
#: load may not have reached the runtime yet, and a policy that judges it by its short history (the cost-aware
#: one: one use over a few ms) would evict it under churn before they do, and they would load it again.
FRESH_MS = 500


def _fresh_last(ordered: list[CacheEntry], now: int) -> list[CacheEntry]:
    """``ordered`` with the entries loaded less than ``FRESH_MS`` ago moved to the end (each part keeps its order)."""
    settled: list[CacheEntry] = []
    fresh: list[CacheEntry] = []
    for e in ordered:
        (fresh if e.loaded_at and now - e.loaded_at < FRESH_MS else settled).append(e)
    return settled + fresh


def _take(ordered: list[CacheEntry], need: int) -> list[CacheEntry]:
    """The first entries of ``ordered`` whose sizes add up to ``need`` (all of them if they do not reach it)."""
    victims: list[CacheEntry] = []
    for e in ordered:
        if need <= 0:
            break
        victims.append(e)
        need -= e.size
    return victims
