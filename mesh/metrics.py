"""MeshMetrics: every Prometheus metric of a pod, built on an injected CollectorRegistry (no globals).

Names follow ModelMesh's (modelmesh.md §7) with the unit in the name; times are in seconds (Prometheus
convention) rather than ModelMesh's milliseconds.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)
_SIZE_BUCKETS = tuple(256 * 1024 * 4**k for k in range(10))


class MeshMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.api_request_seconds = Histogram(
            "modelmesh_api_request_seconds",
            "External inference request time at the ingress pod",
            ["method", "code"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.invoke_model_seconds = Histogram(
            "modelmesh_invoke_model_seconds",
            "Time of calls to the local runtime",
            ["method"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.requests_routed = Counter(
            "modelmesh_requests_routed_total",
            "Requests by route: local hit, forwarded, or load",
            ["route"],
            registry=r,
        )
        self.cache_miss_seconds = Histogram(
            "modelmesh_cache_miss_seconds",
            "Delay of requests that waited on a load",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.loadmodel_seconds = Histogram(
            "modelmesh_loadmodel_seconds", "Model load time", registry=r, buckets=_LATENCY_BUCKETS
        )
        self.loadmodel_failure = Counter("modelmesh_loadmodel_failure_total", "Failed loads", registry=r)
        self.unloadmodel_seconds = Histogram(
            "modelmesh_unloadmodel_seconds", "Model unload time", registry=r, buckets=_LATENCY_BUCKETS
        )
        self.unloadmodel_failure = Counter(
            "modelmesh_unloadmodel_failure_total", "Failed unloads", registry=r
        )
        self.evictions = Counter("modelmesh_evictions_total", "Copies evicted to make space", registry=r)
        self.age_at_eviction_seconds = Histogram(
            "modelmesh_age_at_eviction_seconds",
            "Last-used age of evicted copies",
            registry=r,
            buckets=(30, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400, 90 * 86400),
        )
        self.loaded_model_size_bytes = Histogram(
            "modelmesh_loaded_model_size_bytes",
            "Reported size of loaded models",
            registry=r,
            buckets=_SIZE_BUCKETS,
        )
        self.kv_writes = Counter(
            "modelmesh_kv_writes_total", "etcd writes by this pod", ["family"], registry=r
        )
        self.instance_capacity_bytes = Gauge(
            "modelmesh_instance_capacity_bytes", "Cache capacity", registry=r
        )
        self.instance_used_bytes = Gauge("modelmesh_instance_used_bytes", "Cache bytes in use", registry=r)
        self.instance_models_total = Gauge("modelmesh_instance_models_total", "Copies held", registry=r)
        self.instance_lru_age_seconds = Gauge(
            "modelmesh_instance_lru_age_seconds", "Age of the least recently used copy", registry=r
        )
        self.runtime_restarts = Counter(
            "modelmesh_runtime_restarts_total", "Runtime process restarts", registry=r
        )
        self.task_restarts = Counter(
            "modelmesh_task_restarts_total",
            "Background loops restarted after crashing or ending (by task name; a fixed set)",
            ["task"],
            registry=r,
        )

    def serve(self, port: int, addr: str = "0.0.0.0", source: Collector | None = None) -> None:
        """Serve ``source`` (default: this registry; a pod with data-plane workers serves its registry merged
        with theirs, ``mesh.metrics_merge``) on ``port``."""
        if port:
            start_http_server(port, addr=addr, registry=source or self.registry)
