"""The pod's external gRPC server: V2 inference (raw bytes, through the Router), management, admin, health.

Inference methods are served by one generic handler with raw-bytes (de)serializers, so the payload is never
decoded here (deps.md §6). ServerLive/ServerReady/ServerMetadata are answered by the mesh itself; the V2
repository extension is refused (models are managed through mmesh.ModelMesh). Handlers raise; the pod's
error boundary (``mesh.boundary``) turns exceptions into statuses.

Method names come from clients, so nothing here grows with them: handlers are cached only for the V2
methods and the methods the runtime declares; any other name gets a fresh handler (when the runtime accepts
any method) and the metric label ``other``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.dataplane.headers import V2_METHODS, V2_SERVICE, method_label
from mesh.dataplane.router import Router
from mesh.errors import Unimplemented, to_status
from mesh.metrics import MeshMetrics
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
        metrics: MeshMetrics,
        ready: Callable[[], bool],
        version: str,
        known_methods: Callable[[], Collection[str]] = frozenset,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.router = router
        self.metrics = metrics
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
        hist = self.metrics.api_request_seconds
        short = method_label(method)
        ok = hist.labels(short, "OK")  # labelled child looked up once, not per request
        clock = self.clock

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started = clock.monotonic()
            child = ok
            try:
                return await router.handle(
                    method, request, context.invocation_metadata(), context.time_remaining()
                )
            except Exception as exc:
                child = hist.labels(short, to_status(exc)[0].name)
                raise
            finally:
                child.observe(clock.monotonic() - started)

        return handle

    def _local_handler(self, method: str):
        name = method.rsplit("/", 1)[-1]

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if name == "ServerLive":
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
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
