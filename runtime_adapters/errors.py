"""Runtime-side errors: ``mesh.errors`` subclasses with the wording runtimes owe the mesh.

The mesh reads these over the SPI and the V2 data plane by status code alone, so the codes matter:
NOT_FOUND from inference makes the mesh drop its copy and retry elsewhere (modelmesh.md §1.3), and
INVALID_ARGUMENT from ``loadModel`` tells it that no load was attempted (modelmesh.md §1.2).
"""

from __future__ import annotations

from collections.abc import Iterable

from mesh.errors import DeadlineExceeded, InvalidRequest, ModelNotFound


class ModelNotLoaded(ModelNotFound):
    """The model is not loaded in this runtime (NOT_FOUND, so the mesh purges its stale copy)."""

    def __init__(self, model_id: str) -> None:
        super().__init__(model_id)
        self.message = f"model '{model_id}' is not loaded"
        self.args = (self.message,)


class UnsupportedModelType(InvalidRequest):
    """The model type is not one this runtime serves; raised before anything is pulled or loaded."""

    def __init__(self, *, model_type: str, supported: Iterable[str]) -> None:
        names = ", ".join(sorted(supported))
        shown = model_type if model_type else "(empty)"
        super().__init__(f"unsupported model type '{shown}': this runtime serves {names}")
        self.model_type = model_type


class LoadTimedOut(DeadlineExceeded):
    """Pull plus load took longer than the runtime's loading timeout; the partial load was dropped."""

    def __init__(self, *, model_id: str, timeout_ms: int) -> None:
        super().__init__(f"loading model '{model_id}' timed out after {timeout_ms} ms")
        self.model_id = model_id
        self.timeout_ms = timeout_ms
