"""Eviction policies of the local cache: which ACTIVE entries go first when a load needs room.

Owns the ordering rule only (pure, no I/O, time passed in); ``LocalCache`` owns the bookkeeping. Selected per
cluster by ``MM_EVICTION_POLICY``:

``lru`` (``LRU``)
    Least recently used first, by absolute last-used timestamps (ModelMesh's rule, modelmesh.md §4).
    ``LocalCache(capacity)`` without a policy runs exactly this rule through its original code path.

``cost`` (``CostAware``)
    Keep the bytes that save the most reload time per second. Each entry's value is

        value = rate × load_ms / size_bytes
        rate  = min(hits / (now − since + prior), 1 / (now − last_used))      (per ms; ages ≥ 1 s)
        prior = now − (oldest last use among the candidates)

    and the lowest value goes first. ``load_ms / size`` is what a byte of this model is worth when a request
    finds it (a 2 GB model that loads in 40 s and a 2 MB model that loads in 20 ms are worth 20 and 10 ms
    per MB). ``rate`` estimates how often that happens. Its first term is the use count over the time it was
    counted, plus a prior horizon: the age of the cache's least recently used entry, i.e. how long this
    cache currently keeps a model nobody uses. Without it, a model loaded a minute ago for one request
    would look like a once-a-minute model and outrank one used twice in the last ten minutes; with it, one
    use is judged over the horizon the cache can afford to wait for the next, and the horizon follows the
    cache's pressure by itself (a fixed one was tried in the simulator: 10 min and 1 h each lost on one
    trace of the family). The second term caps it by recency, so a model that was hot and has stopped being
    used loses its value at once instead of polluting the cache the way GreedyDual-Size-Frequency's
    never-decaying counts do until its inflation value catches up: aging is built in, an idle entry's value
    falls as 1/idle time. With equal load times and sizes, one use each and entries older than the horizon,
    the order is LRU's. ``load_ms`` is the entry's measured load (``loaded_at − load_started``: the runtime's
    loadModel, without the wait for a loading slot); ``hits`` is counted by the router's touch (one more
    attribute store per request, ``entry.hits += 1``).

    History: the (hits, since, load_ms) of the last ``ghost_limit`` models evicted from this pod are
    remembered (bounded, oldest forgotten first) and restored if the model comes back; a model last held by
    another pod starts with the registry's knowledge (``seen`` = one use at the record's ``lu``, which every
    eviction pushes), so frequency survives a move between pods. That is the only state outside the
    entries, and it is touched only on the miss path.

Both policies obey the same guard, which is the cost-aware analogue of LRU's rule that a load stamped with an
older last-used (``loadNow`` registration, a copy moved from another pod, a proactive load) never displaces
models used more recently: only entries whose last use is no newer than the incoming load's are candidates,
and the policy orders those. A request-driven load is stamped "now", so every ACTIVE entry is a candidate
for it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol

from mesh.errors import InvalidRequest

if TYPE_CHECKING:
    from mesh.local.cache import CacheEntry

POLICIES = ("lru", "cost")
MIN_AGE_MS = 1_000
MIN_LOAD_MS = 1
DEFAULT_GHOST_LIMIT = 10_000


class EvictionPolicy(Protocol):
    name: str

    def order(self, candidates: list[CacheEntry], now: int) -> list[CacheEntry]:
        """``candidates`` in eviction order (first = evicted first)."""
        ...

    def admitted(self, entry: CacheEntry, now: int, seen: tuple[int, int] | None = None) -> None:
        """A new entry was reserved (restore what is remembered about it; ``seen``: (uses, since) known
        from elsewhere, e.g. the registry's last use of a model that was loaded before on another pod)."""
        ...

    def evicted(self, victims: list[CacheEntry], now: int) -> None:
        """Entries left the cache (remember what is worth remembering)."""
        ...


class LRU:
    """Least recently used first (the default)."""

    name = "lru"

    def order(self, candidates: list[CacheEntry], now: int) -> list[CacheEntry]:
        return sorted(candidates, key=lambda e: e.last_used)

    def admitted(self, entry: CacheEntry, now: int, seen: tuple[int, int] | None = None) -> None:
        pass

    def evicted(self, victims: list[CacheEntry], now: int) -> None:
        pass


class CostAware:
    """Lowest reload time saved per byte per unit of time first (module docstring).

    ``prior_ms``: None (default) for the adaptive prior horizon, or a fixed one in milliseconds."""

    name = "cost"

    def __init__(self, *, ghost_limit: int = DEFAULT_GHOST_LIMIT, prior_ms: int | None = None) -> None:
        self.ghost_limit = max(0, ghost_limit)
        self.prior_ms = None if prior_ms is None else max(0, prior_ms)
        # model id -> (hits, since ms, load ms) of recently evicted models, oldest first
        self._ghosts: OrderedDict[str, tuple[int, int, int]] = OrderedDict()

    @staticmethod
    def load_ms(entry: CacheEntry) -> int:
        if entry.loaded_at and entry.loaded_at >= entry.load_started:
            return max(MIN_LOAD_MS, entry.loaded_at - entry.load_started)
        return max(MIN_LOAD_MS, entry.load_ms)

    def prior_for(self, candidates: list[CacheEntry], now: int) -> int:
        """The prior horizon of the frequency estimate: fixed, or (default) the age of the least recently
        used candidate, i.e. how long this cache currently keeps a model nobody uses."""
        if self.prior_ms is not None:
            return self.prior_ms
        oldest = min((e.last_used for e in candidates), default=now)
        return max(MIN_AGE_MS, now - oldest)

    def value(self, entry: CacheEntry, now: int, prior_ms: int = 0) -> float:
        """Reload milliseconds saved per byte per millisecond of keeping ``entry`` (higher = keep)."""
        since = entry.since or entry.load_started
        frequency = max(1, entry.hits) / max(MIN_AGE_MS, now - since + prior_ms)
        recency = 1.0 / max(MIN_AGE_MS, now - entry.last_used)
        return min(frequency, recency) * self.load_ms(entry) / max(1, entry.size)

    def order(self, candidates: list[CacheEntry], now: int) -> list[CacheEntry]:
        prior = self.prior_for(candidates, now)
        keyed = []
        for e in candidates:  # ``value`` inlined: this runs over every candidate on every eviction
            since = e.since or e.load_started
            frequency = max(1, e.hits) / max(MIN_AGE_MS, now - since + prior)
            recency = 1.0 / max(MIN_AGE_MS, now - e.last_used)
            if e.loaded_at and e.loaded_at >= e.load_started:
                load_ms = max(MIN_LOAD_MS, e.loaded_at - e.load_started)
            else:
                load_ms = max(MIN_LOAD_MS, e.load_ms)
            value = (frequency if frequency < recency else recency) * load_ms / max(1, e.size)
            keyed.append((value, e.last_used, e.model_id, e))
        keyed.sort()
        return [k[3] for k in keyed]

    def admitted(self, entry: CacheEntry, now: int, seen: tuple[int, int] | None = None) -> None:
        ghost = self._ghosts.pop(entry.model_id, None)
        if ghost is not None:
            entry.hits, entry.since, entry.load_ms = ghost
        elif seen is not None and 0 < seen[1] <= now:
            entry.hits, entry.since = max(0, seen[0]), seen[1]
        else:
            entry.since = now

    def evicted(self, victims: list[CacheEntry], now: int) -> None:
        if not self.ghost_limit:
            return
        for v in victims:
            self._ghosts.pop(v.model_id, None)
            self._ghosts[v.model_id] = (v.hits, v.since or v.load_started, self.load_ms(v))
        while len(self._ghosts) > self.ghost_limit:
            self._ghosts.popitem(last=False)

    def ghosts(self) -> int:
        return len(self._ghosts)


def make_policy(name: str, *, ghost_limit: int = DEFAULT_GHOST_LIMIT) -> EvictionPolicy | None:
    """The policy for ``MM_EVICTION_POLICY``: None for ``lru`` (``LocalCache``'s original LRU path)."""
    key = (name or "lru").strip().lower()
    if key == "lru":
        return None
    if key == "cost":
        return CostAware(ghost_limit=ghost_limit)
    raise InvalidRequest(f"unknown eviction policy {name!r} (one of {', '.join(POLICIES)})")
