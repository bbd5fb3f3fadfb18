"""Router: the single decision point of the request path (DESIGN §3). Reads memory, awaits only calls.

For each request: read the model id (headers, else field 1 of the message), resolve a vModel to its active
model from the current ``ClusterView``, then loop over at most ``MAX_ATTEMPTS`` attempts:

* an ACTIVE local copy → touch it (one attribute store) and call the local runtime with the raw bytes;
* otherwise ask the cold path (``ColdPath.locate``, implemented by ``mesh.cluster.availability``) where to
  go: LOCAL (it loaded or waited for the copy here), FORWARD to a peer with ``mm-internal: hit`` (a copy is
  there) or ``load`` (placement chose it), or ABSENT (ModelReady of a model loaded nowhere: ready=false);
* a forward that fails with a retryable error (the peer unreachable, its runtime down, the model gone from
  it, its cache full, its load failed) excludes that pod for this request and the loop goes on; any other
  status (e.g. the runtime's INVALID_ARGUMENT for a bad tensor, gRPC's RESOURCE_EXHAUSTED for an oversized
  message) goes back to the client unchanged.

The router knows nothing of the loader, the registry or etcd: only the cache (to find a local copy), the
view (vModels), the runtime link, the peer client and the ``ColdPath`` protocol. Requests marked
``mm-internal`` are never forwarded twice, so they cannot loop.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.dataplane import headers as h
from mesh.dataplane.observe import RequestNote
from mesh.dataplane.peer_auth import PeerAuth
from mesh.dataplane.ports import ColdPath, Route, RouteKind
from mesh.dataplane.runtime_link import RuntimeLink
from mesh.errors import (
    DeadlineExceeded,
    InvalidRequest,
    MeshError,
    ModelLoadFailed,
    ModelNotFound,
    ModelNotHere,
    NoPlacement,
    PeerUnavailable,
    RuntimeUnavailable,
    timed_out,
    to_status,
)
from mesh.ids import check_id
from mesh.local.cache import CacheEntry, EntryState, LocalCache
from mesh.local.stats import RequestStats
from mesh.metrics import MeshMetrics
from mesh.peers import PeerClient
from mesh.tracing import TRACING
from protos.inference import grpc_predict_v2_pb2 as v2

if TYPE_CHECKING:
    from mesh.cluster.view import ClusterView

MAX_ATTEMPTS = 8
ID_FIELD_METHODS = frozenset(
    {
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ModelMetadata",
        "/inference.GRPCInferenceService/ModelReady",
    }
)
MODEL_READY = "/inference.GRPCInferenceService/ModelReady"
_NOT_READY = v2.ModelReadyResponse(ready=False).SerializeToString()


class Router:
    def __init__(
        self,
        *,
        instance_id: str,
        view: Callable[[], ClusterView],
        cache: LocalCache,
        cold: ColdPath,
        runtime: Callable[[], RuntimeLink | None],
        peers: PeerClient,
        peer_auth: PeerAuth,
        stats: RequestStats,
        metrics: MeshMetrics,
        request_timeout_s: float = 60.0,
        peer_hop_fraction: float = 0.75,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.view = view
        self.cache = cache
        self.cold = cold
        self.runtime = runtime
        self.peers = peers
        self.peer_auth = peer_auth
        self.stats = stats
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self.peer_hop_fraction = peer_hop_fraction
        self.clock = clock
        self.rng = rng or random.Random()
        routed = metrics.requests_routed
        self._routed = {kind: routed.labels(kind) for kind in ("forward", "forward-load", "load")}

    # ------------------------------------------------------------------ entry point
    async def handle(
        self,
        method: str,
        payload: bytes,
        metadata,
        time_remaining: float | None,
        note: RequestNote | None = None,
    ) -> bytes:
        """Route one request. ``note`` (when given) is filled with the model, vModel, whether a peer sent the
        request, and the route taken, for the transport's metrics, request log and span."""
        info = h.parse_metadata(metadata)
        self.peer_auth.check(info, self.clock)
        note = note if note is not None else RequestNote()
        note.internal = bool(info.internal)
        model_id, note.vmodel_id = self.resolve(method, payload, info)
        note.model_id = model_id
        deadline = self.clock.monotonic() + (
            time_remaining if time_remaining is not None else self.request_timeout_s
        )
        return await self._route(method, payload, model_id, info, deadline, note)

    def resolve_model_id(self, method: str, payload: bytes, info: h.RequestInfo) -> str:
        return self.resolve(method, payload, info)[0]

    def resolve(self, method: str, payload: bytes, info: h.RequestInfo) -> tuple[str, str]:
        """(concrete model id, vModel id or "") of a request."""
        if info.model_id:
            return info.model_id, ""
        view = self.view()
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
            if view.vmodel(name) is None:
                return name, ""
            vmodel_id = name
        vrec = view.vmodel(vmodel_id)
        if vrec is None or not vrec.active:
            raise ModelNotFound(vmodel_id, kind="vmodel")
        return vrec.active, vmodel_id

    # ------------------------------------------------------------------ the loop
    async def _route(
        self,
        method: str,
        payload: bytes,
        model_id: str,
        info: h.RequestInfo,
        deadline: float,
        note: RequestNote,
    ) -> bytes:
        me = self.instance_id
        exclude = set(info.exclude)
        last_used = info.last_used or self.clock.now_ms()
        last_error: MeshError | None = None
        for _ in range(MAX_ATTEMPTS):
            entry = self.cache.get(model_id)
            if entry is not None and entry.state is EntryState.ACTIVE and me not in exclude:
                if entry.last_used < last_used:
                    entry.last_used = last_used
                entry.hits += 1  # the cost-aware eviction policy's frequency
                if not note.route:
                    note.route = "hit"
                try:
                    return await self._invoke_local(entry, method, payload, info, deadline, note)
                except ModelNotHere:
                    await self.cold.forget_local(entry, "runtime no longer has it")
                    continue
                except RuntimeUnavailable as exc:
                    exclude.add(me)
                    last_error = exc
                    continue
            if self.clock.monotonic() >= deadline:
                raise last_error or DeadlineExceeded(f"deadline exceeded routing model '{model_id}'")
            route = await self.cold.locate(
                model_id,
                exclude=exclude,
                internal=info.internal,
                hop=info.hop,
                last_used=last_used,
                may_load=method != MODEL_READY,
            )
            if route.kind is RouteKind.LOCAL:
                self._routed["load"].inc()
                note.route = "load"
                continue
            if route.kind is RouteKind.ABSENT:
                note.route = "absent"
                return _NOT_READY
            load = route.internal == h.INTERNAL_LOAD
            note.route = "forward-load" if load else "forward"
            self._routed[note.route].inc()
            # A pod that holds the model gets part of the remaining time: if it never answers (a cut link
            # is silent until keepalive notices), the rest goes to another copy or a new load (issue 12).
            hop_deadline = deadline if load else self._hop_deadline(deadline)
            try:
                return await self._forward(
                    route, method, payload, model_id, info, exclude, last_used, hop_deadline
                )
            except MeshError as exc:
                if timed_out(exc) and self.clock.monotonic() < deadline:
                    exc = PeerUnavailable(
                        f"peer {route.peer} did not answer within its share of the deadline"
                    )
                if not _retry_elsewhere(exc, load=load):
                    raise
                exclude.add(route.peer)
                last_error = exc
        raise last_error or NoPlacement(f"could not route model '{model_id}' after {MAX_ATTEMPTS} attempts")

    # ------------------------------------------------------------------ calls
    async def _invoke_local(
        self,
        entry: CacheEntry,
        method: str,
        payload: bytes,
        info: h.RequestInfo,
        deadline: float,
        note: RequestNote,
    ) -> bytes:
        link = self.runtime()
        if link is None:
            raise RuntimeUnavailable("model runtime is restarting")
        self.stats.record(entry.model_id)
        entry.inflight += 1
        clock = self.clock
        started = clock.monotonic()
        code = "OK"
        try:
            return await link.call(
                method, payload, entry.model_id, info.passthrough, _remaining(clock, deadline)
            )
        except BaseException as exc:
            code = to_status(exc)[0].name
            raise
        finally:
            entry.inflight -= 1
            self.metrics.invoke(
                h.method_label(method),
                code,
                (clock.monotonic() - started) * 1000.0,
                entry.model_id,
                note.vmodel_id,
            )

    async def _forward(
        self,
        route: Route,
        method: str,
        payload: bytes,
        model_id: str,
        info: h.RequestInfo,
        exclude: set[str],
        last_used: int,
        deadline: float,
    ) -> bytes:
        if not route.address:
            raise PeerUnavailable(f"peer {route.peer} has no address")
        md: list[tuple[str, str | bytes]] = list(info.passthrough)
        if model_id.isascii():
            md.append((h.MODEL_ID, model_id))
        else:
            md.append((h.MODEL_ID_BIN, model_id.encode("utf-8")))
        md.append((h.HOP, str(info.hop + 1)))
        md.append((h.INTERNAL, route.internal))
        md.append((h.LAST_USED, str(last_used)))
        # Only pods this request failed to use. Not this pod: a hit/load request is never forwarded again, and
        # a peer must still see this pod's own concurrent claim (or it would load a second copy).
        if exclude:
            md.append((h.EXCLUDE, ",".join(sorted(exclude))))
        if not TRACING.enabled:
            return await self.peers.forward(
                route.peer, route.address, method, payload, md, _remaining(self.clock, deadline)
            )
        with TRACING.span(
            "mesh.forward", client=True, **{"mesh.peer": route.peer, "mesh.internal": route.internal}
        ):
            return await self.peers.forward(
                route.peer,
                route.address,
                method,
                payload,
                TRACING.outgoing(md),
                _remaining(self.clock, deadline),
            )

    def _hop_deadline(self, deadline: float) -> float:
        now = self.clock.monotonic()
        return now + max(0.0, deadline - now) * self.peer_hop_fraction


def _remaining(clock: Clock, deadline: float) -> float:
    return max(0.001, deadline - clock.monotonic())


def _retry_elsewhere(exc: MeshError, *, load: bool) -> bool:
    """Whether a failed forward should try another pod: the peer's error is about that pod (retryable:
    unreachable, runtime down, model not there, cache full, shutting down), or its load of the model failed.
    A RemoteError is the runtime's (or gRPC's) verdict on the request itself and would fail anywhere."""
    if exc.retryable:
        return True
    return load and isinstance(exc, ModelLoadFailed)
