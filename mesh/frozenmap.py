"""FrozenMap: an immutable ``str``-keyed mapping whose changed copies share most of their memory.

Why: the data plane reads the cluster as an immutable snapshot that a watch event replaces whole (DESIGN §3,
style rule 4). With 100,000 registered models a full dict copy per event would cost milliseconds; here the
keys are spread over ``SHARDS`` dicts by hash, and ``evolve`` copies only the shards it changes, so a
one-model change copies about 1/64 of the map. Reads are one hash, one list index and one dict lookup.

Shard placement uses Python's ``hash``, so it is stable only within one process; a FrozenMap is never
serialised.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

V = TypeVar("V")
SHARDS = 64
_MASK = SHARDS - 1


class FrozenMap(Mapping[str, V], Generic[V]):
    __slots__ = ("_len", "_shards")

    def __init__(self, items: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        shards: list[dict[str, V]] = [{} for _ in range(SHARDS)]
        pairs = items.items() if isinstance(items, Mapping) else items
        for key, value in pairs:
            shards[hash(key) & _MASK][key] = value
        self._shards = shards
        self._len = sum(len(s) for s in shards)

    @classmethod
    def _of(cls, shards: list[dict[str, V]], length: int) -> FrozenMap[V]:
        out = cls.__new__(cls)
        out._shards = shards
        out._len = length
        return out

    def get(self, key: str, default: V | None = None) -> V | None:  # type: ignore[override]
        return self._shards[hash(key) & _MASK].get(key, default)

    def __getitem__(self, key: str) -> V:
        return self._shards[hash(key) & _MASK][key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._shards[hash(key) & _MASK]

    def __iter__(self) -> Iterator[str]:
        for shard in self._shards:
            yield from shard

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"FrozenMap({len(self)} items)"

    def evolve(self, changes: Mapping[str, V | None]) -> FrozenMap[V]:
        """A new map with ``changes`` applied (a value of None deletes the key); ``self`` is unchanged."""
        if not changes:
            return self
        shards = list(self._shards)
        copied: set[int] = set()
        length = self._len
        for key, value in changes.items():
            index = hash(key) & _MASK
            if index not in copied:
                shards[index] = dict(shards[index])
                copied.add(index)
            shard = shards[index]
            if value is None:
                if shard.pop(key, _MISSING) is not _MISSING:
                    length -= 1
            else:
                if key not in shard:
                    length += 1
                shard[key] = value
        return FrozenMap._of(shards, length)


_MISSING = object()
EMPTY: FrozenMap = FrozenMap()
