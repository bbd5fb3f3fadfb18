"""Router: the single decision point of the request path (DESIGN §3).

For each request: find the model id (headers, else field 1 of the message), resolve a vmodel to its active
model, then loop over at most ``MAX_ITERATIONS`` attempts:
  * local copy ACTIVE → touch it (memory only) and call the local runtime with the raw bytes;
  * local copy LOADING → wait on the shared load;
  * loaded elsewhere (from the watch-fed view) → forward raw bytes to that pod with ``mm-internal: hit``;
    a failed hop excludes that pod and the loop continues;
  * loaded nowhere → placement picks a pod: this one loads it (exclusive CAS claim, so concurrent misses on
    several pods end in one load), or the chosen pod is asked with ``mm-internal: load``.
Internal requests are never forwarded again, so requests cannot loop. Nothing here awaits etcd except the
load path through the Loader (and one strong read before answering NOT_FOUND for an unknown id).
"""

from __future__ import annotations

import logging
import random
import time

import grpc
from prometheus_client import Histogram

from mesh.cluster.placement import choose_copy
from mesh.cluster.placer import Placer
from mesh.cluster.registry import LoadedElsewhere
from mesh.cluster.view import ClusterView
from mesh.dataplane import headers as h
from mesh.dataplane.forwarder import PeerLinks
from mesh.dataplane.runtime_link import RuntimeLink
from mesh.errors import (
    InvalidRequest,
    MeshError,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotHere,
    NoPlacement,
    PeerUnavailable,
    RemoteError,
    RuntimeUnavailable,
)
from mesh.ids import check_id
from mesh.local.cache import EntryState, LocalCache
from mesh.local.loader import Loader, now_ms
from mesh.local.stats import RequestStats
from mesh.metrics import MeshMetrics
from protos.inference import grpc_predict_v2_pb2 as v2

log = logging.getLogger(__name__)

MAX_ITERATIONS = 8
ID_FIELD_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ModelMetadata",
        "/inference.GRPCInferenceService/ModelReady",
    }
)
MODEL_READY = "/inference.GRPCInferenceService/ModelReady"
_NOT_READY = v2.ModelReadyResponse(ready=False).SerializeToString()


class RuntimeHolder:
    """The current RuntimeLink; replaced when the supervised runtime restarts."""

    def __init__(self, link: RuntimeLink | None = None) -> None:
        self.link = link


class Router:
    def __init__(
        self,
        *,
        instance_id: str,
        view: ClusterView,
        cache: LocalCache,
        loader: Loader,
        runtime: RuntimeHolder,
        peers: PeerLinks,
        stats: RequestStats,
        metrics: MeshMetrics,
        placer: Placer,
        max_hops: int = 4,
        max_load_failures: int = 3,
        load_failure_expiry_ms: int = 900_000,
        request_timeout_s: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.view = view
        self.cache = cache
        self.loader = loader
        self.runtime = runtime
        self.peers = peers
        self.stats = stats
        self.metrics = metrics
        self.placer = placer
        self.max_hops = max_hops
        self.max_load_failures = max_load_failures
        self.load_failure_expiry_ms = load_failure_expiry_ms
        self.request_timeout_s = request_timeout_s
        self.rng = rng or random.Random()
        self._invoke_seconds: dict[str, Histogram] = {}  # method -> labelled histogram child

    # ------------------------------------------------------------------ entry point
    async def handle(self, method: str, payload: bytes, metadata, time_remaining: float | None) -> bytes:
        info = h.parse_metadata(metadata)
        model_id = self.resolve_model_id(method, payload, info)
        deadline = time.monotonic() + (
            time_remaining if time_remaining is not None else self.request_timeout_s
        )
        return await self._route(method, payload, model_id, info, deadline)

    def resolve_model_id(self, method: str, payload: bytes, info: h.RequestInfo) -> str:
        if info.model_id:
            return info.model_id
        vmodel_id = info.vmodel_id
        if vmodel_id is None:
            if method not in ID_FIELD_METHODS:
                raise InvalidRequest(f"request must include the {h.MODEL_ID} header")
            name = h.read_string_field(payload, 1)
            if not name:
                raise InvalidRequest(
                    f"request must include the {h.MODEL_ID} header or a model name in the request"
                )
            name = check_id(name, what="model_name")
            if self.view.vmodel(name) is None:
                return name
            vmodel_id = name
        vrec = self.view.vmodel(vmodel_id)
        if vrec is None or not vrec.active:
            raise ModelNotFound(vmodel_id, kind="vmodel")
        return vrec.active

    # ------------------------------------------------------------------ the loop
    async def _route(
        self, method: str, payload: bytes, model_id: str, info: h.RequestInfo, deadline: float
    ) -> bytes:
        exclude = set(info.exclude)
        hinted: list[str] = []
        last_used = info.last_used or now_ms()
        last_error: MeshError | None = None
        strong_checked = False
        for _ in range(MAX_ITERATIONS):
            entry = self.cache.get(model_id)
            if entry is not None and self.instance_id not in exclude:
                if entry.state is EntryState.ACTIVE:
                    entry.last_used = max(entry.last_used, last_used)
                    try:
                        return await self._invoke_local(entry, method, payload, info, deadline)
                    except ModelNotHere:
                        await self.loader.unload(model_id, reason="runtime no longer has it")
                        continue
                    except RuntimeUnavailable as exc:
                        exclude.add(self.instance_id)
                        last_error = exc
                        continue
                try:
                    await self.loader.ensure_local(model_id, last_used=last_used, exclusive=False)
                except LoadedElsewhere as exc:
                    hinted = exc.holders
                except (ModelLoadFailed, RuntimeUnavailable) as exc:
                    exclude.add(self.instance_id)
                    last_error = exc
                continue

            if info.internal == h.INTERNAL_HIT:
                raise ModelNotHere(model_id, self.instance_id)
            rec = self.view.model(model_id)
            if rec is None and not strong_checked:
                strong_checked = True
                rec = await self.loader.registry.get_strong(model_id)
            if rec is None:
                raise ModelNotFound(model_id)
            if method == MODEL_READY and not rec.loaded:
                return _NOT_READY

            if info.internal == h.INTERNAL_LOAD and not hinted:
                # Exclusive: a concurrent miss on another pod may have claimed it; then serve from there
                # (the hand-off is a hit-only hop, which is never forwarded again).
                try:
                    await self.loader.ensure_local(
                        model_id, last_used=last_used, exclusive=True, unreachable=frozenset(exclude)
                    )
                except LoadedElsewhere as exc:
                    hinted = exc.holders
                continue

            alive = self.view.instances()
            holders = [
                i
                for i in (*hinted, *rec.instances)
                if i != self.instance_id and i in alive and i not in exclude
            ]
            if holders and info.hop < self.max_hops:
                target = choose_copy(list(dict.fromkeys(holders)), rec.loaded, alive, self.rng)
                try:
                    self.metrics.requests_routed.labels("forward").inc()
                    return await self._forward(
                        target, method, payload, model_id, info, exclude, h.INTERNAL_HIT, last_used, deadline
                    )
                except (PeerUnavailable, RemoteError) as exc:
                    if not _retry_elsewhere(exc):
                        raise
                    exclude.add(target)
                    last_error = exc
                    continue

            now = now_ms()
            recent = rec.recent_failures(now, self.load_failure_expiry_ms)
            if len(recent) >= self.max_load_failures:
                raise ModelLoadFailed(model_id, _failure_summary(rec.failure_messages, recent))
            target = self.placer.pick(rec, exclude=exclude, now=now)
            if (
                target is None
                and self.instance_id not in exclude
                and self.instance_id not in recent
                and not alive
            ):
                target = self.instance_id  # our own record is not visible (etcd down at start): load here
            if target is None:
                if last_error is not None:
                    raise last_error
                if recent:
                    raise ModelLoadFailed(model_id, _failure_summary(rec.failure_messages, recent))
                raise NoPlacement(f"no pod can load model '{model_id}' (type {rec.type!r}): none eligible")
            if target == self.instance_id or info.hop >= self.max_hops:
                self.metrics.requests_routed.labels("load").inc()
                try:
                    await self.loader.ensure_local(
                        model_id, last_used=last_used, exclusive=True, unreachable=frozenset(exclude)
                    )
                except LoadedElsewhere as exc:
                    hinted = exc.holders
                except (ModelLoadFailed, RuntimeUnavailable) as exc:
                    exclude.add(self.instance_id)
                    last_error = exc
                continue
            self.view.reserve(target, rec.size or self.loader.default_size)
            try:
                self.metrics.requests_routed.labels("forward-load").inc()
                return await self._forward(
                    target, method, payload, model_id, info, exclude, h.INTERNAL_LOAD, last_used, deadline
                )
            except (PeerUnavailable, RemoteError) as exc:
                if not _retry_elsewhere(exc, load=True):
                    raise
                exclude.add(target)
                last_error = exc
        raise last_error or NoPlacement(f"could not route model '{model_id}' after {MAX_ITERATIONS} attempts")

    # ------------------------------------------------------------------ calls
    async def _invoke_local(
        self, entry, method: str, payload: bytes, info: h.RequestInfo, deadline: float
    ) -> bytes:
        link = self.runtime.link
        if link is None:
            raise RuntimeUnavailable("model runtime is restarting")
        hist = self._invoke_seconds.get(method)
        if hist is None:
            hist = self.metrics.invoke_model_seconds.labels(method.rsplit("/", 1)[-1])
            self._invoke_seconds[method] = hist
        self.stats.record(entry.model_id)
        entry.inflight += 1
        started = time.perf_counter()
        try:
            return await link.call(method, payload, entry.model_id, info.passthrough, _remaining(deadline))
        finally:
            entry.inflight -= 1
            hist.observe(time.perf_counter() - started)

    async def _forward(
        self,
        target: str,
        method: str,
        payload: bytes,
        model_id: str,
        info: h.RequestInfo,
        exclude: set[str],
        internal: str,
        last_used: int,
        deadline: float,
    ) -> bytes:
        address = self.view.address(target)
        if not address:
            raise PeerUnavailable(f"peer {target} has no address")
        md: list[tuple[str, str | bytes]] = list(info.passthrough)
        if model_id.isascii():
            md.append((h.MODEL_ID, model_id))
        else:
            md.append((h.MODEL_ID_BIN, model_id.encode("utf-8")))
        md.append((h.HOP, str(info.hop + 1)))
        md.append((h.INTERNAL, internal))
        md.append((h.LAST_USED, str(last_used)))
        # Only pods this request failed to use. Not this pod: a hit/load request is never forwarded again, and
        # a peer must still see this pod's own concurrent claim (or it would load a second copy).
        if exclude:
            md.append((h.EXCLUDE, ",".join(sorted(exclude))))
        return await self.peers.forward(address, method, payload, md, _remaining(deadline))


def _remaining(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


def _retry_elsewhere(exc: MeshError, *, load: bool = False) -> bool:
    if isinstance(exc, PeerUnavailable):
        return True
    if exc.grpc_code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        return True
    return load and exc.grpc_code == grpc.StatusCode.INTERNAL


def _failure_summary(messages: dict[str, str], recent: dict[str, int]) -> str:
    texts = list(dict.fromkeys(messages.get(i, "unknown error") for i in recent))
    return "; ".join(texts) if texts else "load failed"
