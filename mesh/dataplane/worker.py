"""A data-plane worker process: one of the N processes serving a pod's external port (issue 9, many cores).

Started and supervised by the pod process, the **owner** (``mesh.workers``), with
``python -m mesh.dataplane.worker --owner unix:<socket> --slot <i> --host H --port P ...``. It binds the pod's
port with SO_REUSEPORT and the same TLS settings as the owner, so the kernel gives it a share of the client
connections. It holds no etcd session, no cache and no cluster view of its own: only the routing table the
owner streams to it (``mesh.dataplane.local_table``).

For each call that reaches it:

* the pod's own services (``mmesh.ModelMesh``, admin, health, ``ServerLive/Ready/Metadata``, the refused V2
  repository methods) are passed to the owner (``mesh.dataplane.relay``): the answer is the owner's, unchanged;
* an inference request is read as the owner reads it (``headers.parse_metadata``; internal headers refused
  without the peer token, by the same ``PeerAuth``). If the model it names (header, or field 1, or a vModel's
  active model) is ACTIVE in the table and the runtime is up, the worker calls the runtime itself
  (``RuntimeLink``, the same id injection) and counts the request for its next report to the owner;
* anything else goes to the owner as bytes, with the client's metadata and deadline: a model loading, not
  here, unknown; a vModel it cannot resolve; a load or copy request from a peer; every error case (so error
  statuses are always the owner's). A runtime answer meaning "not here" (the owner evicted the model a moment
  ago) drops the model from the table and passes the request to the owner: it does not fail.

Until the first snapshot the worker does not bind the port; when the stream to the owner is lost (the owner is
restarting) it passes everything to the owner until it has followed again. Every ``REPORT_INTERVAL_S`` it
sends its usage (requests per model, newest last-used time) and, when it served anything, its metric totals.
SIGTERM: the server stops taking calls, in-flight calls finish within the grace, a last report goes out.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import grpc
from grpc_health.v1 import health_pb2

from mesh.boundary import ErrorBoundary
from mesh.channels import CLIENT_AUTH_MODES, SERVER_OPTIONS, TlsFiles, add_port, channel_options
from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.dataplane import headers as h
from mesh.dataplane.local_table import LocalTable, Usage
from mesh.dataplane.observe import RequestNote, RequestObserver
from mesh.dataplane.peer_auth import PeerAuth
from mesh.dataplane.relay import OwnerRelay
from mesh.dataplane.router import ID_FIELD_METHODS
from mesh.dataplane.runtime_link import RuntimeLink
from mesh.dataplane.server import LOCAL_METHODS, POD_SERVICE_PREFIXES, REFUSED_PREFIXES
from mesh.errors import MeshError, ModelNotHere, RuntimeUnavailable, to_status
from mesh.logs import configure_logging
from mesh.metrics import MeshMetrics
from mesh.metrics_merge import snapshot
from protos.meshadmin import admin_pb2
from protos.meshlocal import local_pb2 as pb
from protos.meshlocal import local_pb2_grpc as pb_grpc
from protos.mmesh import model_mesh_pb2

log = logging.getLogger("mesh.worker")

REPORT_INTERVAL_S = 0.1
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"


def _methods(*services) -> frozenset[str]:
    return frozenset(f"/{s.full_name}/{m.name}" for s in services for m in s.methods)


#: Method names of the pod's own services (bounded: their relay call objects may be kept).
POD_METHODS = _methods(
    model_mesh_pb2.DESCRIPTOR.services_by_name["ModelMesh"],
    admin_pb2.DESCRIPTOR.services_by_name["MeshAdmin"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
) | frozenset(LOCAL_METHODS)


class WorkerRouter:
    """Serves an inference request from this process when the table allows it, else passes it on."""

    def __init__(
        self,
        *,
        table: LocalTable,
        relay: OwnerRelay,
        metrics: MeshMetrics,
        max_message_bytes: int = 16 << 20,
        request_timeout_s: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.table = table
        self.relay = relay
        self.metrics = metrics
        self.clock = clock
        self.request_timeout_s = request_timeout_s
        self.max_message_bytes = max_message_bytes
        self.usage = Usage()
        self.link: RuntimeLink | None = None
        self.peer_auth: PeerAuth | None = None
        self._relayed = metrics.requests_routed.labels("worker-relay")
        self._closing: set[asyncio.Task[None]] = set()

    # -- table changes
    def follow_reset(self) -> None:
        token = self.table.peer_token
        self.peer_auth = PeerAuth(token) if token else None

    def runtime_changed(self) -> None:
        route = self.table.runtime
        old, self.link = self.link, None
        if route is not None:
            self.link = RuntimeLink(
                route.address,
                method_infos=dict(route.method_infos),
                allow_any_method=route.allow_any_method,
                max_message_bytes=self.max_message_bytes,
            )
        if old is not None:
            task = asyncio.get_running_loop().create_task(old.close(), name="worker:link-close")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @property
    def declared_methods(self) -> frozenset[str]:
        link = self.link
        return link.declared_methods if link is not None else frozenset()

    # -- requests
    async def handle(
        self, method: str, payload: bytes, context: grpc.aio.ServicerContext, note: RequestNote
    ) -> bytes:
        """Serve or pass on one request; ``note`` says what it was (for the worker's metrics and log line)."""
        table, peer_auth = self.table, self.peer_auth
        if not table.synced or peer_auth is None:
            return await self._pass_on(method, payload, context, note)
        info = h.parse_metadata(context.invocation_metadata())
        peer_auth.check(info, self.clock)
        note.internal = bool(info.internal)
        model_id = self._servable(method, payload, info)
        link = self.link
        if model_id is None or link is None:
            return await self._pass_on(method, payload, context, note)
        note.model_id = model_id
        remaining = context.time_remaining()
        timeout = remaining if remaining is not None else self.request_timeout_s
        try:
            response = await self._invoke(link, method, payload, model_id, info, timeout)
        except ModelNotHere:
            table.deactivate(model_id)  # evicted a moment ago: the owner knows where it is now
            return await self._pass_on(method, payload, context, note)
        except RuntimeUnavailable:
            return await self._pass_on(method, payload, context, note)
        note.route = "hit"
        self.usage.record(model_id, info.last_used or self.clock.now_ms())
        return response

    async def _invoke(self, link, method, payload, model_id, info, timeout) -> bytes:
        started = self.clock.monotonic()
        code = "OK"
        try:
            return await link.call(method, payload, model_id, info.passthrough, timeout)
        except BaseException as exc:
            code = to_status(exc)[0].name
            raise
        finally:
            self.metrics.invoke(h.method_label(method), code, (self.clock.monotonic() - started) * 1000.0)

    def _servable(self, method: str, payload: bytes, info: h.RequestInfo) -> str | None:
        """The model this worker can serve the request from, or None (then the owner decides everything:
        errors included, so their statuses are the owner's)."""
        table = self.table
        if info.internal and info.internal != h.INTERNAL_HIT:
            return None  # a load or copy asked by a peer: the owner's business
        if info.exclude and table.instance_id in info.exclude:
            return None
        model_id = info.model_id
        if model_id is None:
            vmodel_id = info.vmodel_id
            if vmodel_id is None:
                if method not in ID_FIELD_METHODS:
                    return None
                try:
                    name = h.read_string_field(payload, 1)
                except MeshError:
                    return None
                if not name:
                    return None
                if name not in table.vmodels:
                    return name if name in table.active else None
                vmodel_id = name
            model_id = table.vmodels.get(vmodel_id) or None
        return model_id if model_id is not None and model_id in table.active else None

    async def _pass_on(
        self, method: str, payload: bytes, context: grpc.aio.ServicerContext, note: RequestNote
    ) -> bytes:
        note.route = "worker-relay"
        self._relayed.inc()
        return await self.relay.unary(method, payload, context, cache=method in h.V2_METHODS)


class WorkerHandler(grpc.GenericRpcHandler):
    """Every method on the worker's port: the pod's services are passed on, inference goes to the router."""

    def __init__(
        self, router: WorkerRouter, relay: OwnerRelay, observer: RequestObserver, clock: Clock
    ) -> None:
        self.router = router
        self.relay = relay
        self.observer = observer
        self.clock = clock
        self.served = 0  # inference requests answered (for the reports: the metrics changed)
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is not None:
            return handler
        if method.startswith("/grpc.reflection."):
            return None  # as on the owner: not served
        if method == HEALTH_WATCH:
            handler = grpc.unary_stream_rpc_method_handler(
                self._watch(method), request_deserializer=None, response_serializer=None
            )
        elif method.startswith((*POD_SERVICE_PREFIXES, *REFUSED_PREFIXES)) or method in LOCAL_METHODS:
            handler = grpc.unary_unary_rpc_method_handler(
                self._pass_on(method), request_deserializer=None, response_serializer=None
            )
        else:
            handler = grpc.unary_unary_rpc_method_handler(
                self._routed(method), request_deserializer=None, response_serializer=None
            )
        if method in POD_METHODS or method in h.V2_METHODS or method in self.router.declared_methods:
            self._handlers[method] = handler  # never for client-chosen names
        return handler

    def _pass_on(self, method: str):
        relay = self.relay
        cache = method in POD_METHODS

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await relay.unary(method, request, context, cache=cache)

        return handle

    def _watch(self, method: str):
        relay = self.relay

        async def handle(request: bytes, context: grpc.aio.ServicerContext):
            async for item in relay.unary_stream(method, request, context):
                yield item

        return handle

    def _routed(self, method: str):
        """Inference: counted here, the ingress (the owner's local socket counts nothing), as on the owner."""
        router = self.router
        observer = self.observer
        short = h.method_label(method)
        clock = self.clock

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started = clock.monotonic()
            note = RequestNote()
            code = "OK"
            response = None
            try:
                response = await router.handle(method, request, context, note)
                return response
            except grpc.aio.AbortError:  # the owner's failure, passed on: label it with the owner's code
                code = _code_name(context)
                raise
            except BaseException as exc:
                code = to_status(exc)[0].name
                raise
            finally:
                size = len(response) if response is not None else -1
                observer.done("grpc", short, code, clock.monotonic() - started, len(request), size, note)
                self.served += 1  # after the observation: a report that sees this count carries it

        return handle


def _code_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    return code.name if code is not None else "UNKNOWN"


class Worker:
    """The process: follow the owner's table, serve the port, report usage; stop on SIGTERM."""

    def __init__(self, args: argparse.Namespace, clock: Clock = SYSTEM_CLOCK) -> None:
        self.args = args
        self.slot = args.slot
        self.pid = os.getpid()
        self.clock = clock
        self.metrics = MeshMetrics()
        self.table = LocalTable()
        self.relay = OwnerRelay(args.owner, max_message_bytes=args.max_message_bytes)
        self.router = WorkerRouter(
            table=self.table,
            relay=self.relay,
            metrics=self.metrics,
            max_message_bytes=args.max_message_bytes,
            request_timeout_s=args.request_timeout_s,
            clock=clock,
        )
        self.observer = RequestObserver(self.metrics, pod="", log_requests=args.log_requests)
        self.handler = WorkerHandler(self.router, self.relay, self.observer, clock)
        self._stub = pb_grpc.PodLocalStub(self.relay.channel)
        self._synced = asyncio.Event()
        self._reported_served = -1
        self.server: grpc.aio.Server | None = None

    async def follow(self) -> None:
        """Follow the owner's table for ever; between streams everything is passed to the owner."""
        backoff = 0.1
        while True:
            try:
                async for update in self._stub.Follow(pb.FollowRequest(worker=self.slot, pid=self.pid)):
                    runtime_changed = self.table.apply(update)
                    if update.reset:
                        self.router.follow_reset()
                        self.observer.pod = self.table.instance_id
                    if runtime_changed:
                        self.router.runtime_changed()
                    if update.synced and not self._synced.is_set():
                        log.info(
                            "worker %d: routing table synced (%d models)", self.slot, len(self.table.active)
                        )
                        self._synced.set()
                    backoff = 0.1
                log.warning("worker %d: the owner ended the table stream", self.slot)
            except grpc.aio.AioRpcError as exc:
                log.warning("worker %d: table stream lost: %s %s", self.slot, exc.code().name, exc.details())
            self.table.lost()
            await asyncio.sleep(backoff)
            backoff = min(1.0, backoff * 2)

    async def report_once(self, *, force: bool = False) -> None:
        usage = self.router.usage.take()
        served = self.handler.served
        metrics = snapshot(self.metrics.registry) if served != self._reported_served or force else []
        if not (usage or metrics or force):
            return
        try:
            await self._stub.Report(
                pb.UsageReport(worker=self.slot, pid=self.pid, usage=usage, metrics=metrics), timeout=2
            )
        except grpc.aio.AioRpcError as exc:
            self.router.usage.give_back(usage)
            log.debug("worker %d: report failed: %s", self.slot, exc.code().name)
            return
        if metrics:
            self._reported_served = served

    async def report(self) -> None:
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            await self.report_once()

    async def run(self, stop: asyncio.Event) -> None:
        args = self.args
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(self.follow(), name="worker:follow")]
        try:
            await self._synced.wait()
            self.server = grpc.aio.server(
                options=[
                    *channel_options(args.max_message_bytes),
                    *SERVER_OPTIONS,
                    ("grpc.so_reuseport", 1),
                ],
                interceptors=[ErrorBoundary(log)],
            )
            self.server.add_generic_rpc_handlers((self.handler,))
            tls = TlsFiles(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
            address = f"{args.host}:{args.port}"
            if not add_port(
                self.server, address, tls=tls if tls.cert else None, client_auth=args.tls_client_auth
            ):
                raise RuntimeError(f"worker {self.slot} could not bind {address}")
            await self.server.start()
            log.info("worker %d (pid %d) serving on %s", self.slot, self.pid, address)
            while True:  # the owner learns that this worker serves from its first report
                try:
                    await self._stub.Report(pb.UsageReport(worker=self.slot, pid=self.pid), timeout=2)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.2)
            reporter = loop.create_task(self.report(), name="worker:report")
            tasks.append(reporter)
            await stop.wait()
            log.info("worker %d stopping", self.slot)
            await self.server.stop(args.shutdown_grace_s)
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
            await self.report_once()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.server is not None:
                await self.server.stop(0)
            if self.router.link is not None:
                await self.router.link.close()
            await self.relay.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mesh.dataplane.worker", description=__doc__.splitlines()[0])
    p.add_argument("--owner", required=True, help="the owner's local socket (unix:/path)")
    p.add_argument("--slot", type=int, required=True, help="this worker's slot, 1..N-1")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-message-bytes", type=int, default=16 << 20)
    p.add_argument("--request-timeout-s", type=float, default=60.0)
    p.add_argument("--shutdown-grace-s", type=float, default=5.0)
    p.add_argument("--tls-cert", default="")
    p.add_argument("--tls-key", default="")
    p.add_argument("--tls-ca", default="")
    p.add_argument("--tls-client-auth", default="optional", choices=CLIENT_AUTH_MODES)
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-format", default="text", choices=("text", "json"))
    p.add_argument("--log-requests", action="store_true", help="one line per request (MM_LOG_REQUESTS)")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Worker(args).run(stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level, args.log_format, {"component": f"worker-{args.slot}"})
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
