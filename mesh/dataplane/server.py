"""The pod's external gRPC server: V2 inference (raw bytes, through the Router), management, admin, health.

Inference methods are served by one generic handler with raw-bytes (de)serializers, so the payload is never
decoded here (deps.md §6). ServerLive/ServerReady/ServerMetadata are answered by the mesh itself; the V2
repository extension is refused (models are managed through mmesh.ModelMesh). Handlers raise; the pod's
error boundary (``mesh.boundary``) turns exceptions into statuses.

Method names come from clients, so nothing here grows with them: handlers are cached only for the V2
methods and the methods the runtime declares; any other name gets a fresh handler (when the runtime accepts
any method) and the metric label ``other``.

After each request the ``RequestObserver`` records metrics and the optional request log line
(``mesh.dataplane.observe``). With tracing on (``mesh.tracing``) the handler is built with a ``mesh.route`` span
around the router and the trace headers rewritten to name it; with tracing off the untraced handler is used and
tracing costs nothing per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.dataplane.headers import V2_METHODS, V2_SERVICE, method_label
from mesh.dataplane.observe import RequestNote, RequestObserver, trace_id_of
from mesh.dataplane.router import Router
from mesh.errors import Unimplemented, to_status
from mesh.tracing import TRACING
from protos.inference import grpc_predict_v2_pb2 as v2

log = logging.getLogger(__name__)

#: Services of the pod itself (generated servicers on the same server; a data-plane worker passes them on).
POD_SERVICE_PREFIXES = ("/mmesh.ModelMesh/", "/meshadmin.", "/grpc.health.", "/grpc.reflection.")
#: V2 methods the pod answers itself, and those it refuses.
LOCAL_METHODS = {
    f"/{V2_SERVICE}/ServerLive",
    f"/{V2_SERVICE}/ServerReady",
    f"/{V2_SERVICE}/ServerMetadata",
}
REFUSED_PREFIXES = (f"/{V2_SERVICE}/Repository", "/mmesh.ModelRuntime/", "/inference.model_repository.")


class InferenceHandler(grpc.GenericRpcHandler):
    """Routes every unary inference method through the Router, bytes in and bytes out."""

    def __init__(
        self,
        router: Router,
        observer: RequestObserver,
        ready: Callable[[], bool],
        version: str,
        known_methods: Callable[[], Collection[str]] = frozenset,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.router = router
        self.observer = observer
        self.ready = ready
        self.version = version
        self.known_methods = known_methods  # the methods the runtime declares (methodInfos)
        self.clock = clock
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is not None:
            return handler
        if method.startswith(POD_SERVICE_PREFIXES):
            return None
        if method in LOCAL_METHODS:
            fn = self._local_handler(method)
        elif method.startswith(REFUSED_PREFIXES):
            fn = self._refuse(method)
        else:
            fn = self._raw_handler(method)
        handler = grpc.unary_unary_rpc_method_handler(fn, request_deserializer=None, response_serializer=None)
        if method in V2_METHODS or method in self.known_methods():
            self._handlers[method] = handler
        return handler

    def _raw_handler(self, method: str):
        router = self.router
        observer = self.observer
        short = method_label(method)
        clock = self.clock

        async def route(
            request: bytes, context: grpc.aio.ServicerContext, metadata, note: RequestNote
        ) -> bytes:
            """Route one request and report it to the observer (metrics, request log), traced or not."""
            started = clock.monotonic()
            response = None
            try:
                response = await router.handle(method, request, metadata, context.time_remaining(), note)
                return response
            except BaseException as exc:
                note.code = to_status(exc)[0].name
                raise
            finally:
                size = len(response) if response is not None else -1
                observer.done("grpc", short, note.code, clock.monotonic() - started, len(request), size, note)

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            note = RequestNote()
            metadata = context.invocation_metadata()
            if observer.log_requests:
                note.trace_id = trace_id_of(metadata)
            return await route(request, context, metadata, note)

        if not TRACING.enabled:
            return handle

        async def traced(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            note = RequestNote()
            incoming = context.invocation_metadata()
            with TRACING.server_span("mesh.route", incoming, **{"rpc.method": short}) as (span, metadata):
                note.trace_id = format(span.get_span_context().trace_id, "032x")
                try:
                    return await route(request, context, metadata, note)
                finally:
                    span.set_attribute("mesh.model_id", note.model_id)
                    if note.vmodel_id:
                        span.set_attribute("mesh.vmodel_id", note.vmodel_id)
                    span.set_attribute("mesh.route", note.route or "none")
                    span.set_attribute("mesh.internal", note.internal)
                    TRACING.set_status(span, note.code)

        return traced

    def _local_handler(self, method: str):
        name = method.rsplit("/", 1)[-1]

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if name == "ServerLive":  # answered by the event loop itself: see mesh.health (liveness)
                return v2.ServerLiveResponse(live=True).SerializeToString()
            if name == "ServerReady":
                return v2.ServerReadyResponse(ready=self.ready()).SerializeToString()
            return v2.ServerMetadataResponse(name="modelmesh-py", version=self.version).SerializeToString()

        return handle

    def _refuse(self, method: str):
        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            raise Unimplemented(f"{method} is not available through the mesh; use mmesh.ModelMesh")

        return handle


def add_health(server: grpc.aio.Server) -> health.aio.HealthServicer:
    """The ``grpc.health.v1`` servicer; ``mesh.health.PodHealth`` decides what it answers."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer
