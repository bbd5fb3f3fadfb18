"""The ``mmesh.ModelRuntime`` servicer: the one place in the runtime that speaks the SPI proto.

loadModel = ``puller.pull`` then ``adapter.load`` under the loading deadline, one operation per model at a
time (a second load of the same id waits and then returns the first one's size; an unload waits for a
load in flight), and at most ``loading_concurrency`` loads at once. A failed, timed-out or cancelled load
leaves nothing behind: the adapter registers nothing and the pulled files are removed. unloadModel is
idempotent (an unknown model is success). predictModelSize never downloads: it sizes local paths on disk
(inside the puller's local roots only) and uses the default size for anything remote. runtimeStatus purges
every loaded model first, because the mesh calls it only when it (re)starts and a fresh mesh must find an
empty runtime (modelmesh.md §1.2).

Every request is bounded first (``limits``: id, type, path and key lengths → INVALID_ARGUMENT naming the
field). Error mapping happens in the server's ``mesh.boundary.ErrorBoundary`` (which also redacts every
message, ``mesh.redact``); this module raises ``mesh.errors`` classes and lets the puller's own ``MeshError``
subclasses (whose messages name the cause) pass through unchanged. No storage failure is UNAVAILABLE: over
the SPI that code means "this runtime is down" (``puller.errors.StorageUnavailable`` is FAILED_PRECONDITION).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from mesh.boundary import ErrorBoundary
from mesh.errors import MeshError, ModelLoadFailed
from mesh.ids import check_id
from mesh.tracing import TRACING
from protos.mmesh import model_runtime_pb2 as pb
from puller.confine import Root, resolve_beneath
from puller.errors import PullError
from runtime_adapters.base import RuntimeAdapter
from runtime_adapters.errors import LoadTimedOut, UnsupportedModelType
from runtime_adapters.limits import check_field_sizes
from runtime_adapters.rpc import unary_handler
from runtime_adapters.settings import RuntimeSettings
from runtime_adapters.sizing import disk_size

if TYPE_CHECKING:
    from puller.pull import Puller

log = logging.getLogger("runtime_adapters.server")

SERVICE = "mmesh.ModelRuntime"
PREDICT_SIZE_BUDGET_S = 0.3  # the mesh gives predictModelSize 500 ms in all


def type_from_model_key(model_key: str) -> str:
    """The ``model_type`` of a ModelMesh model key (``{"model_type": {"name": "sklearn"}}`` or a plain
    string), or "" when absent or unparsable (the puller reports invalid keys)."""
    if not model_key.strip():
        return ""
    try:
        key = json.loads(model_key)
    except (ValueError, RecursionError):
        return ""
    mtype = key.get("model_type") if isinstance(key, dict) else None
    if isinstance(mtype, dict):
        mtype = mtype.get("name")
    return mtype if isinstance(mtype, str) else ""


class KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class ModelRuntimeServicer:
    def __init__(
        self,
        adapter: RuntimeAdapter,
        puller: Puller,
        settings: RuntimeSettings,
        *,
        local_roots: Sequence[Path] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.adapter = adapter
        self.puller = puller
        self.settings = settings
        self.local_roots = tuple(Path(r).resolve() for r in local_roots)
        self.clock = clock
        self._locks = KeyedLocks()
        self._load_slots = asyncio.Semaphore(settings.loading_concurrency)
        self._generation = 0  # bumped by every purge; loads started before a purge are discarded
        self._sizing_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rt-sizing")

    def generic_handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[Callable, Any, Any]] = {
            "loadModel": (self.load_model, pb.LoadModelRequest, pb.LoadModelResponse),
            "unloadModel": (self.unload_model, pb.UnloadModelRequest, pb.UnloadModelResponse),
            "predictModelSize": (
                self.predict_model_size,
                pb.PredictModelSizeRequest,
                pb.PredictModelSizeResponse,
            ),
            "modelSize": (self.model_size, pb.ModelSizeRequest, pb.ModelSizeResponse),
            "runtimeStatus": (self.runtime_status, pb.RuntimeStatusRequest, pb.RuntimeStatusResponse),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: unary_handler(
                    fn,
                    name=f"{SERVICE}/{name}",
                    request_deserializer=req.FromString,
                    response_serializer=resp.SerializeToString,
                )
                for name, (fn, req, resp) in methods.items()
            },
        )

    def close(self) -> None:
        self._sizing_pool.shutdown(wait=False, cancel_futures=True)

    # -- loadModel / unloadModel ------------------------------------------------------------------------

    def _model_type(self, request: pb.LoadModelRequest | pb.PredictModelSizeRequest) -> str:
        return self.adapter.canonical_type(request.modelType or type_from_model_key(request.modelKey))

    async def load_model(self, request: pb.LoadModelRequest, context: Any) -> pb.LoadModelResponse:
        if TRACING.enabled:  # a child of the pod's mesh.load span (its traceparent came with the call)
            with TRACING.server_span(
                "runtime.loadModel", context.invocation_metadata(), **{"mesh.model_id": request.modelId}
            ):
                return await self._load_model(request)
        return await self._load_model(request)

    async def _load_model(self, request: pb.LoadModelRequest) -> pb.LoadModelResponse:
        model_id = check_id(request.modelId)
        check_field_sizes(request)
        model_type = self._model_type(request)  # INVALID_ARGUMENT before anything is pulled
        timeout_ms = self.settings.load_timeout_ms
        async with self._locks.hold(model_id):
            if model_id in self.adapter.loaded_models():
                size = self.adapter.model_size(model_id)
            else:
                generation = self._generation
                async with self._load_slots:
                    try:
                        size = await asyncio.wait_for(
                            self._pull_and_load(model_id, model_type, request), timeout_ms / 1000
                        )
                    except TimeoutError:
                        await self._discard(model_id)
                        raise LoadTimedOut(model_id=model_id, timeout_ms=timeout_ms) from None
                    except BaseException:
                        await asyncio.shield(self._discard(model_id))
                        raise
                if generation != self._generation:
                    await self._discard(model_id)
                    raise ModelLoadFailed(model_id, "the runtime was reset (runtimeStatus) during the load")
        return pb.LoadModelResponse(sizeInBytes=size, maxConcurrency=self.settings.limit_model_concurrency)

    async def _pull_and_load(self, model_id: str, model_type: str, request: pb.LoadModelRequest) -> int:
        started = self.clock()
        if TRACING.enabled:
            with TRACING.span(
                "runtime.pull", **{"mesh.model_id": model_id, "mesh.model_type": model_type}
            ) as span:
                artifact = await self.puller.pull(model_id, request.modelPath, request.modelKey, model_type)
                span.set_attribute("mesh.disk_bytes", artifact.disk_size_bytes)
        else:
            artifact = await self.puller.pull(model_id, request.modelPath, request.modelKey, model_type)
        pulled = self.clock()
        log.debug("pulled %s to %s (%d bytes)", model_id, artifact.path, artifact.disk_size_bytes)
        size = await self.adapter.load(model_id, model_type, artifact, request.modelKey)
        done = self.clock()
        log.info(
            "loadModel %s done in %.1f ms (pull %.1f ms, load %.1f ms)",
            model_id, (done - started) * 1000, (pulled - started) * 1000, (done - pulled) * 1000,
        )  # fmt: skip
        return size

    async def _discard(self, model_id: str) -> None:
        """Drop whatever a failed or purged load left: the adapter's entry and the pulled files."""
        try:
            await self.adapter.unload(model_id)
        except Exception:
            log.exception("unloading %s after a failed load", model_id)
        await self._remove_files(model_id)

    async def _remove_files(self, model_id: str) -> None:
        try:
            await self.puller.remove(model_id)
        except (MeshError, OSError) as exc:
            # Memory is what the mesh accounts for; a leftover directory is logged, not fatal.
            log.warning("could not remove the files of model %s: %s", model_id, exc)

    async def unload_model(self, request: pb.UnloadModelRequest, context: Any) -> pb.UnloadModelResponse:
        model_id = check_id(request.modelId)
        async with self._locks.hold(model_id):
            await self.adapter.unload(model_id)
            await self._remove_files(model_id)
        return pb.UnloadModelResponse()

    # -- sizes ------------------------------------------------------------------------------------------

    async def predict_model_size(
        self, request: pb.PredictModelSizeRequest, context: Any
    ) -> pb.PredictModelSizeResponse:
        check_field_sizes(request)
        try:
            model_type = self._model_type(request)
        except UnsupportedModelType:
            return pb.PredictModelSizeResponse(sizeInBytes=0)
        disk: int | None = None
        found = self._local_path(request.modelPath, request.modelKey)
        if found is not None:
            loop = asyncio.get_running_loop()
            try:
                disk = await asyncio.wait_for(
                    loop.run_in_executor(self._sizing_pool, disk_size, *found), PREDICT_SIZE_BUDGET_S
                )
            except TimeoutError:
                disk = None
        if disk is None:
            # Unknown (remote or missing artifact): 0 tells the mesh to use its own default size, which the
            # operator may have configured differently from this runtime's.
            return pb.PredictModelSizeResponse(sizeInBytes=0)
        return pb.PredictModelSizeResponse(sizeInBytes=self.adapter.predict_size(model_type, disk))

    def _local_path(self, model_path: str, model_key: str) -> tuple[Path, Root] | None:
        """The local file a model path names and its root, when it is local and inside a local root (links
        resolved with ``puller.confine``, never followed outside); else None. Never raises."""
        if not model_path or not self.local_roots or '"storage_key"' in model_key:
            return None
        if model_path.startswith("file://"):
            model_path = model_path[len("file://") :]
        elif "://" in model_path:
            return None
        for root_path in self.local_roots:
            root = Root.of(root_path)
            try:
                real = resolve_beneath(root, model_path)
                if real.exists():
                    return real, root
            except (PullError, OSError, ValueError):
                continue
        return None

    async def model_size(self, request: pb.ModelSizeRequest, context: Any) -> pb.ModelSizeResponse:
        return pb.ModelSizeResponse(sizeInBytes=self.adapter.model_size(check_id(request.modelId)))

    # -- runtimeStatus ----------------------------------------------------------------------------------

    async def runtime_status(
        self, request: pb.RuntimeStatusRequest, context: Any
    ) -> pb.RuntimeStatusResponse:
        await self.purge()
        status = await self.adapter.status()
        settings = self.settings
        return pb.RuntimeStatusResponse(
            status=status.state.value,
            capacityInBytes=status.capacity_bytes,
            maxLoadingConcurrency=settings.loading_concurrency,
            modelLoadingTimeoutMs=settings.load_timeout_ms,
            defaultModelSizeInBytes=settings.default_model_size,
            runtimeVersion=status.runtime_version,
            limitModelConcurrency=settings.limit_model_concurrency > 0,
            methodInfos={
                method: pb.RuntimeStatusResponse.MethodInfo(idInjectionPath=path)
                for method, path in self.adapter.method_infos().items()
            },
        )

    async def purge(self) -> list[str]:
        """Unload every model (a new mesh must start from an empty runtime). Loads in flight finish and
        are then discarded through the generation check."""
        self._generation += 1
        purged = self.adapter.loaded_models()
        for model_id in purged:
            async with self._locks.hold(model_id):
                await self.adapter.unload(model_id)
                await self._remove_files(model_id)
        if purged:
            log.info("runtimeStatus purged %d loaded model(s)", len(purged))
        return purged


async def start_server(
    settings: RuntimeSettings, servicer: ModelRuntimeServicer, adapter: RuntimeAdapter
) -> tuple[grpc.aio.Server, int]:
    """Build and start the gRPC server with the SPI and the adapter's serving handlers on one port.
    Returns the server and the bound TCP port."""
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(
        options=options, interceptors=[ErrorBoundary(logging.getLogger("runtime_adapters.rpc"))]
    )
    if settings.tracing != "off" and not TRACING.enabled:
        TRACING.configure(settings.tracing, service="modelmesh-runtime", endpoint=settings.tracing_endpoint)
    server.add_generic_rpc_handlers((servicer.generic_handler(), *adapter.serving_handlers()))
    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert and settings.tls_key:
        creds = grpc.ssl_server_credentials([(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())])
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if settings.socket_path:
        server.add_insecure_port(f"unix:{settings.socket_path}")
    await server.start()
    return server, port
