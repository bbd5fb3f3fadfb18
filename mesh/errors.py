"""The mesh's one exception hierarchy and the only mapping between exceptions and gRPC status codes.

Every error that can reach a client is a ``MeshError`` subclass carrying its ``grpc_code`` and whether a
retry (elsewhere, or later) may succeed. Handlers never pick status codes themselves: they raise, and
``to_status`` (used by the single wrapper in ``mesh.dataplane.server`` / ``mesh.api``) turns the exception
into a status. ``from_rpc_error`` does the reverse for errors coming back from runtimes and peers, so a
runtime's message survives the hop unchanged.
"""

from __future__ import annotations

import asyncio

import grpc


class MeshError(Exception):
    """Base of all mesh errors. Subclasses set ``grpc_code`` and ``retryable``."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(MeshError):
    """Bad input from the client: ids, headers, arguments, malformed payloads."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(MeshError):
    """The model (or vmodel) is not registered."""

    grpc_code = grpc.StatusCode.NOT_FOUND

    def __init__(self, model_id: str, *, kind: str = "model") -> None:
        super().__init__(f"{kind} '{model_id}' not found")
        self.model_id = model_id


class ModelNotHere(MeshError):
    """The model is not loaded on the pod/runtime that was asked; the caller should try another copy."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True

    def __init__(self, model_id: str, where: str) -> None:
        super().__init__(f"model '{model_id}' is not loaded on {where}")
        self.model_id = model_id


class ModelLoadFailed(MeshError):
    """Loading failed; the message carries the runtime's (or puller's) cause."""

    grpc_code = grpc.StatusCode.INTERNAL

    def __init__(self, model_id: str, cause: str) -> None:
        super().__init__(f"failed to load model '{model_id}': {cause}")
        self.model_id = model_id
        self.cause = cause


class ModelTooLarge(MeshError):
    """The model cannot fit even in an empty cache."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, model_id: str, size: int, capacity: int) -> None:
        super().__init__(f"model '{model_id}' needs {size} bytes but the cache capacity is {capacity} bytes")
        self.model_id = model_id


class CapacityExhausted(MeshError):
    """No room and nothing evictable right now (every entry is loading or in use)."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class NoPlacement(MeshError):
    """No pod can take the load (all excluded, failed there, shutting down or label mismatch)."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class RuntimeUnavailable(MeshError):
    """The local model runtime is down, restarting, or did not answer."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class PeerUnavailable(MeshError):
    """A peer pod could not be reached."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class KvUnavailable(MeshError):
    """etcd cannot be reached (or timed out). Management calls fail fast with this."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class KvConflict(MeshError):
    """A compare-and-swap kept losing to concurrent writers beyond the retry bound."""

    grpc_code = grpc.StatusCode.ABORTED
    retryable = True


class KvCompacted(MeshError):
    """A watch asked for a revision that etcd has compacted; the caller must re-list."""

    grpc_code = grpc.StatusCode.INTERNAL

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (compact revision {compact_revision})")
        self.compact_revision = compact_revision


class FailedPrecondition(MeshError):
    """The operation conflicts with current state (e.g. owner mismatch, model still referenced)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(MeshError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class Unimplemented(MeshError):
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class ShuttingDown(MeshError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class DeadlineExceeded(MeshError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


class RemoteError(MeshError):
    """An error status returned by a runtime or peer, kept with its original code and details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.grpc_code = code
        self.retryable = code in _RETRYABLE_CODES


_RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED}
)


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map any exception to the (code, details) sent to a client. The only such mapping."""
    if isinstance(exc, MeshError):
        return exc.grpc_code, exc.message
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code(), exc.details() or ""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED, "cancelled"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def from_rpc_error(exc: grpc.RpcError, *, where: str = "") -> MeshError:
    """Translate an error status from a runtime or peer into a MeshError, keeping code and details."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or str(code)
    if code in (grpc.StatusCode.UNAVAILABLE,) and where:
        return RuntimeUnavailable(f"{where} unavailable: {details}")
    return RemoteError(code, details)


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """Abort an RPC with the status for ``exc``. Raises (as grpc's abort does)."""
    code, details = to_status(exc)
    await context.abort(code, details)
