"""mesh.local.eviction: the cost-aware order, its aging, ghosts, and LocalCache's policy path."""

from __future__ import annotations

import itertools
import random

import pytest

from mesh.errors import CapacityExhausted, InvalidRequest
from mesh.local.cache import FRESH_MS, EntryState, LocalCache
from mesh.local.eviction import LRU, MIN_AGE_MS, CostAware, make_policy

NOW = 1_700_000_000_000
MB = 1 << 20


def _loaded(
    cache: LocalCache,
    model_id: str,
    *,
    size: int,
    load_ms: int,
    last_used: int,
    hits: int = 1,
    loaded_at: int | None = None,
) -> None:
    """An ACTIVE entry as the loader leaves it: reserved, loaded in ``load_ms``, touched ``hits`` times."""
    loaded_at = loaded_at if loaded_at is not None else min(last_used, NOW - 60_000)
    entry, victims = cache.reserve(model_id, size, last_used, loaded_at - load_ms)
    assert victims == []
    entry.loaded_at = loaded_at
    entry.state = EntryState.ACTIVE
    entry.hits = hits


def test_order_is_value_order_with_the_adaptive_prior() -> None:
    rng = random.Random(3)
    policy = CostAware()
    cache = LocalCache(10**12, policy=policy)
    for i in range(40):
        lu = NOW - rng.randrange(0, 7_200_000)
        _loaded(
            cache,
            f"m{i}",
            size=rng.randrange(1, 100) * MB,
            load_ms=rng.randrange(1, 60_000),
            last_used=lu,
            hits=rng.randrange(1, 50),
            loaded_at=lu - rng.randrange(0, 600_000),
        )
    entries = cache.entries()
    prior = policy.prior_for(entries, NOW)
    assert prior == NOW - min(e.last_used for e in entries)
    want = sorted(entries, key=lambda e: (policy.value(e, NOW, prior), e.last_used))
    assert policy.order(entries, NOW) == want
    assert CostAware(prior_ms=5).prior_for(entries, NOW) == 5


def test_make_policy() -> None:
    assert make_policy("lru") is None and make_policy("") is None and make_policy(" LRU ") is None
    assert isinstance(make_policy("cost"), CostAware)
    with pytest.raises(InvalidRequest, match="unknown eviction policy 'lfu'"):
        make_policy("lfu")


def test_expensive_model_outlives_cheap_one_used_as_recently() -> None:
    """The issue's example: a 2 GB model that loads in 40 s vs a 2 MB one that loads in 20 ms."""
    cache = LocalCache(2 * 1024 * MB + 4 * MB, policy=CostAware())
    _loaded(cache, "big-slow", size=2 * 1024 * MB, load_ms=40_000, last_used=NOW - 30_000)
    _loaded(cache, "small-fast", size=2 * MB, load_ms=20, last_used=NOW - 10_000)
    _, victims = cache.reserve("new", 3 * MB, NOW, NOW)
    assert [v.model_id for v in victims] == ["small-fast"]
    # LRU would have thrown away the 40 s model
    lru = LocalCache(2 * 1024 * MB + 4 * MB)
    _loaded(lru, "big-slow", size=2 * 1024 * MB, load_ms=40_000, last_used=NOW - 30_000)
    _loaded(lru, "small-fast", size=2 * MB, load_ms=20, last_used=NOW - 10_000)
    _, victims = lru.reserve("new", 3 * MB, NOW, NOW)
    assert [v.model_id for v in victims] == ["big-slow"]


def test_order_by_load_time_per_byte() -> None:
    policy = CostAware()
    cache = LocalCache(100 * MB, policy=policy)
    # same size, same use: the one that reloads fastest goes first
    for i, load_ms in enumerate([5_000, 100, 20_000, 1_000]):
        _loaded(cache, f"m{i}", size=10 * MB, load_ms=load_ms, last_used=NOW - 5_000)
    order = [e.model_id for e in policy.order(cache.entries(), NOW)]
    assert order == ["m1", "m3", "m0", "m2"]
    # same load time, same use: the biggest goes first (it frees the most for the least reload time)
    cache2 = LocalCache(100 * MB, policy=policy)
    for i, size in enumerate([5, 20, 10]):
        _loaded(cache2, f"s{i}", size=size * MB, load_ms=1_000, last_used=NOW - 5_000)
    assert [e.model_id for e in policy.order(cache2.entries(), NOW)] == ["s1", "s2", "s0"]


def test_frequency_keeps_a_model_used_often() -> None:
    policy = CostAware()
    cache = LocalCache(100 * MB, policy=policy)
    _loaded(cache, "once", size=10 * MB, load_ms=1_000, last_used=NOW - 2_000, hits=1)
    _loaded(cache, "often", size=10 * MB, load_ms=1_000, last_used=NOW - 2_000, hits=50)
    assert [e.model_id for e in policy.order(cache.entries(), NOW)] == ["once", "often"]


def test_aging_a_hot_model_that_stopped_loses_to_a_cheaper_live_one() -> None:
    """Frequency is capped by recency: hits from long ago do not protect an idle model forever."""
    policy = CostAware()
    cache = LocalCache(100 * MB, policy=policy)
    # 10,000 hits over an hour, then silence for an hour; load 4 s
    _loaded(
        cache,
        "was-hot",
        size=10 * MB,
        load_ms=4_000,
        last_used=NOW - 3_600_000,
        hits=10_000,
        loaded_at=NOW - 7_200_000,
    )
    # used a second ago, 20 times in the last minute, loads in 1 s (4x cheaper)
    _loaded(
        cache, "live", size=10 * MB, load_ms=1_000, last_used=NOW - 1_000, hits=20, loaded_at=NOW - 60_000
    )
    assert [e.model_id for e in policy.order(cache.entries(), NOW)] == ["was-hot", "live"]
    # an hour earlier (when it was still hot) the order was the other way round
    then = NOW - 3_600_000 + 1_000
    assert policy.value(cache.get("was-hot"), then) > policy.value(cache.get("live"), NOW)


def test_value_falls_as_an_entry_ages() -> None:
    policy = CostAware()
    cache = LocalCache(100 * MB, policy=policy)
    _loaded(cache, "a", size=MB, load_ms=500, last_used=NOW - 10_000, hits=3, loaded_at=NOW - 20_000)
    values = [policy.value(cache.get("a"), NOW + dt) for dt in (0, 10**5, 10**6, 10**7, 10**8)]
    assert all(a > b for a, b in itertools.pairwise(values)) and values[-1] < values[0] / 10


def test_equal_cost_and_one_hit_each_is_lru_order() -> None:
    rng = random.Random(7)
    policy = CostAware()
    cache = LocalCache(1_000 * MB, policy=policy)
    for i in range(30):
        lu = NOW - rng.randrange(MIN_AGE_MS, 10_000_000)
        _loaded(cache, f"m{i}", size=MB, load_ms=100, last_used=lu, loaded_at=lu)
    assert policy.order(cache.entries(), NOW) == LRU().order(cache.entries(), NOW)


def test_guard_past_stamped_load_never_evicts_more_recently_used() -> None:
    cache = LocalCache(100, policy=CostAware())
    # a: cheap and recently used; b: expensive and older
    _loaded(cache, "a", size=50, load_ms=10, last_used=NOW - 500)
    _loaded(cache, "b", size=50, load_ms=10_000, last_used=NOW - 5_000)
    # stamped before both: nothing is a candidate
    with pytest.raises(CapacityExhausted, match="more recently"):
        cache.reserve("old", 10, last_used=NOW - 50_000, now=NOW)
    # stamped between: only b is a candidate, although the policy would rather evict a
    _, victims = cache.reserve("mid", 10, last_used=NOW - 1_000, now=NOW)
    assert [v.model_id for v in victims] == ["b"]
    assert {e.model_id for e in cache.entries()} == {"a", "mid"}


def test_loading_entries_are_never_victims_and_all_loading_is_exhausted() -> None:
    cache = LocalCache(100, policy=CostAware())
    cache.reserve("l1", 60, NOW - 100_000, NOW)
    cache.reserve("l2", 40, NOW - 100_000, NOW)
    with pytest.raises(CapacityExhausted, match="the rest is loading"):
        cache.reserve("c", 10, NOW, NOW)
    assert {e.model_id for e in cache.entries()} == {"l1", "l2"}


def test_no_evict_reserve_fills_only_spare_room() -> None:
    for policy in (None, CostAware()):
        cache = LocalCache(100, policy=policy)
        _loaded(cache, "a", size=60, load_ms=10, last_used=NOW - 1_000_000)
        entry, victims = cache.reserve("fits", 40, NOW - 2_000_000, NOW, evict=False)
        assert victims == [] and entry.size == 40
        with pytest.raises(CapacityExhausted, match="may not evict"):
            cache.reserve("more", 1, NOW, NOW, evict=False)
        assert {e.model_id for e in cache.entries()} == {"a", "fits"}


def test_seen_history_from_the_registry_seeds_a_new_entry() -> None:
    """A model evicted elsewhere and used 10 min ago is worth more than a first-time model, all else equal."""
    policy = CostAware()
    cache = LocalCache(100, policy=policy)
    seen, _ = cache.reserve("seen-before", 10, NOW - 60_000, NOW - 60_000, seen=(1, NOW - 660_000))
    fresh, _ = cache.reserve("first-time", 10, NOW - 60_000, NOW - 60_000)
    assert (seen.hits, seen.since) == (1, NOW - 660_000) and (fresh.hits, fresh.since) == (0, NOW - 60_000)
    for e in (seen, fresh):
        e.state, e.loaded_at, e.hits = EntryState.ACTIVE, NOW - 59_000, e.hits + 1
    # this cache keeps idle models for an hour (its least recently used entry): that is the horizon over
    # which one use is judged
    _loaded(cache, "idle", size=10, load_ms=1_000, last_used=NOW - 3_600_000)
    order = [e.model_id for e in policy.order(cache.entries(), NOW)]
    assert order.index("first-time") < order.index("seen-before")
    # nonsense history (in the future, or none) is ignored
    later, _ = cache.reserve("bad", 10, NOW, NOW, seen=(5, NOW + 1))
    assert (later.hits, later.since) == (0, NOW)
    # LRU ignores it
    lru = LocalCache(100)
    entry, _ = lru.reserve("x", 10, NOW, NOW, seen=(7, NOW - 1))
    assert entry.hits == 0


def test_ghosts_restore_history_on_reload_and_are_bounded() -> None:
    policy = CostAware(ghost_limit=2)
    cache = LocalCache(10, policy=policy)
    _loaded(cache, "hot", size=10, load_ms=3_000, last_used=NOW - 1_000, hits=40, loaded_at=NOW - 100_000)
    _, victims = cache.reserve("x", 10, NOW, NOW)
    assert [v.model_id for v in victims] == ["hot"] and policy.ghosts() == 1
    cache.get("x").state = EntryState.ACTIVE
    cache.get("x").loaded_at = NOW + 10
    entry, _ = cache.reserve("hot", 10, NOW + 20, NOW + 20)
    assert (entry.hits, entry.since, entry.load_ms) == (40, NOW - 103_000, 3_000)
    assert policy.ghosts() == 1  # "x" evicted, "hot" readmitted
    # a fresh model starts counting now
    cache.get("hot").state = EntryState.ACTIVE
    entry, _ = cache.reserve("fresh", 10, NOW + 30, NOW + 30)
    assert (entry.hits, entry.since) == (0, NOW + 30)
    for i in range(5):  # bounded: only the last ghost_limit are kept
        cache.entries()[0].state = EntryState.ACTIVE
        cache.reserve(f"g{i}", 10, NOW + 40 + i, NOW + 40 + i)
    assert policy.ghosts() == 2


def test_resize_with_policy_evicts_in_policy_order_not_itself() -> None:
    cache = LocalCache(100, policy=CostAware())
    _loaded(cache, "cheap", size=30, load_ms=10, last_used=NOW - 100)
    _loaded(cache, "dear", size=30, load_ms=10_000, last_used=NOW - 90_000)
    entry, _ = cache.reserve("new", 10, NOW, NOW)
    victims = cache.resize("new", 60, now=NOW)
    assert [v.model_id for v in victims] == ["cheap"] and entry.size == 60
    assert cache.used == 90


@pytest.mark.parametrize("seed", range(10))
def test_random_sequences_keep_accounting_and_the_guard(seed: int) -> None:
    rng = random.Random(seed)
    cache = LocalCache(1_000, policy=CostAware(ghost_limit=20))
    t = NOW
    for _ in range(400):
        t += rng.randrange(1, 2_000)
        ids = [e.model_id for e in cache.entries()]
        op = rng.random()
        if op < 0.5:
            mid = f"m{rng.randrange(80)}"
            if mid in cache:
                continue
            lu = t - rng.randrange(0, 30_000)
            before = set(ids)
            try:
                _, victims = cache.reserve(mid, rng.randrange(1, 300), lu, t)
            except CapacityExhausted:
                assert {e.model_id for e in cache.entries()} == before
                continue
            assert all(v.active and v.last_used <= lu for v in victims)
            assert cache.used <= cache.capacity
        elif op < 0.85 and ids:
            e = cache.get(rng.choice(ids))
            if not e.active:
                e.state, e.loaded_at = EntryState.ACTIVE, t
            e.last_used, e.hits = t, e.hits + 1
        elif ids:
            cache.remove(rng.choice(ids))
        assert cache.used == sum(e.size for e in cache.entries())


def test_a_copy_loaded_moments_ago_goes_after_every_other_candidate() -> None:
    """The cost order would pick the just-loaded cheap model (one use, a few ms of load); its waiting requests
    may not have reached the runtime yet, so it goes last (FRESH_MS), and the older expensive one goes."""
    cache = LocalCache(100 * MB, policy=CostAware())
    _loaded(cache, "old-slow", size=50 * MB, load_ms=30_000, last_used=NOW - 10_000, hits=20)
    _loaded(cache, "just-loaded", size=50 * MB, load_ms=5, last_used=NOW - 100, loaded_at=NOW - 100)
    assert next(e.model_id for e in cache.policy.order(cache.entries(), NOW)) == "just-loaded"
    _, victims = cache.reserve("new", 10 * MB, NOW, NOW)
    assert [v.model_id for v in victims] == ["old-slow"]
    # past FRESH_MS the policy's own order stands again
    later = NOW + FRESH_MS
    cache2 = LocalCache(100 * MB, policy=CostAware())
    _loaded(cache2, "old-slow", size=50 * MB, load_ms=30_000, last_used=NOW - 10_000, hits=20)
    _loaded(cache2, "just-loaded", size=50 * MB, load_ms=5, last_used=NOW - 100, loaded_at=NOW - 100)
    _, victims = cache2.reserve("new", 10 * MB, later, later)
    assert [v.model_id for v in victims] == ["just-loaded"]
