"""mesh.local.cache.LocalCache: LRU by absolute last-used timestamps, weighted by bytes (modelmesh.md §4)."""

from __future__ import annotations

import random

import pytest

from mesh.errors import CapacityExhausted, ModelTooLarge
from mesh.local.cache import EntryState, LocalCache

NOW = 1_700_000_000_000


def _active(cache: LocalCache, model_id: str, size: int, last_used: int) -> None:
    entry, victims = cache.reserve(model_id, size, last_used, NOW)
    assert victims == []
    entry.state = EntryState.ACTIVE


def _check_invariants(cache: LocalCache) -> None:
    entries = cache.entries()
    assert cache.used == sum(e.size for e in entries)
    assert cache.free == max(0, cache.capacity - cache.used)
    assert len(cache) == len(entries)
    assert cache.loading_count() == sum(1 for e in entries if not e.active)
    assert cache.oldest_last_used() == min((e.last_used for e in entries), default=None)
    for e in entries:
        assert e.model_id in cache and cache.get(e.model_id) is e


def test_empty() -> None:
    cache = LocalCache(100)
    assert cache.used == 0 and cache.free == 100 and len(cache) == 0
    assert cache.oldest_last_used() is None
    assert cache.get("x") is None and "x" not in cache


def test_reserve_with_room_creates_loading_entry() -> None:
    cache = LocalCache(100)
    entry, victims = cache.reserve("a", 40, last_used=NOW - 5, now=NOW)
    assert victims == []
    assert entry.state is EntryState.LOADING and not entry.active
    assert entry.last_used == NOW - 5 and entry.load_started == NOW and entry.size == 40
    assert cache.used == 40 and cache.free == 60
    _check_invariants(cache)


def test_reserve_duplicate_rejected() -> None:
    cache = LocalCache(100)
    cache.reserve("a", 10, NOW, NOW)
    with pytest.raises(ValueError):
        cache.reserve("a", 10, NOW, NOW)


def test_evicts_by_timestamp_not_insertion_order() -> None:
    cache = LocalCache(100)
    # inserted in order a, b, c but last-used order is b (oldest), c, a (newest)
    _active(cache, "a", 30, NOW - 1_000)
    _active(cache, "b", 30, NOW - 3_000)
    _active(cache, "c", 30, NOW - 2_000)
    _, victims = cache.reserve("d", 50, NOW, NOW)  # 10 free, needs 40 more: two victims
    assert [v.model_id for v in victims] == ["b", "c"]
    assert {e.model_id for e in cache.entries()} == {"a", "d"}
    assert cache.used == 80
    _check_invariants(cache)


def test_touch_changes_eviction_order() -> None:
    cache = LocalCache(60)
    _active(cache, "a", 30, NOW - 2_000)
    _active(cache, "b", 30, NOW - 1_000)
    cache.get("a").last_used = NOW - 10  # a used again
    _, victims = cache.reserve("c", 30, NOW, NOW)
    assert [v.model_id for v in victims] == ["b"]


def test_evicts_only_as_much_as_needed() -> None:
    cache = LocalCache(100)
    for i in range(10):
        _active(cache, f"m{i}", 10, NOW - 10_000 + i)
    _, victims = cache.reserve("new", 25, NOW, NOW)
    assert [v.model_id for v in victims] == ["m0", "m1", "m2"]
    assert cache.used == 95
    _check_invariants(cache)


def test_loading_entries_never_victims() -> None:
    cache = LocalCache(100)
    cache.reserve("loading-old", 50, NOW - 100_000, NOW)  # stays LOADING, oldest of all
    _active(cache, "active", 50, NOW - 1_000)
    _, victims = cache.reserve("new", 50, NOW, NOW)
    assert [v.model_id for v in victims] == ["active"]
    assert "loading-old" in cache
    _check_invariants(cache)


def test_all_space_loading_is_capacity_exhausted() -> None:
    cache = LocalCache(100)
    cache.reserve("a", 60, NOW - 10_000, NOW)
    cache.reserve("b", 40, NOW - 10_000, NOW)
    with pytest.raises(CapacityExhausted) as ei:
        cache.reserve("c", 10, NOW, NOW)
    assert ei.value.retryable
    assert {e.model_id for e in cache.entries()} == {"a", "b"}
    _check_invariants(cache)


def test_too_large() -> None:
    cache = LocalCache(100)
    with pytest.raises(ModelTooLarge) as ei:
        cache.reserve("huge", 101, NOW, NOW)
    assert ei.value.grpc_code.name == "RESOURCE_EXHAUSTED"
    assert "101" in ei.value.message and "100" in ei.value.message
    assert len(cache) == 0
    # exactly the capacity fits (evicting everything evictable)
    _active(cache, "a", 30, NOW - 5)
    _, victims = cache.reserve("full", 100, NOW, NOW)
    assert [v.model_id for v in victims] == ["a"]


def test_more_recent_victims_are_not_displaced() -> None:
    """A load with a past lastUsed (e.g. loadNow registration) never evicts models used more recently."""
    cache = LocalCache(100)
    _active(cache, "a", 50, NOW - 1_000)
    _active(cache, "b", 50, NOW - 500)
    with pytest.raises(CapacityExhausted, match="more recently"):
        cache.reserve("old", 10, last_used=NOW - 5_000, now=NOW)
    assert {e.model_id for e in cache.entries()} == {"a", "b"}
    assert cache.used == 100
    # partially: the first victim is older, the second would be newer -> still refused, nothing removed
    with pytest.raises(CapacityExhausted):
        cache.reserve("mid", 60, last_used=NOW - 700, now=NOW)
    assert {e.model_id for e in cache.entries()} == {"a", "b"}
    # old enough only needs the older one
    _, victims = cache.reserve("mid", 40, last_used=NOW - 700, now=NOW)
    assert [v.model_id for v in victims] == ["a"]
    _check_invariants(cache)


def test_equal_last_used_may_be_evicted() -> None:
    cache = LocalCache(10)
    _active(cache, "a", 10, NOW)
    _, victims = cache.reserve("b", 10, NOW, NOW)
    assert [v.model_id for v in victims] == ["a"]


def test_reserve_with_free_room_evicts_nothing_even_if_older() -> None:
    cache = LocalCache(100)
    _active(cache, "a", 50, NOW)
    _, victims = cache.reserve("old", 50, NOW - 1_000_000, NOW)
    assert victims == []


def test_resize_grows_and_evicts_lru_others() -> None:
    cache = LocalCache(100)
    _active(cache, "old", 30, NOW - 3_000)
    _active(cache, "mid", 30, NOW - 2_000)
    entry, _ = cache.reserve("new", 10, NOW, NOW)
    cache.reserve("other-loading", 10, NOW - 10_000, NOW)
    assert cache.used == 80
    victims = cache.resize("new", 55)  # measured: much bigger than predicted
    assert entry.size == 55
    assert [v.model_id for v in victims] == ["old"]
    assert cache.used == 80 + 45 - 30
    assert "other-loading" in cache  # loading entries are not victims of a resize either
    _check_invariants(cache)


def test_resize_never_evicts_itself_even_if_oldest() -> None:
    cache = LocalCache(100)
    _active(cache, "self", 50, NOW - 100_000)
    _active(cache, "b", 50, NOW)
    victims = cache.resize("self", 60)
    assert [v.model_id for v in victims] == ["b"]
    assert "self" in cache
    _check_invariants(cache)


def test_resize_smaller_frees_space() -> None:
    cache = LocalCache(100)
    _active(cache, "a", 80, NOW)
    assert cache.resize("a", 20) == []
    assert cache.used == 20 and cache.free == 80
    _check_invariants(cache)


def test_resize_when_nothing_evictable_leaves_cache_over_capacity() -> None:
    cache = LocalCache(100)
    cache.reserve("a", 60, NOW, NOW)
    cache.reserve("b", 40, NOW, NOW)
    assert cache.resize("a", 90) == []
    assert cache.used == 130 and cache.free == 0
    _check_invariants(cache)


def test_remove_and_clear() -> None:
    cache = LocalCache(100)
    _active(cache, "a", 30, NOW)
    _active(cache, "b", 30, NOW - 1)
    assert cache.remove("a").model_id == "a"
    assert cache.remove("a") is None
    assert cache.used == 30
    assert [e.model_id for e in cache.clear()] == ["b"]
    assert cache.used == 0 and len(cache) == 0
    _check_invariants(cache)


def test_oldest_last_used_includes_loading() -> None:
    cache = LocalCache(100)
    _active(cache, "a", 10, NOW - 50)
    cache.reserve("b", 10, NOW - 500, NOW)
    _active(cache, "c", 10, NOW - 5)
    assert cache.oldest_last_used() == NOW - 500
    cache.remove("b")
    assert cache.oldest_last_used() == NOW - 50


def test_set_capacity() -> None:
    cache = LocalCache(100)
    _active(cache, "a", 80, NOW)
    cache.set_capacity(50)
    assert cache.free == 0
    with pytest.raises(ModelTooLarge):
        cache.reserve("b", 60, NOW, NOW)


@pytest.mark.parametrize("seed", range(20))
def test_random_operation_sequences_keep_accounting(seed: int) -> None:
    rng = random.Random(seed)
    capacity = rng.choice([100, 1_000, 4_096])
    cache = LocalCache(capacity)
    t = NOW
    for _ in range(300):
        t += rng.randrange(1, 1_000)
        op = rng.random()
        ids = [e.model_id for e in cache.entries()]
        if op < 0.45:
            mid = f"m{rng.randrange(60)}"
            if mid in cache:
                continue
            size = rng.randrange(1, capacity // 3)
            lu = t - rng.randrange(0, 50_000)
            before = {e.model_id: e for e in cache.entries()}
            used_before = cache.used
            try:
                entry, victims = cache.reserve(mid, size, lu, t)
            except CapacityExhausted:
                assert {e.model_id for e in cache.entries()} == set(before)  # no partial eviction
                assert cache.used == used_before
                continue
            for v in victims:
                assert v.active and v.last_used <= lu
                assert v.model_id not in cache
            # evicted only when needed, least recently used first
            kept_active = [e for e in cache.entries() if e.active and e is not entry]
            if victims:
                assert max(v.last_used for v in victims) <= min(
                    (e.last_used for e in kept_active), default=float("inf")
                )
                assert used_before - sum(v.size for v in victims[:-1]) + size > capacity
            assert cache.used <= capacity
        elif op < 0.7 and ids:
            e = cache.get(rng.choice(ids))
            e.state = EntryState.ACTIVE
            e.last_used = t
        elif op < 0.8 and ids:
            mid = rng.choice(ids)
            new_size = rng.randrange(1, capacity // 2)
            victims = cache.resize(mid, new_size)
            assert mid in cache and all(v.active and v.model_id != mid for v in victims)
            assert cache.get(mid).size == new_size
        elif op < 0.95 and ids:
            cache.remove(rng.choice(ids))
        elif ids:
            cache.clear()
        _check_invariants(cache)
