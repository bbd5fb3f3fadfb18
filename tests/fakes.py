"""Test doubles that keep every wire real: a clock the test advances, and a model runtime served over gRPC.

- ``FakeClock`` implements ``mesh.clock.Clock``. Time moves only when the test calls ``advance``, so rules
  that depend on time (idle copies, failure expiry, continuous use) are tested without waiting.
- ``FakeRuntime`` is an in-process ``grpc.aio`` server on a loopback port speaking the real
  ``mmesh.ModelRuntime`` SPI (runtimeStatus, loadModel, unloadModel, predictModelSize, modelSize) and the V2
  inference methods a mesh routes to a runtime (ModelInfer, ModelReady, ModelMetadata). A pod or a
  ``RuntimeClient`` talks to it exactly as to a real runtime; nothing is mocked. It holds no model: a "loaded"
  model is a name and a size. ModelInfer answers a response whose ``model_name`` is the model it served and
  whose ``model_version`` is the runtime's name, so a test sees which model and which pod served a request.

  Per model or per model type (``behave``) the test sets the load delay, the size reported by the load, the
  size predicted before it, a load failure (message), a load that hangs until ``release``d, and an error
  status for inference. The runtime records what it was asked: ``loads`` (loadModel calls per model),
  ``peak_concurrent_loads``, ``unloads`` (in order), ``served`` (inference per model), ``infer_metadata``
  (the headers of the last 100 inference calls), ``purges``.
  ``crash()`` stops serving at once (loaded models are lost, as with a dead process) and ``restart()``
  serves again on the same port.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from dataclasses import dataclass

import grpc

from protos.inference import grpc_predict_v2_pb2 as v2
from protos.mmesh import model_runtime_pb2 as rt

SPI_SERVICE = "mmesh.ModelRuntime"
V2_SERVICE = "inference.GRPCInferenceService"
ID_INJECTED_METHODS = ("ModelInfer", "ModelReady", "ModelMetadata")


class FakeClock:
    """A ``mesh.clock.Clock`` that moves only when told. Starts at the real wall-clock time (so records it
    stamps look ordinary) and an arbitrary monotonic origin."""

    def __init__(self, start_ms: int | None = None, start_monotonic: float = 1_000.0) -> None:
        self._now_ms = int(time.time() * 1000) if start_ms is None else start_ms
        self._monotonic = start_monotonic

    def now_ms(self) -> int:
        return self._now_ms

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now_ms += round(seconds * 1000)
        self._monotonic += seconds


@dataclass(frozen=True)
class Behaviour:
    """How the fake runtime treats one model (or every model of one type)."""

    load_delay_s: float = 0.0
    size: int | None = (
        None  # reported by loadModel (None: the runtime's default; 0: "unknown", ask modelSize)
    )
    measured_size: int | None = None  # what modelSize answers when loadModel reported 0
    predicted_size: int = 0  # predictModelSize (0: "unknown")
    fail: str | None = None  # loadModel fails with INTERNAL and this message
    hang: bool = False  # loadModel waits until release(model_id) (or the runtime crashes)
    infer_code: grpc.StatusCode | None = None  # ModelInfer answers this status...
    infer_details: str = ""  # ...with this message


class FakeRuntime:
    def __init__(
        self,
        *,
        name: str = "fake-runtime",
        capacity: int = 1_000_000,
        default_model_size: int = 20_000,
        model_size: int = 20_000,
        load_timeout_ms: int = 10_000,
        max_loading_concurrency: int = 2,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.default_model_size = default_model_size
        self.model_size = model_size
        self.load_timeout_ms = load_timeout_ms
        self.max_loading_concurrency = max_loading_concurrency
        self.host = host
        self.port = port
        self._server: grpc.aio.Server | None = None
        self._by_model: dict[str, Behaviour] = {}
        self._by_type: dict[str, Behaviour] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self._generation = 0
        self._active_loads = 0
        # what the runtime holds and what it was asked
        self.loaded: dict[str, int] = {}  # model id -> size
        self.loads: collections.Counter[str] = collections.Counter()
        self.load_requests: list[rt.LoadModelRequest] = []
        self.peak_concurrent_loads = 0
        self.unloads: list[str] = []
        self.served: collections.Counter[str] = collections.Counter()
        self.infer_metadata: collections.deque[dict[str, str | bytes]] = collections.deque(maxlen=100)
        self.purges = 0

    # ------------------------------------------------------------------ configuration
    def behave(self, model_id: str | None = None, *, model_type: str | None = None, **kwargs) -> None:
        """Set the behaviour of one model id, or of every model of ``model_type`` (a model's own wins)."""
        if (model_id is None) == (model_type is None):
            raise ValueError("name exactly one of model_id or model_type")
        target = self._by_model if model_id is not None else self._by_type
        key = model_id if model_id is not None else model_type
        assert key is not None
        target[key] = dataclasses.replace(target.get(key, Behaviour()), **kwargs)

    def behaviour(self, model_id: str, model_type: str = "") -> Behaviour:
        return self._by_model.get(model_id) or self._by_type.get(model_type) or Behaviour()

    def release(self, model_id: str) -> None:
        """Let a hanging load of ``model_id`` finish (now and from now on)."""
        self.behave(model_id, hang=False)
        self._gate(model_id).set()

    def forget(self, model_id: str) -> None:
        """Drop a loaded model behind the mesh's back (the runtime lost it)."""
        self.loaded.pop(model_id, None)

    @property
    def total_loads(self) -> int:
        return sum(self.loads.values())

    # ------------------------------------------------------------------ lifecycle
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self) -> FakeRuntime:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((self._spi_handler(), self._v2_handler()))
        port = server.add_insecure_port(f"{self.host}:{self.port}")
        if not port:
            raise RuntimeError(f"fake runtime could not bind {self.host}:{self.port}")
        self.port = port
        await server.start()
        self._server = server
        return self

    async def crash(self) -> None:
        """Stop serving at once, as a killed process would: calls in flight fail, loaded models are gone."""
        server, self._server = self._server, None
        self.loaded.clear()
        self._generation += 1
        for gate in self._gates.values():
            gate.set()  # hanging loads end (their callers already saw the connection drop)
        if server is not None:
            await server.stop(grace=None)

    async def restart(self) -> None:
        """Serve again on the same port, holding nothing (a fresh process)."""
        if self._server is not None:
            return
        self._gates.clear()
        await self.start()

    async def stop(self) -> None:
        await self.crash()

    async def __aenter__(self) -> FakeRuntime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ SPI
    def _spi_handler(self) -> grpc.GenericRpcHandler:
        def unary(fn, req, resp):
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )

        return grpc.method_handlers_generic_handler(
            SPI_SERVICE,
            {
                "runtimeStatus": unary(
                    self._runtime_status, rt.RuntimeStatusRequest, rt.RuntimeStatusResponse
                ),
                "loadModel": unary(self._load, rt.LoadModelRequest, rt.LoadModelResponse),
                "unloadModel": unary(self._unload, rt.UnloadModelRequest, rt.UnloadModelResponse),
                "predictModelSize": unary(
                    self._predict, rt.PredictModelSizeRequest, rt.PredictModelSizeResponse
                ),
                "modelSize": unary(self._size, rt.ModelSizeRequest, rt.ModelSizeResponse),
            },
        )

    async def _runtime_status(self, request, context) -> rt.RuntimeStatusResponse:
        # as the real runtimes do: a (re)connecting mesh starts from an empty runtime
        if self.loaded:
            self.purges += 1
            self.loaded.clear()
        self._generation += 1
        return rt.RuntimeStatusResponse(
            status=rt.RuntimeStatusResponse.READY,
            capacityInBytes=self.capacity,
            maxLoadingConcurrency=self.max_loading_concurrency,
            modelLoadingTimeoutMs=self.load_timeout_ms,
            defaultModelSizeInBytes=self.default_model_size,
            runtimeVersion=f"fake-{self.name}",
            methodInfos={
                f"{V2_SERVICE}/{m}": rt.RuntimeStatusResponse.MethodInfo(idInjectionPath=[1])
                for m in ID_INJECTED_METHODS
            },
        )

    def _gate(self, model_id: str) -> asyncio.Event:
        gate = self._gates.get(model_id)
        if gate is None:
            gate = self._gates[model_id] = asyncio.Event()
        return gate

    async def _load(self, request: rt.LoadModelRequest, context) -> rt.LoadModelResponse:
        model_id = request.modelId
        self.loads[model_id] += 1
        self.load_requests.append(request)
        behaviour = self.behaviour(model_id, request.modelType)
        generation = self._generation
        self._active_loads += 1
        self.peak_concurrent_loads = max(self.peak_concurrent_loads, self._active_loads)
        try:
            if behaviour.hang:
                await self._gate(model_id).wait()
                behaviour = self.behaviour(model_id, request.modelType)
            if behaviour.load_delay_s:
                await asyncio.sleep(behaviour.load_delay_s)
        finally:
            self._active_loads -= 1
        if generation != self._generation:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "runtime was reset during the load")
        if behaviour.fail is not None:
            await context.abort(grpc.StatusCode.INTERNAL, behaviour.fail)
        size = self.model_size if behaviour.size is None else behaviour.size
        self.loaded[model_id] = size or behaviour.measured_size or self.model_size
        return rt.LoadModelResponse(sizeInBytes=size)

    async def _unload(self, request: rt.UnloadModelRequest, context) -> rt.UnloadModelResponse:
        self.unloads.append(request.modelId)
        self.loaded.pop(request.modelId, None)
        return rt.UnloadModelResponse()

    async def _predict(self, request: rt.PredictModelSizeRequest, context) -> rt.PredictModelSizeResponse:
        return rt.PredictModelSizeResponse(
            sizeInBytes=self.behaviour(request.modelId, request.modelType).predicted_size
        )

    async def _size(self, request: rt.ModelSizeRequest, context) -> rt.ModelSizeResponse:
        return rt.ModelSizeResponse(sizeInBytes=self.loaded.get(request.modelId, 0))

    # ------------------------------------------------------------------ V2 inference
    def _v2_handler(self) -> grpc.GenericRpcHandler:
        def unary(fn, req, resp):
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=req.FromString, response_serializer=resp.SerializeToString
            )

        return grpc.method_handlers_generic_handler(
            V2_SERVICE,
            {
                "ModelInfer": unary(self._infer, v2.ModelInferRequest, v2.ModelInferResponse),
                "ModelReady": unary(self._ready, v2.ModelReadyRequest, v2.ModelReadyResponse),
                "ModelMetadata": unary(self._metadata, v2.ModelMetadataRequest, v2.ModelMetadataResponse),
            },
        )

    async def _loaded_or_abort(self, model_id: str, context) -> None:
        if model_id not in self.loaded:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model '{model_id}' is not loaded")

    async def _infer(self, request: v2.ModelInferRequest, context) -> v2.ModelInferResponse:
        model_id = request.model_name  # the mesh injects the concrete id here (idInjectionPath [1])
        self.infer_metadata.append(dict(context.invocation_metadata()))
        await self._loaded_or_abort(model_id, context)
        behaviour = self._by_model.get(model_id, Behaviour())
        if behaviour.infer_code is not None:
            await context.abort(behaviour.infer_code, behaviour.infer_details or behaviour.infer_code.name)
        self.served[model_id] += 1
        return v2.ModelInferResponse(model_name=model_id, model_version=self.name, id=request.id)

    async def _ready(self, request: v2.ModelReadyRequest, context) -> v2.ModelReadyResponse:
        return v2.ModelReadyResponse(ready=request.name in self.loaded)

    async def _metadata(self, request: v2.ModelMetadataRequest, context) -> v2.ModelMetadataResponse:
        await self._loaded_or_abort(request.name, context)
        return v2.ModelMetadataResponse(name=request.name, platform="fake", versions=[self.name])


class RecordingLoadHooks:
    """``mesh.local.loader.LoadHooks`` without etcd: records each call as a tuple, in order.

    ``lose_to``: an exclusive claim raises LoadedElsewhere naming these pods (a concurrent claim won).
    ``unregistered``: models whose ``loaded`` write finds the record gone (ModelNotFound)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.lose_to: list[str] = []
        self.unregistered: set[str] = set()

    async def claim(self, model_id: str, *, exclusive: bool, unreachable: frozenset[str]) -> None:
        from mesh.errors import LoadedElsewhere

        self.calls.append(("claim", model_id))
        if exclusive and self.lose_to:
            raise LoadedElsewhere(self.lose_to)

    async def loaded(self, model_id: str, *, last_used: int, size: int) -> None:
        from mesh.errors import ModelNotFound

        self.calls.append(("loaded", model_id, size))
        if model_id in self.unregistered:
            raise ModelNotFound(model_id)

    async def failed(self, model_id: str, cause: str) -> None:
        self.calls.append(("failed", model_id, cause))

    async def released(self, model_id: str, *, last_used: int) -> None:
        self.calls.append(("released", model_id))

    def of(self, kind: str) -> list[str]:
        """The model ids of every call of one kind, in order."""
        return [c[1] for c in self.calls if c[0] == kind]
