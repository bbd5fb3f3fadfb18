"""Client of the KServe V2 repository extension (RepositoryIndex/ModelLoad/ModelUnload) and the process meter.

Owns the one place where the MLServer and Triton adapters talk to their model server's control plane over
gRPC (``inference.GRPCInferenceService``, our own protos in ``protos/inference``: both servers expose the
three repository RPCs there), and how that server's answers map to ``mesh.errors``:

- transport failures (connection refused, server restarting) -> ``RuntimeUnavailable`` (UNAVAILABLE,
  retryable);
- "this model is not there" on unload (MLServer: NOT_FOUND "Model x not found"; Triton: UNAVAILABLE/
  INVALID_ARGUMENT naming an unknown model) -> ``False`` from ``unload``, since unloading is idempotent;
- any other load failure -> ``ModelLoadFailed`` carrying the server's own message;
- MLServer reports index states as ``"State.READY"`` (``str()`` of a Python enum); ``normalise_state``
  turns every spelling into ``READY``/``UNAVAILABLE``/....

``ProcessTreeMeter`` samples the resident memory of a model server's whole process tree (psutil) and, when
a CUDA device is visible and ``nvidia-smi`` exists, the device memory its processes hold; adapters take a
sample before and after each (serialised) load and report the delta as the model's size.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import psutil

from mesh.errors import DeadlineExceeded, ModelLoadFailed, RuntimeUnavailable
from protos.inference import grpc_predict_v2_pb2 as v2
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc

log = logging.getLogger("runtime_adapters.v2_repository")

_NOT_THERE = re.compile(r"(model .*not (found|loaded))|(unknown model)|(not found)", re.IGNORECASE)
_TRANSPORT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})


def normalise_state(state: str) -> str:
    """``"State.READY"`` (MLServer) / ``"READY"`` (Triton) / ``"ready"`` -> ``"READY"``."""
    return state.rsplit(".", 1)[-1].strip().upper()


def _is_not_there(exc: grpc.aio.AioRpcError) -> bool:
    code = exc.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return True
    return code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE) and bool(
        _NOT_THERE.search(exc.details() or "")
    )


class V2RepositoryClient:
    """Async client of one model server's V2 control plane (readiness, metadata, repository RPCs)."""

    def __init__(self, address: str, *, max_message_bytes: int = 16 << 20) -> None:
        self.address = address
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # Reconnect fast after a model-server restart (the default backoff reaches 120 s).
                ("grpc.initial_reconnect_backoff_ms", 100),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._stub = v2_grpc.GRPCInferenceServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def ready(self, timeout: float = 2.0) -> bool:
        """ServerReady; False on any error (not reachable, not ready)."""
        try:
            resp = await self._stub.ServerReady(v2.ServerReadyRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.ready)

    async def version(self, timeout: float = 2.0) -> str:
        """``name-version`` from ServerMetadata (e.g. ``mlserver-1.7.1``); "" when unavailable."""
        try:
            resp = await self._stub.ServerMetadata(v2.ServerMetadataRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return ""
        return f"{resp.name}-{resp.version}".strip("-")

    async def load(self, model_id: str, name: str, *, timeout: float | None) -> None:
        """RepositoryModelLoad(name); returns when the server reports the model loaded."""
        try:
            await self._stub.RepositoryModelLoad(
                v2.RepositoryModelLoadRequest(model_name=name), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise self._load_error(model_id, exc) from exc

    def _load_error(self, model_id: str, exc: grpc.aio.AioRpcError) -> Exception:
        code, details = exc.code(), (exc.details() or "").strip()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"model server {self.address} did not finish loading '{model_id}'")
        if code in _TRANSPORT and not _is_not_there(exc):
            return RuntimeUnavailable(f"model server {self.address} unavailable while loading: {details}")
        return ModelLoadFailed(model_id, f"model server refused the load ({code.name}): {details}")

    async def unload(self, name: str, *, timeout: float | None = 30.0) -> bool:
        """RepositoryModelUnload(name); False when the server did not have it."""
        try:
            await self._stub.RepositoryModelUnload(
                v2.RepositoryModelUnloadRequest(model_name=name), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            if _is_not_there(exc):
                return False
            if exc.code() in _TRANSPORT:
                raise RuntimeUnavailable(f"model server {self.address} unavailable: {exc.details()}") from exc
            raise ModelLoadFailed(name, f"unload failed ({exc.code().name}): {exc.details()}") from exc
        return True

    async def index(self, *, timeout: float = 5.0) -> dict[str, str]:
        """RepositoryIndex as {name: normalised state}."""
        try:
            resp = await self._stub.RepositoryIndex(v2.RepositoryIndexRequest(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise RuntimeUnavailable(f"model server {self.address} unavailable: {exc.details()}") from exc
        return {m.name: normalise_state(m.state) for m in resp.models}


# -- memory of the model server -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemorySample:
    rss: int
    """Resident bytes of the whole process tree."""
    device: int | None
    """Device (GPU) bytes held by the tree's processes; None when not measurable."""


class ProcessTreeMeter:
    """Samples a model server's memory. ``pid`` returns the server's current PID (it changes on restart),
    or None when it is not known (then nothing is measured)."""

    def __init__(self, pid: Callable[[], int | None], *, gpu: bool | None = None) -> None:
        self._pid = pid
        self._nvidia_smi = shutil.which("nvidia-smi") if (gpu is None and cuda_visible()) or gpu else None

    @property
    def measures_device(self) -> bool:
        return self._nvidia_smi is not None

    def sample(self) -> MemorySample | None:
        """Blocking (run it in an executor). None when the server process is gone."""
        pid = self._pid()
        if pid is None:
            return None
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        rss = 0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                rss += proc.memory_info().rss
        device = self._device_bytes({p.pid for p in procs}) if self._nvidia_smi else None
        return MemorySample(rss, device)

    def _device_bytes(self, pids: set[int]) -> int | None:
        assert self._nvidia_smi is not None
        try:
            out = subprocess.run(
                [self._nvidia_smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("nvidia-smi failed, device memory not measured: %s", exc)
            return None
        total = 0
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit() and int(parts[0]) in pids:
                total += int(parts[1]) << 20  # MiB
        return total


def cuda_visible() -> bool:
    """A CUDA device may be visible to the model server (``CUDA_VISIBLE_DEVICES`` not empty/-1)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    return value is None or value.strip() not in ("", "-1")


def delta(before: MemorySample | None, after: MemorySample | None) -> tuple[int | None, int | None]:
    """(rss delta, device delta) between two samples; None for what was not measured on both sides."""
    if before is None or after is None:
        return None, None
    device = None
    if before.device is not None and after.device is not None:
        device = after.device - before.device
    return after.rss - before.rss, device
