"""Loader: the load/unload pipeline of this pod's cache; owns every call that changes what the runtime holds.

A miss becomes one load per model on this pod: the first caller reserves a cache entry (choosing LRU
victims), creates the entry's ``ready`` future and starts a background task; every concurrent caller awaits
that same future, so a cancelled request never cancels the load for the others. The task:

1. claims the model (``hooks.claim``: the registry CAS; with ``exclusive`` it loses to a live claim by another
   pod, so concurrent misses on several pods end in one load) *while* the victims are unloaded from the
   runtime: one etcd round trip before the runtime is asked to load, overlapped with the evictions;
2. calls the runtime's ``loadModel`` under the loading-concurrency semaphore and the load timeout;
3. takes the measured size (asking ``modelSize`` if the load did not report one) and evicts more if the
   prediction was low;
4. marks the entry ACTIVE and wakes the waiting requests;
5. only then records the copy as loaded (``hooks.loaded``): nothing waits on that write.

A failure records it (``hooks.failed``, with the runtime's message) and always tells the runtime to unload
(the SPI contract). Evicted and unloaded copies are released from the registry (``hooks.released``) in the
background, after the runtime freed their memory.

This module never imports the registry or etcd: the cluster layer passes ``LoadHooks``
(``mesh.cluster.local_copies``), so the import graph stays one-way and the loader is testable alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.errors import (
    LoadedElsewhere,
    MeshError,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotHere,
    RuntimeUnavailable,
    ShuttingDown,
)
from mesh.local.cache import CacheEntry, EntryState, LocalCache
from mesh.local.runtime_client import RuntimeClient, RuntimeInfo
from mesh.metrics import MeshMetrics
from mesh.tasks import TaskSupervisor
from mesh.tracing import TRACING

log = logging.getLogger(__name__)
T = TypeVar("T")

INFLIGHT_DRAIN_S = 10.0
INFLIGHT_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What the runtime needs to load a model, and its size when the registry knows it (measured before; used
    when the runtime cannot predict one)."""

    type: str
    path: str = ""
    key: str = ""
    known_size: int = 0
    size_override: int = 0  # the registration's mm-model-size: wins over every prediction
    type_mean: int = 0  # the cluster's mean measured size of this type (mesh.cluster.sizes.TypeSizes)
    seen: tuple[int, int] | None = None  # (uses, since ms) known from the registry, for the eviction policy
    evict: bool = True  # False: a proactive load, which fills spare room only


@dataclass(slots=True)
class LoadTimings:
    """Where one load's time went (ms), logged with it: the miss path's breakdown (docs/benchmarks.md).
    ``claim`` and ``evict`` overlap; ``ready`` is from the first miss to waking the waiting requests."""

    predict: float = 0.0
    claim: float = 0.0
    evict: float = 0.0
    queue: float = 0.0
    runtime: float = 0.0
    size: float = 0.0
    ready: float = 0.0

    def describe(self) -> str:
        return (
            f"ready in {self.ready:.1f} ms: predict {self.predict:.1f}, claim {self.claim:.1f}, evict "
            f"{self.evict:.1f}, queue {self.queue:.1f}, loadModel {self.runtime:.1f}, size {self.size:.1f}"
        )


class LoadHooks(Protocol):
    """The registry writes around a local load, provided by the cluster layer."""

    async def claim(self, model_id: str, *, exclusive: bool, unreachable: frozenset[str]) -> None:
        """Record this pod as loading ``model_id``. Raises LoadedElsewhere (exclusive, lost) or
        ModelNotFound (unregistered)."""
        ...

    async def loaded(self, model_id: str, *, last_used: int, size: int) -> None:
        """Record the copy as loaded. Raises ModelNotFound if the model was unregistered meanwhile."""
        ...

    async def failed(self, model_id: str, cause: str) -> None: ...

    async def released(self, model_id: str, *, last_used: int) -> None:
        """This pod no longer holds (or loads) ``model_id``."""
        ...


class Loader:
    def __init__(
        self,
        *,
        instance_id: str,
        cache: LocalCache,
        runtime: RuntimeClient,
        hooks: LoadHooks,
        info: RuntimeInfo,
        metrics: MeshMetrics,
        tasks: TaskSupervisor,
        load_timeout_ms: int = 0,
        default_model_size: int = 0,
        on_change: Callable[[], None] = lambda: None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.instance_id = instance_id
        self.cache = cache
        self.runtime = runtime
        self.hooks = hooks
        self.metrics = metrics
        self.tasks = tasks
        self._releasing: set[asyncio.Task[None]] = set()  # registry releases in flight (releases_settled)
        self.on_change = on_change
        self.clock = clock
        self._load_timeout_ms = load_timeout_ms
        self._default_model_size = default_model_size
        self.set_runtime_info(info)
        self.accepting = True
        # False from a runtime crash until the restarted runtime answered READY (its runtimeStatus purges
        # everything, so a load started before that would be wiped and wrongly recorded as a failure)
        self.runtime_ready = True

    def set_runtime_info(self, info: RuntimeInfo) -> None:
        self.info = info
        self.load_timeout_s = (self._load_timeout_ms or info.load_timeout_ms) / 1000
        self.default_size = self._default_model_size or info.default_model_size
        self._sem = asyncio.Semaphore(info.max_loading_concurrency)

    # ------------------------------------------------------------------ loading
    async def ensure_local(
        self,
        model_id: str,
        spec: LoadSpec,
        *,
        last_used: int,
        exclusive: bool,
        unreachable: frozenset[str] = frozenset(),
    ) -> CacheEntry:
        """Return an ACTIVE local entry for ``model_id``, loading it here if needed (shared by all callers).

        Raises LoadedElsewhere when ``exclusive`` and another live pod claimed the model first; claims by
        pods in ``unreachable`` (a request just failed to reach them) do not count.
        """
        entry = self.cache.get(model_id)
        if entry is None:
            entry = await self._start_load(model_id, spec, last_used, exclusive, unreachable)
        return await self.wait(entry)

    async def wait(self, entry: CacheEntry) -> CacheEntry:
        """Wait until ``entry``'s load has finished (raises what the load failed with)."""
        if entry.state is not EntryState.ACTIVE:
            started = self.clock.monotonic()
            assert entry.ready is not None
            await asyncio.shield(entry.ready)
            elapsed_ms = (self.clock.monotonic() - started) * 1000.0
            self.metrics.observe_model(self.metrics.cache_miss_ms, elapsed_ms, entry.model_id)
        return entry

    async def _start_load(
        self, model_id: str, spec: LoadSpec, last_used: int, exclusive: bool, unreachable: frozenset[str]
    ) -> CacheEntry:
        if not self.accepting:
            raise ShuttingDown("this pod is shutting down and takes no new loads")
        if not self.runtime_ready:
            raise RuntimeUnavailable("the model runtime of this pod is restarting")
        # Reserved at size 0 at once (no await before: one load per model), sized when the prediction
        # comes back, which runs alongside the claim (_load).
        now = self.clock.now_ms()
        entry, _ = self.cache.reserve(model_id, 0, last_used or now, now, seen=spec.seen)
        entry.ready = asyncio.get_running_loop().create_future()
        load = self._load(entry, spec, exclusive, unreachable, self.clock.monotonic())
        self.tasks.spawn(f"mesh:load:{model_id}", self._traced(load, model_id) if TRACING.enabled else load)
        self.on_change()
        return entry

    async def _predict_size(self, model_id: str, spec: LoadSpec) -> int:
        """The size to reserve (``mesh.cluster.sizes``): the override, else the measured size of an earlier copy
        when it fits this cache (a noisy measurement larger than the whole cache must not lock the model out),
        else the runtime's prediction, else the cluster's mean for the type, else the default."""
        if spec.size_override:
            return spec.size_override
        measured = spec.known_size if spec.known_size <= self.cache.capacity else 0
        if measured:
            # A copy was loaded and measured before: that beats a prediction, and skipping the runtime call
            # takes a round trip off the miss path of every reload (issue 9).
            return measured
        try:
            predicted = await self.runtime.predict_size(model_id, spec.type, spec.path, spec.key)
        except MeshError:
            raise
        except Exception:  # a sizing hiccup must not fail the load
            predicted = None
        return predicted or spec.type_mean or self.default_size

    async def _traced(self, load, model_id: str) -> None:
        """The load inside a ``mesh.load`` span (child of the request that started it: the task inherits its
        context)."""
        with TRACING.span("mesh.load", **{"mesh.model_id": model_id, "mesh.pod": self.instance_id}):
            await load

    async def _load(
        self,
        entry: CacheEntry,
        spec: LoadSpec,
        exclusive: bool,
        unreachable: frozenset[str],
        missed_at: float,
    ) -> None:
        model_id = entry.model_id
        fut = entry.ready
        assert fut is not None
        claimed = False
        clock = self.clock
        timings = LoadTimings()
        claim: asyncio.Task[tuple[None, float]] | None = None
        try:
            # The claim (one etcd round trip) runs while the runtime predicts the size. Victims are unloaded
            # only once the claim is won: a lost claim (another pod loads it) must not cost evictions.
            claim = asyncio.ensure_future(
                self._timed(self.hooks.claim(model_id, exclusive=exclusive, unreachable=unreachable))
            )
            size, timings.predict = await self._timed(self._predict_size(model_id, spec))
            victims = (
                self.cache.grow(model_id, size, entry.last_used, clock.now_ms(), evict=spec.evict)
                if self.cache.get(model_id) is entry
                else []
            )
            _, timings.claim = await claim
            claimed = True
            metrics = self.metrics
            if victims:
                _, timings.evict = await self._timed(self.evict(victims, reason="space"))
            queued = clock.monotonic()
            async with self._sem:
                started = clock.monotonic()
                timings.queue = (started - queued) * 1000
                metrics.observe_model(metrics.loading_queue_delay_ms, timings.queue, model_id)
                entry.load_started = clock.now_ms()
                size = await self.runtime.load(
                    model_id,
                    spec.type,
                    spec.path,
                    spec.key,
                    timeout_s=self.load_timeout_s,
                    metadata=TRACING.outgoing() if TRACING.enabled else (),
                )
                timings.runtime = (clock.monotonic() - started) * 1000
                metrics.observe_model(metrics.loadmodel_ms, timings.runtime, model_id)
            if not size:
                size, timings.size = await self._timed(self.runtime.model_size(model_id))
                size = size or entry.size
                metrics.observe_model(metrics.model_sizing_ms, timings.size, model_id)
            if self.cache.get(model_id) is not entry:
                # unregistered or purged while loading: give the memory back. Retryable for the waiting
                # requests: if the model is still registered, their next attempt finds or starts its load.
                await self._unload_runtime(model_id)
                raise ModelNotHere(model_id, f"{self.instance_id} (removed while loading)")
            more = self.cache.resize(model_id, size, clock.now_ms())
            entry.state = EntryState.ACTIVE
            entry.loaded_at = self.clock.now_ms()
            self.metrics.observe_model(self.metrics.loaded_model_size, size, model_id)
            if more:
                self.tasks.spawn(f"mesh:evict-after:{model_id}", self.evict(more, reason="space"))
            # Waiting requests go now; recording LOADED in etcd follows (peers already route here by the claim).
            fut.set_result(None)
            timings.ready = (clock.monotonic() - missed_at) * 1000
            # Let the woken requests reach the runtime before this task spends the loop on the log line, the
            # instance record and the registry write: those are not on the first response's path.
            await asyncio.sleep(0)
            self.on_change()  # ACTIVE now (data-plane workers may serve it), before the registry write
            log.info("loaded %s (%d bytes) on %s, %s", model_id, size, self.instance_id, timings.describe())
            try:
                await self.hooks.loaded(model_id, last_used=entry.last_used, size=size)
            except ModelNotFound:
                await self.unload(model_id, reason="unregistered while loading", update_registry=False)
            except MeshError as exc:
                log.warning(
                    "loaded %s but could not record it in etcd (%s); the janitor will retry", model_id, exc
                )
        except BaseException as exc:
            if self.cache.get(model_id) is entry:
                self.cache.remove(model_id)
            if claim is not None and not claimed:
                claimed = await _settle(claim)
            await self._after_failure(model_id, exc, claimed)
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, Exception) else RuntimeUnavailable("load cancelled"))
                fut.exception()  # mark retrieved: waiters may be gone
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self.on_change()

    async def _timed(self, awaitable: Awaitable[T]) -> tuple[T, float]:
        """``awaitable``'s result and how long it took (ms)."""
        started = self.clock.monotonic()
        result = await awaitable
        return result, (self.clock.monotonic() - started) * 1000

    async def _after_failure(self, model_id: str, exc: BaseException, claimed: bool) -> None:
        if isinstance(exc, LoadedElsewhere):
            return
        if isinstance(exc, ModelLoadFailed):
            self.metrics.loadmodel_failure.inc()
            log.warning("load of %s failed on %s: %s", model_id, self.instance_id, exc.cause)
            try:
                await self.hooks.failed(model_id, exc.cause)
            except MeshError as kv_exc:
                log.warning("could not record load failure of %s: %s", model_id, kv_exc.message)
            self.tasks.spawn(f"mesh:unload-failed:{model_id}", self._unload_runtime(model_id))
        elif claimed:
            try:
                await self.hooks.released(model_id, last_used=0)
            except MeshError:
                pass  # the janitor removes stale claims

    # ------------------------------------------------------------------ unloading
    async def evict(self, victims: list[CacheEntry], *, reason: str) -> None:
        """Unload evicted entries in the runtime (after in-flight requests drain) and release their claims."""
        now = self.clock.now_ms()
        for v in victims:
            self.metrics.observe_model(self.metrics.age_at_eviction_ms, max(0, now - v.last_used), v.model_id)
            log.info("evicting %s from %s (%s)", v.model_id, self.instance_id, reason)
        self.on_change()  # out of the cache already: nothing new should be sent to them
        await asyncio.gather(*(self._unload_entry(v) for v in victims))
        self.on_change()

    async def unload(
        self, model_id: str, *, reason: str, update_registry: bool = True, only: CacheEntry | None = None
    ) -> bool:
        """Unload the local copy of ``model_id`` (with ``only``: if the cache still holds that very entry)."""
        if only is not None and self.cache.get(model_id) is not only:
            return False
        entry = self.cache.remove(model_id)
        if entry is None:
            return False
        log.info("unloading %s from %s (%s)", model_id, self.instance_id, reason)
        self.on_change()  # out of the cache already: nothing new should be sent to it
        await self._unload_entry(entry, update_registry=update_registry)
        self.on_change()
        return True

    async def _unload_entry(self, entry: CacheEntry, *, update_registry: bool = True) -> None:
        deadline = self.clock.monotonic() + INFLIGHT_DRAIN_S
        while entry.inflight > 0 and self.clock.monotonic() < deadline:
            await asyncio.sleep(INFLIGHT_POLL_S)
        await self._unload_runtime(entry.model_id)
        if update_registry:
            # The memory is free once the runtime unloaded; the registry update need not delay a waiting load.
            task = self.tasks.spawn(f"mesh:release:{entry.model_id}", self._release(entry))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def releases_settled(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the registry releases still in flight: at shutdown the pod stops
        serving only once its peers can see that it holds nothing, so none of them routes to it meanwhile."""
        pending = set(self._releasing)
        if pending and timeout_s > 0:
            await asyncio.wait(pending, timeout=timeout_s)

    async def _release(self, entry: CacheEntry) -> None:
        try:
            await self.hooks.released(entry.model_id, last_used=entry.last_used)
        except MeshError as exc:
            log.warning(
                "could not remove %s copy from registry: %s (janitor will retry)", entry.model_id, exc.message
            )

    async def _unload_runtime(self, model_id: str) -> None:
        started = self.clock.monotonic()
        try:
            await self.runtime.unload(model_id)
            elapsed_ms = (self.clock.monotonic() - started) * 1000.0
            self.metrics.observe_model(self.metrics.unloadmodel_ms, elapsed_ms, model_id)
        except MeshError as exc:
            # one attempt per copy (no retries here), so every failed attempt is also a failed unload
            self.metrics.unloadmodel_attempt_failure.inc()
            self.metrics.unloadmodel_failure.inc()
            log.warning("unload of %s failed: %s", model_id, exc.message)

    def drop_local(self, model_id: str, reason: str) -> None:
        """The registry no longer wants this copy here (e.g. unregistered): unload without registry writes."""
        if model_id in self.cache:
            self.tasks.spawn(
                f"mesh:drop:{model_id}", self.unload(model_id, reason=reason, update_registry=False)
            )

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


async def _settle(claim: asyncio.Task) -> bool:
    """Wait for a claim the load no longer needs (it failed on the way: sizing, capacity); True if the claim
    was written, so the caller releases it. Not cancelled: a cancelled write may still have landed."""
    try:
        await asyncio.shield(claim)
    except BaseException:  # lost or failed: nothing to release
        return False
    return True
