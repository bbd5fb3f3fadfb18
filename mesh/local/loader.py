"""Loader: the load/unload pipeline of this pod's cache (the cold path; the only data-plane path to etcd).

A miss becomes one load per model on this pod: the first caller reserves a cache entry (evicting LRU
victims), creates the entry's ``ready`` future and starts a background task; every concurrent caller awaits
that same future. The task claims the model in the registry (CAS; with ``exclusive`` it loses to a live claim
by another pod, so concurrent misses across pods end in one load), calls the runtime's loadModel under the
loading-concurrency semaphore and timeout, records the measured size (evicting more if the prediction was
low), and marks the copy loaded. A failure moves this pod from the record's instances to its failures with
the runtime's message, and the runtime is always told to unload (the SPI contract).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from mesh.cluster.registry import LoadedElsewhere, Registry
from mesh.cluster.view import ClusterView
from mesh.errors import (
    MeshError,
    ModelLoadFailed,
    ModelNotFound,
    RuntimeUnavailable,
    ShuttingDown,
)
from mesh.local.cache import CacheEntry, EntryState, LocalCache
from mesh.local.runtime_client import RuntimeClient, RuntimeInfo
from mesh.metrics import MeshMetrics

log = logging.getLogger(__name__)

INFLIGHT_DRAIN_S = 10.0


def now_ms() -> int:
    return int(time.time() * 1000)


class Loader:
    def __init__(
        self,
        *,
        instance_id: str,
        cache: LocalCache,
        runtime: RuntimeClient,
        registry: Registry,
        view: ClusterView,
        info: RuntimeInfo,
        metrics: MeshMetrics,
        load_timeout_ms: int = 0,
        default_model_size: int = 0,
        on_change: Callable[[], None] = lambda: None,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.instance_id = instance_id
        self.cache = cache
        self.runtime = runtime
        self.registry = registry
        self.view = view
        self.metrics = metrics
        self.on_change = on_change
        self._now = clock_ms
        self.set_runtime_info(info, load_timeout_ms, default_model_size)
        self.accepting = True
        # False from a runtime crash until the restarted runtime answered READY (its runtimeStatus purges
        # everything, so a load started before that would be wiped and wrongly recorded as a failure)
        self.runtime_ready = True
        self._tasks: set[asyncio.Task] = set()

    def set_runtime_info(
        self, info: RuntimeInfo, load_timeout_ms: int = 0, default_model_size: int = 0
    ) -> None:
        self.info = info
        self.load_timeout_s = (load_timeout_ms or info.load_timeout_ms) / 1000
        self.default_size = default_model_size or info.default_model_size
        self._sem = asyncio.Semaphore(info.max_loading_concurrency)

    # ------------------------------------------------------------------ loading
    async def ensure_local(
        self, model_id: str, *, last_used: int, exclusive: bool, unreachable: frozenset[str] = frozenset()
    ) -> CacheEntry:
        """Return an ACTIVE local entry for ``model_id``, loading it here if needed (shared by all callers).

        Raises LoadedElsewhere when ``exclusive`` and another live pod claimed the model first; claims by
        pods in ``unreachable`` (a request just failed to reach them) do not count.
        """
        entry = self.cache.get(model_id)
        if entry is None:
            entry = await self._start_load(
                model_id, last_used=last_used, exclusive=exclusive, unreachable=unreachable
            )
        if entry.state is not EntryState.ACTIVE:
            started = time.perf_counter()
            assert entry.ready is not None
            await asyncio.shield(entry.ready)
            self.metrics.cache_miss_seconds.observe(time.perf_counter() - started)
        return entry

    async def _start_load(
        self, model_id: str, *, last_used: int, exclusive: bool, unreachable: frozenset[str]
    ) -> CacheEntry:
        if not self.accepting:
            raise ShuttingDown("this pod is shutting down and takes no new loads")
        if not self.runtime_ready:
            raise RuntimeUnavailable("the model runtime of this pod is restarting")
        rec = self.registry.get(model_id) or await self.registry.get_strong(model_id)
        if rec is None:
            raise ModelNotFound(model_id)
        size = await self._predict_size(model_id, rec.type, rec.path, rec.key)
        existing = self.cache.get(model_id)  # someone may have started while we awaited
        if existing is not None:
            return existing
        entry, victims = self.cache.reserve(model_id, size, last_used or self._now(), self._now())
        entry.ready = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            self._load(entry, rec.type, rec.path, rec.key, victims, exclusive, unreachable),
            name=f"mesh:load:{model_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.on_change()
        return entry

    async def _predict_size(self, model_id: str, model_type: str, path: str, key: str) -> int:
        try:
            predicted = await self.runtime.predict_size(model_id, model_type, path, key)
        except MeshError:
            raise
        except Exception:  # a sizing hiccup must not fail the load
            predicted = None
        return predicted or self.default_size

    async def _load(
        self,
        entry: CacheEntry,
        model_type: str,
        path: str,
        key: str,
        victims: list[CacheEntry],
        exclusive: bool,
        unreachable: frozenset[str] = frozenset(),
    ) -> None:
        model_id = entry.model_id
        fut = entry.ready
        assert fut is not None
        claimed = False
        try:
            if victims:
                await self.evict(victims, reason="space")
            await self.registry.claim(
                model_id, self.instance_id, exclusive=exclusive, alive=self.view.alive() - unreachable
            )
            claimed = True
            async with self._sem:
                started = time.perf_counter()
                entry.load_started = self._now()
                size = await self.runtime.load(model_id, model_type, path, key, timeout_s=self.load_timeout_s)
                self.metrics.loadmodel_seconds.observe(time.perf_counter() - started)
            if not size:
                size = await self.runtime.model_size(model_id) or entry.size
            if self.cache.get(model_id) is not entry:
                # unregistered or purged while loading: give the memory back
                await self._unload_runtime(model_id)
                raise ModelNotFound(model_id)
            more = self.cache.resize(model_id, size)
            entry.state = EntryState.ACTIVE
            entry.loaded_at = self._now()
            self.metrics.loaded_model_size_bytes.observe(size)
            if more:
                self._spawn(self.evict(more, reason="space"), f"mesh:evict-after:{model_id}")
            log.info("loaded %s (%d bytes) on %s", model_id, size, self.instance_id)
            # Waiting requests go now; recording LOADED in etcd follows (peers already route here by the claim).
            fut.set_result(None)
            try:
                await self.registry.mark_loaded(model_id, self.instance_id, entry.last_used, size=size)
            except ModelNotFound:
                await self.unload(model_id, reason="unregistered while loading", update_registry=False)
            except MeshError as exc:
                log.warning(
                    "loaded %s but could not record it in etcd (%s); the janitor will retry", model_id, exc
                )
        except BaseException as exc:
            self.cache.remove(model_id) if self.cache.get(model_id) is entry else None
            await self._after_failure(model_id, exc, claimed)
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, Exception) else RuntimeUnavailable("load cancelled"))
                fut.exception()  # mark retrieved: waiters may be gone
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.on_change()

    async def _after_failure(self, model_id: str, exc: BaseException, claimed: bool) -> None:
        if isinstance(exc, LoadedElsewhere):
            return
        if isinstance(exc, ModelLoadFailed):
            self.metrics.loadmodel_failure.inc()
            log.warning("load of %s failed on %s: %s", model_id, self.instance_id, exc.cause)
            try:
                await self.registry.record_failure(model_id, self.instance_id, exc.cause)
            except MeshError as kv_exc:
                log.warning("could not record load failure of %s: %s", model_id, kv_exc)
            self._spawn(self._unload_runtime(model_id), f"mesh:unload-failed:{model_id}")
        elif claimed:
            try:
                await self.registry.remove_copy(model_id, self.instance_id)
            except MeshError:
                pass

    # ------------------------------------------------------------------ unloading
    async def evict(self, victims: list[CacheEntry], *, reason: str) -> None:
        """Unload evicted entries in the runtime (after in-flight requests drain) and drop their claims."""
        now = self._now()
        for v in victims:
            self.metrics.evictions.inc()
            self.metrics.age_at_eviction_seconds.observe(max(0, now - v.last_used) / 1000)
            log.info("evicting %s from %s (%s)", v.model_id, self.instance_id, reason)
        await asyncio.gather(*(self._unload_entry(v) for v in victims))
        self.on_change()

    async def unload(self, model_id: str, *, reason: str, update_registry: bool = True) -> bool:
        entry = self.cache.remove(model_id)
        if entry is None:
            return False
        log.info("unloading %s from %s (%s)", model_id, self.instance_id, reason)
        await self._unload_entry(entry, update_registry=update_registry)
        self.on_change()
        return True

    async def _unload_entry(self, entry: CacheEntry, *, update_registry: bool = True) -> None:
        deadline = time.monotonic() + INFLIGHT_DRAIN_S
        while entry.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self._unload_runtime(entry.model_id)
        if update_registry:
            # The memory is free once the runtime unloaded; the registry update need not delay a waiting load.
            self._spawn(self._remove_claim(entry), f"mesh:release:{entry.model_id}")

    async def _remove_claim(self, entry: CacheEntry) -> None:
        try:
            await self.registry.remove_copy(entry.model_id, self.instance_id, entry.last_used)
        except MeshError as exc:
            log.warning(
                "could not remove %s copy from registry: %s (janitor will retry)", entry.model_id, exc
            )

    async def _unload_runtime(self, model_id: str) -> None:
        started = time.perf_counter()
        try:
            await self.runtime.unload(model_id)
            self.metrics.unloadmodel_seconds.observe(time.perf_counter() - started)
        except MeshError as exc:
            self.metrics.unloadmodel_failure.inc()
            log.warning("unload of %s failed: %s", model_id, exc)

    def drop_local(self, model_id: str, reason: str) -> None:
        """The registry no longer wants this copy here (e.g. unregistered): unload without registry writes."""
        if model_id in self.cache:
            self._spawn(self.unload(model_id, reason=reason, update_registry=False), f"mesh:drop:{model_id}")

    def runtime_lost(self) -> list[CacheEntry]:
        """The runtime died: every local copy is gone. Fail waiting loads; return the lost entries."""
        self.runtime_ready = False
        lost = self.cache.clear()
        for e in lost:
            if e.ready is not None and not e.ready.done():
                e.ready.set_exception(RuntimeUnavailable("model runtime restarted during load"))
                e.ready.exception()
        self.on_change()
        return lost

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
