"""RuntimeClient: this pod's client of the ``mmesh.ModelRuntime`` SPI (load, unload, sizes, status).

The one module of the mesh that speaks the runtime SPI. Errors from the runtime are translated by
``mesh.errors.from_rpc_error(..., Source.RUNTIME_SPI)``, so a load failure carries the runtime's own message
to the client that triggered it, and only a runtime that does not answer counts as unavailable.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import grpc

from mesh.channels import TlsFiles, aio_channel
from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelLoadFailed,
    ModelNotHere,
    RuntimeUnavailable,
    Source,
    from_rpc_error,
)
from protos.mmesh import model_runtime_pb2 as rt
from protos.mmesh import model_runtime_pb2_grpc as rt_grpc

log = logging.getLogger(__name__)

PREDICT_SIZE_TIMEOUT_S = 0.5
SIZING_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    capacity: int
    max_loading_concurrency: int
    load_timeout_ms: int
    default_model_size: int
    version: str
    method_infos: dict[str, tuple[int, ...]] = field(default_factory=dict)
    allow_any_method: bool = False


class RuntimeClient:
    def __init__(
        self,
        address: str,
        *,
        tls: TlsFiles | None = None,
        clock: Clock = SYSTEM_CLOCK,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        """``channel``: an already made channel (``mesh.inprocess.InProcessChannel`` for the in-process runtime)."""
        self.address = address
        self.clock = clock
        self._channel = channel if channel is not None else aio_channel(address, tls=tls)
        self._stub = rt_grpc.ModelRuntimeStub(self._channel)

    @property
    def channel(self) -> grpc.aio.Channel:
        """The SPI channel (its connectivity state tells whether the runtime is reachable)."""
        return self._channel

    async def close(self) -> None:
        await self._channel.close()

    async def status(self, timeout: float = 5.0) -> tuple[int, RuntimeInfo | None]:
        """One runtimeStatus call: (status enum value, info when READY)."""
        try:
            resp = await self._stub.runtimeStatus(rt.RuntimeStatusRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            err = from_rpc_error(exc, Source.RUNTIME_SPI, where=self.address)
            raise RuntimeUnavailable(f"runtime at {self.address} unavailable: {err.message}") from exc
        if resp.status != rt.RuntimeStatusResponse.READY:
            return resp.status, None
        info = RuntimeInfo(
            capacity=resp.capacityInBytes,
            max_loading_concurrency=max(1, resp.maxLoadingConcurrency),
            load_timeout_ms=max(100, resp.modelLoadingTimeoutMs or 90_000),
            default_model_size=max(1, resp.defaultModelSizeInBytes or 1_000_000),
            version=resp.runtimeVersion,
            method_infos={k: tuple(v.idInjectionPath) for k, v in resp.methodInfos.items()},
            allow_any_method=resp.allowAnyMethod,
        )
        return resp.status, info

    async def wait_ready(self, timeout_s: float, poll_s: float = 0.5) -> RuntimeInfo:
        """Poll runtimeStatus until READY (ModelMesh polls every 2 s for up to 180 s)."""
        deadline = self.clock.monotonic() + timeout_s
        last: Exception | None = None
        while self.clock.monotonic() < deadline:
            try:
                status, info = await self.status()
                if info is not None:
                    return info
                if status == rt.RuntimeStatusResponse.FAILING:
                    last = RuntimeUnavailable(f"runtime at {self.address} reports FAILING")
            except RuntimeUnavailable as exc:
                last = exc
            await asyncio.sleep(poll_s)
        raise RuntimeUnavailable(f"runtime at {self.address} not ready after {timeout_s:.0f}s: {last}")

    async def load(
        self,
        model_id: str,
        model_type: str,
        path: str,
        key: str,
        timeout_s: float,
        metadata: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
    ) -> int:
        """Load and return the runtime-reported size (0 = unknown). Raises ModelLoadFailed with the cause.
        ``metadata``: the trace headers of the load's span (``mesh.tracing``), so the runtime's pull joins it."""
        req = rt.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=path, modelKey=key)
        try:
            resp = await self._stub.loadModel(req, timeout=timeout_s, metadata=tuple(metadata) or None)
        except grpc.RpcError as exc:
            err = from_rpc_error(exc, Source.RUNTIME_SPI, where=self.address)
            if isinstance(err, RuntimeUnavailable):
                raise err from exc
            if isinstance(err, DeadlineExceeded):
                raise ModelLoadFailed(model_id, f"load timed out after {timeout_s:.0f}s") from exc
            prefix = f"failed to load model '{model_id}': "
            cause = err.remote_details or err.message
            raise ModelLoadFailed(model_id, cause.removeprefix(prefix)) from exc
        return resp.sizeInBytes

    async def unload(self, model_id: str, timeout_s: float = 60.0) -> None:
        """Idempotent: NOT_FOUND counts as success."""
        try:
            await self._stub.unloadModel(rt.UnloadModelRequest(modelId=model_id), timeout=timeout_s)
        except grpc.RpcError as exc:
            err = from_rpc_error(exc, Source.RUNTIME_SPI, where=self.address, model_id=model_id)
            if isinstance(err, ModelNotHere):
                return
            raise err from exc

    async def predict_size(self, model_id: str, model_type: str, path: str, key: str) -> int | None:
        req = rt.PredictModelSizeRequest(modelId=model_id, modelType=model_type, modelPath=path, modelKey=key)
        try:
            resp = await self._stub.predictModelSize(req, timeout=PREDICT_SIZE_TIMEOUT_S)
        except grpc.RpcError as exc:
            err = from_rpc_error(exc, Source.RUNTIME_SPI, where=self.address)
            if isinstance(err, InvalidRequest):
                raise err from exc
            return None
        return resp.sizeInBytes or None

    async def model_size(self, model_id: str) -> int | None:
        try:
            resp = await self._stub.modelSize(rt.ModelSizeRequest(modelId=model_id), timeout=SIZING_TIMEOUT_S)
        except grpc.RpcError as exc:
            if isinstance(from_rpc_error(exc, Source.RUNTIME_SPI, where=self.address), DeadlineExceeded):
                raise DeadlineExceeded("modelSize timed out") from exc
            return None
        return resp.sizeInBytes or None
