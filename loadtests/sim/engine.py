"""The simulated mesh: N pods running the project's real policies under simulated time.

What is real (imported and called as the pods call them):
  * ``mesh.local.cache.LocalCache`` (one per pod, with the configured eviction policy) — reservations,
    victims, resizes, the recency guard;
  * ``mesh.cluster.reservations.Reservations`` (one per pod) for ``adjust`` and ``reserve``: placement sees
    each pod's *published* instance record plus the loads this pod placed there since;
  * ``mesh.cluster.placement.choose_load_target`` and ``choose_copy``;
  * ``mesh.cluster.instances.significant`` (when a pod's record is worth writing) on the publisher's
    cadence (every ``publish_interval_s``, and ``publish_min_period_s`` after a local change);
  * ``mesh.local.stats.RequestStats`` (per pod, rolled every ``stats_tick_s``) and
    ``mesh.cluster.scaling.decide_copies`` every ``scale_check_interval_s``;
  * ``mesh.cluster.proactive.plan_proactive_loads`` on the leader (when enabled);
  * ``mesh.kv.records.ModelRecord``/``InstanceRecord``, updated the way ``cluster/registry.py`` updates them.

What is modelled (the mesh's mechanisms, without I/O):
  * a request lands on a uniformly random pod (ingress) and follows ``Router._route``: local ACTIVE copy →
    served (hit); local LOADING copy → waits on it; a copy elsewhere (loading or loaded, from the registry)
    → forwarded to one (``choose_copy``), where it is served or waits; no copy → placement; the chosen pod
    (this one, or a peer through a forward) reserves room (evicting), claims the model and loads it. A
    reservation that cannot be made (CapacityExhausted) excludes that pod and the loop goes on, at most 8
    times, as in the router;
  * a load waits for one of the pod's ``loading_concurrency`` slots, then takes the model's load time
    (× a lognormal jitter); every request that arrived meanwhile waits for it; its added latency is the
    time from its arrival to the load's end;
  * sizes: the reservation uses a prediction (the true size × lognormal noise ``size_noise``, like the
    runtime's disk-size × multiplier), the cache is resized to the true size when the load ends
    (evicting more if needed), and the record then carries the measured size for later placements;
  * etcd writes are counted where the real code writes: claim, loaded (``loadedAt``), remove copy (per
    eviction or copy removal), instance records (per written record);
  * the registry is seen by every pod at once (its watch lags by milliseconds); instance records are seen
    only as published.

Not modelled: inference time and network time (a hit and a forward add nothing), runtime and pod failures,
unload time (a victim's memory is free at once), the copy scaler blocking while an added copy loads, and
the janitor's ``lu`` touches. All randomness comes from one seed.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np

from mesh.cluster.instances import significant
from mesh.cluster.placement import choose_copy, choose_load_target
from mesh.cluster.proactive import ProactiveRules, plan_proactive_loads
from mesh.cluster.reservations import Reservations
from mesh.cluster.scaling import CopyRules, decide_copies
from mesh.errors import CapacityExhausted, ModelTooLarge
from mesh.kv.records import InstanceRecord, ModelRecord
from mesh.local.cache import CacheEntry, EntryState, LocalCache
from mesh.local.eviction import make_policy
from mesh.local.stats import RequestStats

from .trace import Trace

GIB = 1 << 30
EPOCH_MS = 1_700_000_000_000  # simulated wall clock at t = 0
REGISTERED_AGO_MS = 6 * 3600 * 1000  # registry.LAST_USED_AGE_ON_ADD_MS: registered long before the trace
MAX_ITERATIONS = 8  # dataplane.router.MAX_ITERATIONS
MAX_HOPS = 4

_last_used = attrgetter("last_used")
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(ModelRecord))


def _with(rec: ModelRecord, **changes) -> ModelRecord:
    """``rec.replace(**changes)`` without dataclasses.replace's per-call field introspection (the same new
    frozen record: every field copied, the changed ones set; ModelRecord has no __post_init__)."""
    new = object.__new__(ModelRecord)
    for name in _RECORD_FIELDS:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(rec, name))
    return new


# event kinds
LOAD_DONE, PUBLISH, ROLL, SCALE, PROACTIVE, SAMPLE, JOIN = range(7)


class SimClock:
    """``mesh.clock.Clock`` on simulated time: the engine moves ``ms`` forward."""

    __slots__ = ("ms",)

    def __init__(self, ms: int = EPOCH_MS) -> None:
        self.ms = ms

    def now_ms(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.ms / 1000


class MemTable:
    """The read side of ``mesh.kv.table.Table`` (``get``/``items``) that ClusterView uses, held in memory."""

    def __init__(self) -> None:
        self._items: dict = {}

    def get(self, id: str):
        return self._items.get(id)

    def items(self) -> dict:
        return self._items


@dataclass(frozen=True)
class SimConfig:
    pods: int = 100
    capacity: int = 32 * GIB
    policy: str = "lru"
    loading_concurrency: int = 2
    default_size: int = 64 << 20
    publish_interval_s: float = 5.0
    publish_min_period_s: float = 1.0
    stats_tick_s: float = 10.0
    scale_check_interval_s: float = 10.0
    rpm_threshold: int = 2000
    second_copy_after_s: float = 420.0
    extra_copy_idle_s: float = 600.0
    copy_scaling: bool = True
    started_before_s: float = 30.0
    """How long before the first request the pods started (their first records were published then)."""
    join_pods: int = 0
    """Pods (out of ``pods``) that join only at ``join_at_s`` (a scale-out: empty caches, spare room)."""
    join_at_s: float = 0.0
    warmup_s: float = 0.0
    """Simulated seconds at the start of the trace that fill the caches and are not measured."""
    full_spread: int = 1
    registry_history: bool = True
    busy_loads: int = 0
    proactive: bool = False
    proactive_interval_s: float = 10.0
    first_type_load_ms: int = 0
    """Extra time of a pod's first load of each model type (a runtime importing the type's library)."""
    request_loads_first: bool = False
    """Request-driven loads jump queued proactive loads (a proposal; the real Loader is FIFO)."""
    size_noise: float = 0.2
    load_jitter: float = 0.1
    sample_s: float = 60.0
    seed: int = 1


@dataclass
class Counters:
    requests: int = 0
    hit_local: int = 0
    hit_forwarded: int = 0
    waited: int = 0
    failed: int = 0
    forwards: int = 0
    routed: dict = field(default_factory=lambda: {"forward": 0, "load": 0, "forward-load": 0})
    loads: int = 0
    loads_by_cause: dict = field(default_factory=lambda: {"request": 0, "copy": 0, "proactive": 0})
    loads_per_pod: dict = field(default_factory=dict)
    load_ms: int = 0
    evictions: int = 0
    copies_removed: int = 0
    etcd_writes: dict = field(default_factory=lambda: {"claim": 0, "loaded": 0, "remove": 0, "instances": 0})
    proactive_used: int = 0


class SimPod:
    __slots__ = (
        "busy",
        "cache",
        "dirty",
        "id",
        "idx",
        "last_rec",
        "last_write",
        "oldest",
        "publish_at",
        "queue",
        "stats",
        "types_seen",
        "view",
    )

    def __init__(
        self, idx: int, pod_id: str, cache: LocalCache, stats: RequestStats, view: Reservations
    ) -> None:
        self.idx = idx
        self.id = pod_id
        self.cache = cache
        self.stats = stats
        self.view = view
        self.busy = 0
        self.queue: deque[str] = deque()
        self.last_rec: InstanceRecord | None = None
        self.last_write = -(10**12)
        self.publish_at = 0  # time of a pending poke-triggered check (0 = none)
        self.oldest: CacheEntry | None = None  # the entry with the oldest last use, when known
        self.types_seen: set[str] = set()
        self.dirty = False


class SimMesh:
    def __init__(self, cfg: SimConfig, trace: Trace, ingress: list[int] | None = None) -> None:
        """``ingress``: the pod index each request lands on (default: uniformly random, seeded)."""
        self.cfg = cfg
        self.trace = trace
        self.ingress = ingress
        self.catalog = trace.catalog
        self.clock = SimClock()
        self.rng = random.Random(cfg.seed)
        self.np_rng = np.random.default_rng([cfg.seed, 3])
        self.instances = MemTable()
        self.registry = MemTable()
        self.revision = 0
        self.pods: list[SimPod] = []
        self.by_id: dict[str, SimPod] = {}
        for i in range(cfg.pods):
            pod_id = f"pod-{i:03d}"
            cache = LocalCache(cfg.capacity, policy=make_policy(cfg.policy))
            view = Reservations(pod_id)
            pod = SimPod(
                i, pod_id, cache, RequestStats(window_s=6 * cfg.stats_tick_s, tick_s=cfg.stats_tick_s), view
            )
            self.pods.append(pod)
            self.by_id[pod_id] = pod
        self.index = self.catalog.index()
        self.sizes = self.catalog.size.tolist()
        self.load_times = self.catalog.load_ms.tolist()
        self.types = self.catalog.types
        self.rules = CopyRules.make(
            rpm_threshold=cfg.rpm_threshold,
            interval_s=cfg.scale_check_interval_s,
            second_copy_after_s=cfg.second_copy_after_s,
            extra_copy_idle_s=cfg.extra_copy_idle_s,
        )
        self.proactive_rules = ProactiveRules()
        self.events: list[tuple] = []
        self.seq = 0
        self.c = Counters()
        self.measure_from = EPOCH_MS + int(cfg.warmup_s * 1000)
        self.at_warmup: Counters | None = None
        self.waiters: dict[tuple[int, str], list[int]] = {}
        self.wait_ms: list[int] = []
        self.multi: set[str] = set()  # models with more than one copy (claimed or loaded)
        self.unloaded: dict[str, int] = {}  # models whose last copy went, -> when (proactive candidates)
        self.proactive_pending: set[tuple[int, str]] = set()
        minutes = math.ceil(trace.seconds / 60) + 1
        self.per_minute = {
            k: np.zeros(minutes, dtype=np.int64)
            for k in ("requests", "waited", "loads", "load_ms", "evictions")
        }
        self.samples_t: list[float] = []
        self.samples_used: list[list[int]] = []

    # ------------------------------------------------------------------ events
    def _at(self, t: int, kind: int, a: int = 0, b: str = "") -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, a, b))

    def run(self) -> Counters:
        cfg = self.cfg
        self.n_alive = len(self.pods) - max(0, min(cfg.join_pods, len(self.pods) - 1))
        # pods start before the first request (registration, warm-up of the runtime): their first
        # records are old when traffic starts, so the first change after it is published at once
        started = EPOCH_MS - int(cfg.started_before_s * 1000)
        for pod in self.pods[: self.n_alive]:
            self._join(pod, started)
        if self.n_alive < len(self.pods):
            self._at(EPOCH_MS + int(cfg.join_at_s * 1000), JOIN)
        if cfg.proactive:
            self._at(EPOCH_MS + int(cfg.proactive_interval_s * 1000), PROACTIVE)
        self._at(EPOCH_MS, SAMPLE)
        events = self.events
        pods = self.pods
        ids = self.catalog.ids
        randrange = self.rng.randrange
        end = EPOCH_MS + int(self.trace.seconds * 1000)
        landing = iter(self.ingress) if self.ingress is not None else None
        for t_rel, m in zip(self.trace.t_ms.tolist(), self.trace.model.tolist(), strict=True):
            t = EPOCH_MS + t_rel
            while events and events[0][0] <= t:
                self._dispatch(heapq.heappop(events))
            self.clock.ms = t
            if self.at_warmup is None and t >= self.measure_from:
                self.at_warmup = copy.deepcopy(self.c)
            pod = pods[next(landing)] if landing is not None else pods[randrange(self.n_alive)]
            self._request(pod, ids[m], t)
        # drain: finish loads in flight (periodic events stop at the end of the trace)
        while events:
            ev = heapq.heappop(events)
            if ev[2] == LOAD_DONE or ev[0] <= end:
                self._dispatch(ev)
        return self.c

    def _join(self, pod: SimPod, now: int) -> None:
        """The pod starts: publishes its record and starts its periodic tasks (at random phases)."""
        cfg = self.cfg
        self.clock.ms = now
        self._publish(pod, force=True)
        off = self.rng.random()
        self._at(now + int(off * cfg.publish_interval_s * 1000), PUBLISH, pod.idx)
        self._at(now + int(off * cfg.stats_tick_s * 1000), ROLL, pod.idx)
        if cfg.copy_scaling:
            self._at(now + int(off * cfg.scale_check_interval_s * 1000), SCALE, pod.idx)

    def _dispatch(self, ev: tuple) -> None:
        t, _, kind, a, b = ev
        self.clock.ms = t
        cfg = self.cfg
        end = EPOCH_MS + int(self.trace.seconds * 1000)
        if kind == LOAD_DONE:
            self._load_done(self.pods[a], b, t)
        elif kind == PUBLISH:
            pod = self.pods[a]
            if b == "poke":
                pod.publish_at = 0
                self._publish(pod)
            else:
                self._publish(pod)
                if t < end:
                    self._at(t + int(cfg.publish_interval_s * 1000), PUBLISH, a)
        elif kind == ROLL:
            self.pods[a].stats.roll(t)
            if t < end:
                self._at(t + int(cfg.stats_tick_s * 1000), ROLL, a)
        elif kind == SCALE:
            self._scale(self.pods[a], t)
            if t < end:
                self._at(t + int(cfg.scale_check_interval_s * 1000), SCALE, a)
        elif kind == PROACTIVE:
            self._proactive(t)
            if t < end:
                self._at(t + int(cfg.proactive_interval_s * 1000), PROACTIVE)
        elif kind == JOIN:
            for pod in self.pods[self.n_alive :]:
                self._join(pod, t)
            self.n_alive = len(self.pods)
        elif kind == SAMPLE:
            self.samples_t.append((t - EPOCH_MS) / 1000)
            self.samples_used.append([p.cache.used for p in self.pods])
            if t < end:
                self._at(t + int(cfg.sample_s * 1000), SAMPLE)

    # ------------------------------------------------------------------ registry (as cluster/registry.py)
    def _record(self, model_id: str) -> ModelRecord:
        rec = self.registry._items.get(model_id)
        if rec is None:
            i = self.index[model_id]
            rec = ModelRecord(
                type=self.types[i],
                last_used=EPOCH_MS - REGISTERED_AGO_MS,
                registered_at=EPOCH_MS - REGISTERED_AGO_MS,
            )
            self.registry._items[model_id] = rec
        return rec

    def _claim(self, model_id: str, pod: SimPod, now: int) -> None:
        rec = self._record(model_id)
        if pod.id not in rec.instances:
            self.registry._items[model_id] = _with(rec, instances={**rec.instances, pod.id: now})
            self.c.etcd_writes["claim"] += 1
            if rec.instances:
                self.multi.add(model_id)
        self.unloaded.pop(model_id, None)

    def _mark_loaded(self, model_id: str, pod: SimPod, last_used: int, size: int, now: int) -> None:
        rec = self._record(model_id)
        instances = rec.instances if pod.id in rec.instances else {**rec.instances, pod.id: now}
        self.registry._items[model_id] = _with(
            rec,
            instances=instances,
            loaded={**rec.loaded, pod.id: now},
            last_used=max(rec.last_used, last_used),
            size=size or rec.size,
        )
        self.c.etcd_writes["loaded"] += 1

    def _remove_copy(self, model_id: str, pod: SimPod, last_used: int, now: int) -> None:
        rec = self._record(model_id)
        if pod.id not in rec.instances:
            return
        instances = {k: v for k, v in rec.instances.items() if k != pod.id}
        self.registry._items[model_id] = _with(
            rec,
            instances=instances,
            loaded={k: v for k, v in rec.loaded.items() if k != pod.id},
            last_used=max(rec.last_used, last_used),
            last_unload=now,
        )
        self.c.etcd_writes["remove"] += 1
        if len(instances) <= 1:
            self.multi.discard(model_id)
        if not instances:
            self.unloaded[model_id] = now

    # ------------------------------------------------------------------ publisher (as cluster/instances.py)
    def _build(self, pod: SimPod) -> InstanceRecord:
        # The fields Pod._instance_record publishes. lru_time is cache.oldest_last_used(): the oldest entry is
        # remembered and recomputed only when it left the cache or was used again (a use only moves an
        # entry's last use forward, and a new entry older than it replaces it); loads_in_progress is
        # cache.loading_count() (every LOADING entry is either loading or queued). This runs on every
        # publisher check of every pod.
        cache = pod.cache
        entries = cache._entries
        oldest = pod.oldest
        if entries and (oldest is None or entries.get(oldest.model_id) is not oldest):
            oldest = pod.oldest = min(entries.values(), key=_last_used)
        return InstanceRecord(
            address=pod.id,
            capacity=cache.capacity,
            used=cache.used,
            lru_time=oldest.last_used if entries else 0,
            count=len(entries),
            loads_in_progress=pod.busy + len(pod.queue),
            loading_threads=self.cfg.loading_concurrency,
            rpm=int(pod.stats.rpm),
            start_time=EPOCH_MS,
        )

    def _publish(self, pod: SimPod, *, force: bool = False) -> None:
        now = self.clock.ms
        new = self._build(pod)
        stale = now - pod.last_write > 4 * self.cfg.publish_interval_s * 1000
        if not force and not stale and not significant(pod.last_rec, new, self.clock.now_ms()):
            return
        self.revision += 1
        self.instances._items[pod.id] = dataclasses.replace(new, revision=self.revision)
        pod.last_rec = new
        pod.last_write = now
        self.c.etcd_writes["instances"] += 1

    def _poke(self, pod: SimPod, now: int) -> None:
        if pod.publish_at:
            return
        at = max(now, pod.last_write + int(self.cfg.publish_min_period_s * 1000))
        pod.publish_at = at
        self._at(at, PUBLISH, pod.idx, "poke")

    # ------------------------------------------------------------------ the request path (as Router._route)
    def _request(self, ingress: SimPod, model_id: str, t: int) -> None:
        c = self.c
        c.requests += 1
        minute = (t - EPOCH_MS) // 60_000
        self.per_minute["requests"][minute] += 1
        entry = ingress.cache._entries.get(model_id)
        if entry is not None and entry.state is EntryState.ACTIVE:
            self._serve(ingress, entry, t)
            c.hit_local += 1
            return
        exclude: set[str] = set()
        for _ in range(MAX_ITERATIONS):
            entry = ingress.cache._entries.get(model_id)
            if entry is not None and ingress.id not in exclude:
                if entry.state is EntryState.ACTIVE:  # loaded by a request that waited before us
                    self._serve(ingress, entry, t)
                    c.hit_local += 1
                else:
                    self._wait(ingress, model_id, t)
                return
            rec = self._record(model_id)
            alive = self.instances._items
            holders = [i for i in rec.instances if i != ingress.id and i in alive and i not in exclude]
            if holders:
                target = choose_copy(holders, rec.loaded, alive, self.rng)
                c.forwards += 1
                c.routed["forward"] += 1
                pod = self.by_id[target]
                held = pod.cache._entries.get(model_id)
                if held is None:  # cannot happen while the registry is seen at once; kept for safety
                    exclude.add(target)
                    continue
                if held.state is EntryState.ACTIVE:
                    self._serve(pod, held, t)
                    c.hit_forwarded += 1
                else:
                    self._wait(pod, model_id, t)
                return
            size = rec.size or self.cfg.default_size
            target = choose_load_target(
                ingress.view.adjust(self.instances._items),
                model_type=rec.type,
                size=size,
                exclude=exclude,
                rng=self.rng,
                now_ms=t,
                full_spread=self.cfg.full_spread,
                busy_loads=self.cfg.busy_loads,
            )
            if target is None:
                break
            pod = self.by_id[target]
            if target != ingress.id:
                ingress.view.reserve(self.instances._items, target, size)
                c.forwards += 1
                c.routed["forward-load"] += 1
            else:
                c.routed["load"] += 1
            if self._start_load(pod, model_id, t, last_used=t, cause="request"):
                self._wait(pod, model_id, t)
                return
            exclude.add(target)
        c.failed += 1

    def _serve(self, pod: SimPod, entry, t: int) -> None:
        # the router's touch: attribute stores only
        if t > entry.last_used:
            entry.last_used = t
            if entry is pod.oldest:
                pod.oldest = None
        entry.hits += 1
        pod.stats.record(entry.model_id)
        if entry.extra:
            entry.extra.clear()  # a proactive copy was used
            self.c.proactive_used += 1

    def _wait(self, pod: SimPod, model_id: str, t: int) -> None:
        self.waiters.setdefault((pod.idx, model_id), []).append(t)
        self.c.waited += 1
        self.per_minute["waited"][(t - EPOCH_MS) // 60_000] += 1

    # ------------------------------------------------------------------ loading (as Loader)
    def _start_load(
        self, pod: SimPod, model_id: str, now: int, *, last_used: int, cause: str, evict: bool = True
    ) -> bool:
        i = self.index[model_id]
        true_size = self.sizes[i]
        predicted = true_size
        if self.cfg.size_noise:
            predicted = max(1, int(true_size * math.exp(self.rng.gauss(0.0, self.cfg.size_noise))))
        predicted = min(predicted, pod.cache.capacity)
        # what the registry knows of an earlier life of this model (its last use before its last unload), for
        # a policy that counts uses; a model never unloaded has only its registration stamp there
        rec = self._record(model_id)
        seen = (1, rec.last_used) if (self.cfg.registry_history and rec.last_unload) else None
        try:
            entry, victims = pod.cache.reserve(model_id, predicted, last_used, now, evict=evict, seen=seen)
        except (CapacityExhausted, ModelTooLarge):
            return False
        oldest = pod.oldest
        if oldest is not None and entry.last_used < oldest.last_used:
            pod.oldest = entry
        self._evicted(pod, victims, now)
        self._claim(model_id, pod, now)
        if cause == "proactive":
            entry.extra["proactive"] = True
        entry.extra["cause"] = cause
        self.c.loads_by_cause[cause] += 1
        if pod.busy < self.cfg.loading_concurrency:
            self._begin(pod, model_id, now)
        elif self.cfg.request_loads_first and cause == "request":
            # proposal (not the Loader today, whose slots are a FIFO semaphore): a load someone waits for
            # goes before queued proactive loads, as in ModelMesh's loading priority queue (modelmesh.md §4)
            entries = pod.cache._entries
            at = next(
                (i for i, m in enumerate(pod.queue) if entries[m].extra.get("cause") == "proactive"),
                len(pod.queue),
            )
            pod.queue.insert(at, model_id)
        else:
            pod.queue.append(model_id)
        self._poke(pod, now)
        return True

    def _begin(self, pod: SimPod, model_id: str, now: int) -> None:
        pod.busy += 1
        entry = pod.cache._entries[model_id]
        entry.load_started = now
        i = self.index[model_id]
        duration = self.load_times[i]
        if self.cfg.load_jitter:
            duration = max(1, int(duration * math.exp(self.rng.gauss(0.0, self.cfg.load_jitter))))
        if self.cfg.first_type_load_ms and self.types[i] not in pod.types_seen:
            pod.types_seen.add(self.types[i])
            duration += self.cfg.first_type_load_ms
        self._at(now + duration, LOAD_DONE, pod.idx, model_id)

    def _load_done(self, pod: SimPod, model_id: str, now: int) -> None:
        pod.busy -= 1
        entry = pod.cache._entries[model_id]
        duration = now - entry.load_started
        c = self.c
        c.loads += 1
        c.loads_per_pod[pod.idx] = c.loads_per_pod.get(pod.idx, 0) + 1
        c.load_ms += duration
        minute = min((now - EPOCH_MS) // 60_000, len(self.per_minute["loads"]) - 1)
        self.per_minute["loads"][minute] += 1
        self.per_minute["load_ms"][minute] += duration
        size = self.sizes[self.index[model_id]]
        more = pod.cache.resize(model_id, size, now)
        entry.state = EntryState.ACTIVE
        entry.loaded_at = now
        cause = entry.extra.pop("cause", "request")
        waiting = self.waiters.pop((pod.idx, model_id), None)
        if waiting:
            entry.extra.pop("proactive", None)
            measured = self.measure_from
            for arrived in waiting:
                if arrived >= measured:
                    self.wait_ms.append(now - arrived)
                self._serve(pod, entry, arrived)
        del cause
        self._mark_loaded(model_id, pod, entry.last_used, size, now)
        self._evicted(pod, more, now)
        if pod.queue:
            self._begin(pod, pod.queue.popleft(), now)
        self._poke(pod, now)

    def _evicted(self, pod: SimPod, victims, now: int) -> None:
        if not victims:
            return
        c = self.c
        c.evictions += len(victims)
        minute = min((now - EPOCH_MS) // 60_000, len(self.per_minute["evictions"]) - 1)
        self.per_minute["evictions"][minute] += len(victims)
        for v in victims:
            self._remove_copy(v.model_id, pod, v.last_used, now)

    # ------------------------------------------------------------------ copies (CopyScaler.run_once)
    def _scale(self, pod: SimPod, now: int) -> None:
        rules = self.rules
        stats = pod.stats
        rpm_of = stats.model_rpm
        in_use = stats.in_use_since
        alive = self.instances._items
        due_second = now - rules.second_copy_after_ms
        # decide_copies can only act on a copy that has a rate at the threshold, has been in regular use for
        # long enough, or is one of several copies (the sim registers no minimum copies). Every other copy
        # gets None; it is skipped without the call, and the rest are checked in the cache's order.
        maybe = {m for m, rpm in rpm_of.items() if rpm >= rules.rpm_threshold}
        maybe.update(m for m, since in in_use.items() if since <= due_second)
        entries = pod.cache._entries
        maybe.update(m for m in self.multi if m in entries) if len(self.multi) < len(
            entries
        ) else maybe.update(m for m in entries if m in self.multi)
        if not maybe:
            return
        removed = False
        for entry in [e for e in entries.values() if e.model_id in maybe]:
            if entry.state is not EntryState.ACTIVE:
                continue
            model_id = entry.model_id
            rec = self.registry._items.get(model_id)
            if rec is None:
                continue
            rpm = rpm_of.get(model_id, 0.0)
            since = in_use.get(model_id)
            action = decide_copies(
                rules,
                instance_id=pod.id,
                model_id=model_id,
                last_used=entry.last_used,
                inflight=entry.inflight,
                rec=rec,
                alive=alive,
                instances=alive,
                rpm=rpm,
                in_use_since=since,
                cache_free=pod.cache.free,
                default_size=self.cfg.default_size,
                now=now,
                may_remove=not removed,
            )
            if action is None:
                continue
            if action.add:
                holders = set(action.holders)
                for _ in range(action.add):
                    rec = self.registry._items[model_id]
                    target = choose_load_target(
                        pod.view.adjust(self.instances._items),
                        model_type=rec.type,
                        size=entry.size,
                        exclude=holders | set(rec.instances),
                        rng=self.rng,
                        now_ms=now,
                        full_spread=self.cfg.full_spread,
                        busy_loads=self.cfg.busy_loads,
                    )
                    if target is None:
                        break
                    pod.view.reserve(self.instances._items, target, entry.size)
                    if not self._start_load(
                        self.by_id[target], model_id, now, last_used=entry.last_used, cause="copy"
                    ):
                        break
                    holders.add(target)
            elif action.remove:
                pod.cache.remove(model_id)
                self.c.copies_removed += 1
                self._remove_copy(model_id, pod, entry.last_used, now)
                self._poke(pod, now)
                removed = True

    # ------------------------------------------------------------------ leader: proactive loads
    def _proactive(self, now: int) -> None:
        max_age = self.proactive_rules.max_age_ms
        for model_id, at in list(self.unloaded.items()):
            if now - at > max_age:
                del self.unloaded[model_id]
        if not self.unloaded:
            return
        candidates = ((m, self.registry._items[m]) for m in self.unloaded)
        plan = plan_proactive_loads(
            candidates,
            self.instances._items,
            now=now,
            default_size=self.cfg.default_size,
            failure_expiry_ms=900_000,
            rules=self.proactive_rules,
            rng=self.rng,
        )
        for load in plan:
            self._start_load(
                self.by_id[load.target],
                load.model_id,
                now,
                last_used=load.last_used,
                cause="proactive",
                evict=False,
            )

    # ------------------------------------------------------------------ results
    def measured(self) -> Counters:
        """The counters of the measured phase (after the warm-up)."""
        base = self.at_warmup or Counters()
        out = Counters()
        for f in dataclasses.fields(Counters):
            now, before = getattr(self.c, f.name), getattr(base, f.name)
            if isinstance(now, dict):
                setattr(out, f.name, {k: v - before.get(k, 0) for k, v in now.items()})
            else:
                setattr(out, f.name, now - before)
        return out

    def result(self) -> dict:
        c = self.measured()
        waits = np.array(self.wait_ms, dtype=np.float64)
        served = c.requests - c.failed
        return {
            "requests": c.requests,
            "served": served,
            "failed": c.failed,
            "hit_ratio": (c.hit_local + c.hit_forwarded) / c.requests if c.requests else 0.0,
            "local_hit_ratio": c.hit_local / c.requests if c.requests else 0.0,
            "hit_local": c.hit_local,
            "hit_forwarded": c.hit_forwarded,
            "waited": c.waited,
            "wait_p50_ms": float(np.percentile(waits, 50)) if len(waits) else 0.0,
            "wait_p99_ms": float(np.percentile(waits, 99)) if len(waits) else 0.0,
            "wait_mean_ms": float(waits.mean()) if len(waits) else 0.0,
            "forwards": c.forwards,
            "routed": dict(c.routed),
            "loads": c.loads,
            "loads_by_cause": dict(c.loads_by_cause),
            "loads_per_pod": [c.loads_per_pod.get(i, 0) for i in range(len(self.pods))],
            "load_s": c.load_ms / 1000,
            "evictions": c.evictions,
            "copies_removed": c.copies_removed,
            "proactive_used": c.proactive_used,
            "etcd_writes": sum(c.etcd_writes.values()),
            "etcd_writes_by_kind": dict(c.etcd_writes),
            "warmup_s": self.cfg.warmup_s,
        }
