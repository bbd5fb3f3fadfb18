"""The runtime adapter SPI: what ``server.py`` needs from a model server to implement mmesh.ModelRuntime.

An adapter owns the models loaded in one model server (in-process for the built-in runtime, a sidecar
for MLServer/Triton) and nothing else: it does not pull (``server.py`` calls the puller first and hands
over a local artifact), does not map errors to gRPC codes (it raises ``mesh.errors`` classes) and does not
decide timeouts (the server wraps ``load`` in the loading deadline and cancels it on expiry; an adapter
must then leave nothing registered).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from puller.pull import LocalArtifact


class AdapterState(enum.Enum):
    """Mirrors RuntimeStatusResponse.Status."""

    STARTING = 0
    READY = 1
    FAILING = 2


@dataclass(frozen=True, slots=True)
class AdapterStatus:
    state: AdapterState
    capacity_bytes: int
    """Bytes of model memory the mesh may fill (already net of the runtime's own buffer)."""
    runtime_version: str
    message: str = ""


class RuntimeAdapter(ABC):
    """One model server behind the SPI. All methods are called on the server's event loop."""

    @abstractmethod
    def supported_types(self) -> tuple[str, ...]:
        """Canonical model type names this adapter loads (e.g. ``("sklearn", "onnx")``)."""

    @abstractmethod
    def canonical_type(self, model_type: str) -> str:
        """Normalise a requested type (labels like ``mt:sklearn`` / ``sklearn:1``); raise
        ``errors.UnsupportedModelType`` for types this adapter cannot load. Must not do I/O."""

    @abstractmethod
    async def status(self) -> AdapterStatus:
        """Readiness and capacity of the model server."""

    @abstractmethod
    async def load(self, model_id: str, model_type: str, artifact: LocalArtifact, model_key: str) -> int:
        """Load the artifact under ``model_id`` and return its measured size in bytes (0 when unknown).
        ``model_type`` is canonical. Loading an id that is already loaded returns its size."""

    @abstractmethod
    async def unload(self, model_id: str) -> bool:
        """Unload; returns False when the model was not loaded (which is not an error)."""

    @abstractmethod
    def loaded_models(self) -> list[str]:
        """Ids currently loaded."""

    @abstractmethod
    def predict_size(self, model_type: str, disk_size_bytes: int | None) -> int:
        """Fast size prediction before loading (no I/O); ``disk_size_bytes`` None when unknown."""

    @abstractmethod
    def model_size(self, model_id: str) -> int:
        """Size of a loaded model; raises ``errors.ModelNotLoaded`` otherwise."""

    def method_infos(self) -> dict[str, list[int]]:
        """gRPC methods the mesh may route here, with the field path where it writes the model id."""
        return {}

    def serving_handlers(self) -> Sequence[grpc.GenericRpcHandler]:
        """Extra gRPC handlers (the inference API) served on the same port as the SPI."""
        return ()

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources at shutdown."""
