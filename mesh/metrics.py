"""MeshMetrics: every Prometheus metric of a pod, under ModelMesh's names and units, on an injected registry.

Names, types, units, label sets and buckets are ModelMesh's (``MM/Metric.java``, ``MM/Metrics.java``;
modelmesh.md §7), so its Grafana dashboards and alerts work unchanged: times are histograms in
**milliseconds** (``*_milliseconds``), sizes in bytes, and counters are exposed with Prometheus' ``_total``
suffix (``modelmesh_loadmodel_failure_total``), as ModelMesh's Java client does. The ``*_seconds`` histograms
this pod exported before are gone rather than doubled: every observation on the request path would have cost
twice, and two unit schemes for one event invite dashboards that disagree.

Labels. Request metrics (``api_request``, ``invoke_model``, request/response sizes) carry ``method`` (the V2
method's short name, a bounded set) and ``code`` (the gRPC status name). With per-model metrics on
(``MM_PER_MODEL_METRICS``, ModelMesh's ``per_model_metrics``) they and the model-event histograms also carry
``modelId`` and ``vModelId`` (empty when the request named a concrete model). Model ids come from clients, so
``ModelLabels`` bounds them: the first ``per_model_cap`` distinct ids keep their own value for the life of the
process; every later id is reported as ``__other__``. The number of series is therefore bounded by
methods × codes × (cap + 1)².

Gauges of this pod (capacity, used, LRU time and age, copies) and of the cluster (models loaded / with
failures / managed: the leader only, as in ModelMesh) are computed when Prometheus scrapes, from snapshots the
pod hands over (``bind_state``): the instance snapshot is refreshed on the event loop, the cluster totals are
read from the immutable cluster view, so the scrape thread never walks a structure the loop is changing.

Extensions (ModelMesh has no equivalent; names end in their unit): requests by route, etcd writes by key
family, runtime restarts, background-task restarts, event-loop stalls and readiness.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# ModelMesh's buckets (Metrics.java): timings in ms, age at eviction 30 s .. 90 d in ms, model sizes
# 256 KiB × 4^k and message sizes 128 B × 4^k (8 buckets each).
MS_TIME_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 75, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 60000,
                   120000, 300000)  # fmt: skip
_S, _M, _H, _D = 1000, 60_000, 3_600_000, 86_400_000
AGE_BUCKETS_MS = (30 * _S, 5 * _M, 15 * _M, _H, 4 * _H, 12 * _H, _D, 7 * _D, 30 * _D, 90 * _D)
MODEL_SIZE_BUCKETS = tuple(256 * 1024 * 4**k for k in range(8))
MESSAGE_SIZE_BUCKETS = tuple(128 * 4**k for k in range(8))

OVERFLOW_LABEL = "__other__"
_MAX_CHILDREN = 4096  # cached labelled children; rebuilt when exceeded (bounded by ModelLabels anyway)

#: The names this module exports (without the _bucket/_count/_sum/_total/_created suffixes).
MODELMESH_NAMES = (
    "modelmesh_api_request_milliseconds",
    "modelmesh_invoke_model_milliseconds",
    "modelmesh_request_size_bytes",
    "modelmesh_response_size_bytes",
    "modelmesh_cache_miss_milliseconds",
    "modelmesh_loadmodel_milliseconds",
    "modelmesh_loadmodel_failure",
    "modelmesh_unloadmodel_milliseconds",
    "modelmesh_unloadmodel_failure",
    "modelmesh_unloadmodel_attempt_failure",
    "modelmesh_loading_queue_delay_milliseconds",
    "modelmesh_model_sizing_milliseconds",
    "modelmesh_age_at_eviction_milliseconds",
    "modelmesh_loaded_model_size_bytes",
    "modelmesh_models_loaded_total",
    "modelmesh_models_with_failure_total",
    "modelmesh_models_managed_total",
    "modelmesh_instance_lru_seconds",
    "modelmesh_instance_lru_age_seconds",
    "modelmesh_instance_capacity_bytes",
    "modelmesh_instance_used_bytes",
    "modelmesh_instance_used_bps",
    "modelmesh_instance_models_total",
)
EXTENSION_NAMES = (
    "modelmesh_requests_routed",
    "modelmesh_kv_writes",
    "modelmesh_runtime_restarts",
    "modelmesh_task_restarts",
    "modelmesh_event_loop_stalls",
    "modelmesh_ready",
)


class ModelLabels:
    """Bounded label values for model ids: the first ``cap`` distinct ids map to themselves, later ones to
    ``OVERFLOW_LABEL``. Never forgets an id (a freed slot would let series pile up under model churn)."""

    def __init__(self, cap: int) -> None:
        self.cap = max(0, cap)
        self._known: dict[str, str] = {}
        self._lock = threading.Lock()

    def __call__(self, model_id: str) -> str:
        if not model_id:
            return ""
        value = self._known.get(model_id)
        if value is not None:
            return value
        with self._lock:
            if model_id in self._known:
                return self._known[model_id]
            if len(self._known) >= self.cap:
                return OVERFLOW_LABEL
            self._known[model_id] = model_id
            return model_id


@dataclass(frozen=True, slots=True)
class InstanceStats:
    """This pod's cache, as last seen on the event loop."""

    capacity: int
    used: int
    models: int
    lru_ms: int  # oldest last-used time of a local copy (epoch ms); 0 when the cache is empty


@dataclass(frozen=True, slots=True)
class ClusterTotals:
    loaded: int
    with_failure: int
    managed: int


class MeshMetrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        per_model: bool = False,
        per_model_cap: int = 100,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.per_model = per_model
        self.model_label = ModelLabels(per_model_cap)
        r = self.registry
        per = ["modelId", "vModelId"] if per_model else []
        request = ["method", "code", *per]

        def timing(name: str, doc: str, labels: list[str] = per) -> Histogram:
            return Histogram(name, doc, labels, registry=r, buckets=MS_TIME_BUCKETS)

        self.api_request_ms = timing(
            "modelmesh_api_request_milliseconds", "External inference request time", request
        )
        self.invoke_model_ms = timing(
            "modelmesh_invoke_model_milliseconds", "Internal model server inference request time", request
        )
        self.request_size = Histogram(
            "modelmesh_request_size_bytes", "Inference request payload size", request, registry=r,
            buckets=MESSAGE_SIZE_BUCKETS,
        )  # fmt: skip
        self.response_size = Histogram(
            "modelmesh_response_size_bytes", "Inference response payload size", request, registry=r,
            buckets=MESSAGE_SIZE_BUCKETS,
        )  # fmt: skip
        self.cache_miss_ms = timing("modelmesh_cache_miss_milliseconds", "Cache miss delay")
        self.loadmodel_ms = timing("modelmesh_loadmodel_milliseconds", "Time taken to load model")
        self.loadmodel_failure = Counter("modelmesh_loadmodel_failure", "Model load failures", registry=r)
        self.unloadmodel_ms = timing("modelmesh_unloadmodel_milliseconds", "Time taken to unload model")
        self.unloadmodel_failure = Counter(
            "modelmesh_unloadmodel_failure",
            "Unload model failures (not counting multiple attempts for same copy)",
            registry=r,
        )
        self.unloadmodel_attempt_failure = Counter(
            "modelmesh_unloadmodel_attempt_failure", "Unload model attempt failures", registry=r
        )
        self.loading_queue_delay_ms = timing(
            "modelmesh_loading_queue_delay_milliseconds", "Time spent in model loading queue"
        )
        self.model_sizing_ms = timing(
            "modelmesh_model_sizing_milliseconds", "Time taken to perform model sizing"
        )
        self.age_at_eviction_ms = Histogram(
            "modelmesh_age_at_eviction_milliseconds", "Time since model was last used when evicted", per,
            registry=r, buckets=AGE_BUCKETS_MS,
        )  # fmt: skip
        self.loaded_model_size = Histogram(
            "modelmesh_loaded_model_size_bytes", "Reported size of loaded model", per, registry=r,
            buckets=MODEL_SIZE_BUCKETS,
        )  # fmt: skip
        # --- extensions
        self.requests_routed = Counter(
            "modelmesh_requests_routed",
            "Requests that did not find an active local copy, by route: forward (to a copy elsewhere), "
            "forward-load (to the pod chosen to load it), load (loaded or waited for here)",
            ["route"],
            registry=r,
        )
        self.kv_writes = Counter("modelmesh_kv_writes", "etcd writes by this pod", ["family"], registry=r)
        self.runtime_restarts = Counter("modelmesh_runtime_restarts", "Runtime process restarts", registry=r)
        self.task_restarts = Counter(
            "modelmesh_task_restarts",
            "Background loops restarted after crashing or ending (by task name; a fixed set)",
            ["task"],
            registry=r,
        )
        self.event_loop_stalls = Counter(
            "modelmesh_event_loop_stalls",
            "Times the event loop did not run a scheduled callback within the liveness stall limit",
            registry=r,
        )
        self.ready = Gauge("modelmesh_ready", "1 while the pod reports ready (can serve), else 0", registry=r)
        self._request_children: dict[tuple[str, ...], tuple] = {}
        self._invoke_children: dict[tuple[str, ...], object] = {}
        self._state = _StateCollector()
        r.register(self._state)

    # ------------------------------------------------------------------ request metrics (hot path)
    def request(
        self,
        method: str,
        code: str,
        elapsed_ms: float,
        request_bytes: int,
        response_bytes: int,
        model_id: str = "",
        vmodel_id: str = "",
    ) -> None:
        """One external request at the ingress pod (``response_bytes`` < 0: no response, not observed)."""
        key = (method, code, model_id, vmodel_id) if self.per_model else (method, code)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_child(key)
        children[0].observe(elapsed_ms)
        children[1].observe(request_bytes)
        if response_bytes >= 0:
            children[2].observe(response_bytes)

    def _request_child(self, key: tuple[str, ...]) -> tuple:
        labels = self._labels(key)
        children = (
            self.api_request_ms.labels(*labels),
            self.request_size.labels(*labels),
            self.response_size.labels(*labels),
        )
        if len(self._request_children) >= _MAX_CHILDREN:
            self._request_children.clear()
        self._request_children[key] = children
        return children

    def invoke(
        self, method: str, code: str, elapsed_ms: float, model_id: str = "", vmodel_id: str = ""
    ) -> None:
        """One call of the local runtime."""
        key = (method, code, model_id, vmodel_id) if self.per_model else (method, code)
        child = self._invoke_children.get(key)
        if child is None:
            child = self.invoke_model_ms.labels(*self._labels(key))
            if len(self._invoke_children) >= _MAX_CHILDREN:
                self._invoke_children.clear()
            self._invoke_children[key] = child
        child.observe(elapsed_ms)  # type: ignore[attr-defined]

    def _labels(self, key: tuple[str, ...]) -> tuple[str, ...]:
        if not self.per_model:
            return key
        method, code, model_id, vmodel_id = key
        return method, code, self.model_label(model_id), self.model_label(vmodel_id)

    # ------------------------------------------------------------------ model events
    def observe_model(self, hist: Histogram, value: float, model_id: str = "", vmodel_id: str = "") -> None:
        """Observe ``value`` in a model-event histogram (cache miss, load, unload, sizing, queue delay, age at
        eviction, loaded size), labelled by model when per-model metrics are on."""
        if self.per_model:
            hist.labels(self.model_label(model_id), self.model_label(vmodel_id)).observe(value)
        else:
            hist.observe(value)

    # ------------------------------------------------------------------ gauges computed at scrape time
    def bind_state(
        self,
        *,
        instance: Callable[[], InstanceStats | None],
        cluster: Callable[[], ClusterTotals | None],
        now_ms: Callable[[], int],
    ) -> None:
        """Where the scrape-time gauges come from: ``instance`` (this pod's last snapshot), ``cluster`` (the
        cluster totals, or None on a pod that is not the leader) and the wall clock (for the LRU age)."""
        self._state.instance = instance
        self._state.cluster = cluster
        self._state.now_ms = now_ms

    def serve(self, port: int, addr: str = "0.0.0.0", source: Collector | None = None) -> None:
        """Serve ``source`` (default: this registry; a pod with data-plane workers serves its registry merged
        with theirs, ``mesh.metrics_merge``) on ``port``."""
        if port:
            start_http_server(port, addr=addr, registry=source or self.registry)


class _StateCollector(Collector):
    """Gauges read when Prometheus scrapes (see the module docstring). Runs on the metrics server's thread."""

    def __init__(self) -> None:
        self.instance: Callable[[], InstanceStats | None] = lambda: None
        self.cluster: Callable[[], ClusterTotals | None] = lambda: None
        self.now_ms: Callable[[], int] = lambda: 0

    def describe(self) -> Iterable:
        return ()  # not known before the pod runs; registering must not call collect()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        stats = self.instance()
        if stats is not None:
            lru_s = stats.lru_ms / 1000 if stats.lru_ms else 0.0
            age_s = max(0.0, (self.now_ms() - stats.lru_ms) / 1000) if stats.lru_ms else 0.0
            bps = int(stats.used * 10_000 / stats.capacity) if stats.capacity else 0
            for name, doc, value in (
                ("modelmesh_instance_lru_seconds",
                 "Last used time of least recently used model in pod (in secs since epoch; 0 when empty)", lru_s),
                ("modelmesh_instance_lru_age_seconds",
                 "Last used age of least recently used model in pod (secs ago)", age_s),
                ("modelmesh_instance_capacity_bytes",
                 "Effective model capacity of pod excluding unload buffer", stats.capacity),
                ("modelmesh_instance_used_bytes",
                 "Amount of capacity currently in use by loaded models", stats.used),
                ("modelmesh_instance_used_bps",
                 "Amount of capacity used in basis points (100ths of percent)", bps),
                ("modelmesh_instance_models_total", "Number of model copies loaded in pod", stats.models),
            ):  # fmt: skip
                yield GaugeMetricFamily(name, doc, value=value)
        totals = self.cluster()
        if totals is not None:
            yield GaugeMetricFamily(
                "modelmesh_models_loaded_total",
                "Total number of models with at least one loaded copy",
                value=totals.loaded,
            )
            yield GaugeMetricFamily(
                "modelmesh_models_with_failure_total",
                "Total number of models with one or more recent load failures",
                value=totals.with_failure,
            )
            yield GaugeMetricFamily(
                "modelmesh_models_managed_total", "Total number of models managed", value=totals.managed
            )
