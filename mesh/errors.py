"""The mesh's one exception hierarchy, and the only mappings between exceptions and gRPC statuses.

Outbound: every error that can reach a client is a ``MeshError`` subclass carrying its ``grpc_code`` and
whether a retry (elsewhere, or later) may succeed. Handlers never pick status codes: they raise, and the one
error boundary (``mesh.boundary``, a server interceptor on every servicer of the pod and the runtimes) turns
the exception into a status with ``to_status``. The boundary also sends the error's class name in the
``mm-error`` trailer, so a pod that receives an error from a peer knows *what* failed without reading the
message text.

Inbound: ``from_rpc_error(exc, source)`` is the one translation of a failed gRPC call (to a peer, to the
local runtime's inference port, to the runtime's SPI, or to etcd) back into a ``MeshError``. Peers are
read by their typed trailer; runtimes and etcd by status code, plus the few message patterns that third-party
runtimes use to say "I don't have that model" (one table, ``_RUNTIME_UNKNOWN_MODEL``).
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Sequence

import grpc

#: Trailing-metadata key carrying the class name of a mesh error between pods.
ERROR_TRAILER = "mm-error"


class MeshError(Exception):
    """Base of all mesh errors. Subclasses set ``grpc_code`` and ``retryable``."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False
    #: For an error translated from a failed call (``from_rpc_error``): the other side's own message.
    remote_details: str = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @classmethod
    def from_wire(cls, code: grpc.StatusCode, details: str) -> MeshError:
        """Rebuild an error received from a peer (class from its trailer; the message as sent)."""
        exc = cls.__new__(cls)
        MeshError.__init__(exc, details)
        return exc


# ---------------------------------------------------------------------------------------------------------
# Client mistakes and lookups


class InvalidRequest(MeshError):
    """Bad input from the client: ids, headers, arguments, malformed payloads."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(MeshError):
    """The model (or vmodel) is not registered."""

    grpc_code = grpc.StatusCode.NOT_FOUND

    def __init__(self, model_id: str, *, kind: str = "model") -> None:
        super().__init__(f"{kind} '{model_id}' not found")
        self.model_id = model_id


class FailedPrecondition(MeshError):
    """The operation conflicts with current state (e.g. a model still referenced by a vmodel)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(MeshError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class Unimplemented(MeshError):
    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class PermissionDenied(MeshError):
    """The caller may not do this (e.g. internal metadata from a client that is not a peer)."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class DeadlineExceeded(MeshError):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


# ---------------------------------------------------------------------------------------------------------
# Where a model is, and loading it


class ModelNotHere(MeshError):
    """The model is not loaded on the pod/runtime that was asked; the caller should try another copy."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True

    def __init__(self, model_id: str, where: str) -> None:
        super().__init__(f"model '{model_id}' is not loaded on {where}")
        self.model_id = model_id


class LoadedElsewhere(MeshError):
    """A load claim lost to a concurrent claim by another pod (one load across the cluster): serve from
    ``holders`` instead. Internal to the cold path; never reaches a client."""

    grpc_code = grpc.StatusCode.ABORTED
    retryable = True

    def __init__(self, holders: Sequence[str]) -> None:
        super().__init__(f"already claimed by {list(holders)}")
        self.holders = list(holders)


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
    """No room and nothing evictable right now (every entry is loading or in use): another pod may have room."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class NoPlacement(MeshError):
    """No pod can take the load (all excluded, failed there, shutting down or label mismatch)."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class ShuttingDown(MeshError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


# ---------------------------------------------------------------------------------------------------------
# The parts a pod depends on


class RuntimeUnavailable(MeshError):
    """The local model runtime is down, restarting, or did not answer."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class PeerUnavailable(MeshError):
    """A peer pod could not be reached (connection refused or lost, no answer of its own)."""

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


class KvError(MeshError):
    """etcd rejected a request for a reason a retry will not fix (bad argument, auth, internal)."""


class LeaseNotFound(KvError):
    """The lease named in a put does not exist (it expired or was revoked)."""


class KvAuthExpired(KvError):
    """etcd refused this client's auth token (expired or revoked): authenticate again and retry once."""


class RemoteError(MeshError):
    """An error status returned by a runtime or a non-mesh server, kept with its original code and details.

    Not retried elsewhere by itself: a runtime's INVALID_ARGUMENT for a bad tensor, or gRPC's own
    RESOURCE_EXHAUSTED for an oversized message, would fail the same way on every copy."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.grpc_code = code

    @classmethod
    def from_wire(cls, code: grpc.StatusCode, details: str) -> MeshError:
        return cls(code, details)


def timed_out(exc: MeshError) -> bool:
    """Whether ``exc`` is a deadline running out (gRPC's DEADLINE_EXCEEDED, raised here or by the other side)."""
    return exc.grpc_code == grpc.StatusCode.DEADLINE_EXCEEDED


# ---------------------------------------------------------------------------------------------------------
# Outbound: exception -> status

#: Statuses that mean the caller's request was at fault (logged at DEBUG by the boundary, not as failures).
CLIENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.CANCELLED,
    }
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


#: gRPC status -> HTTP status for the REST listener (grpc-gateway's table; CANCELLED is 499, the client
#: closed the request). Documented in docs/operations.md "REST".
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def to_http(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, gRPC status name, details) for ``exc``: ``to_status`` then the one HTTP table."""
    code, details = to_status(exc)
    return HTTP_STATUS.get(code, 500), code.name, details


def error_trailer(exc: BaseException) -> tuple[tuple[str, str], ...]:
    """The ``mm-error`` trailer naming ``exc``'s class, for errors a peer can rebuild (else none)."""
    if not isinstance(exc, MeshError):
        return ()
    name = type(exc).__name__
    if name not in _WIRE_CLASSES:
        register_wire_errors()  # a subclass defined in a module imported after this one
    return ((ERROR_TRAILER, name),) if _WIRE_CLASSES.get(name) is type(exc) else ()


def _wire_classes() -> dict[str, type[MeshError]]:
    out: dict[str, type[MeshError]] = {}
    pending: list[type[MeshError]] = [MeshError]
    while pending:
        cls = pending.pop()
        out[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return out


_WIRE_CLASSES: dict[str, type[MeshError]] = {}


def register_wire_errors() -> None:
    """(Re)collect the MeshError subclasses peers may name in the trailer. Classes defined in other modules
    (puller, runtime adapters) join when those modules are imported; this runs once at import and again
    lazily on an unknown name."""
    _WIRE_CLASSES.clear()
    _WIRE_CLASSES.update(_wire_classes())


register_wire_errors()


# ---------------------------------------------------------------------------------------------------------
# Inbound: a failed gRPC call -> MeshError


class Source(enum.Enum):
    """Who answered the failed call; decides how its status is read."""

    PEER = "peer"  # another mesh pod (forward, remote load)
    RUNTIME = "runtime"  # the local runtime's inference port (V2 or any method it serves)
    RUNTIME_SPI = "runtime-spi"  # the local runtime's mmesh.ModelRuntime SPI
    ETCD = "etcd"


# How third-party runtimes say "I don't have that model" on inference: MLServer answers INVALID_ARGUMENT
# "Model X not found", Triton UNAVAILABLE "Request for unknown model". NOT_FOUND always means it.
_RUNTIME_UNKNOWN_MODEL = re.compile(r"(model .*not (found|loaded))|(unknown model)", re.IGNORECASE)

# etcd: codes meaning "not reachable now"; UNKNOWN covers "Stream removed" when the server goes away.
_ETCD_UNAVAILABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
    }
)


def _status_of(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    return code, details


def _trailer_class(exc: grpc.RpcError) -> type[MeshError] | None:
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == ERROR_TRAILER:
            name = value.decode() if isinstance(value, bytes) else value
            cls = _WIRE_CLASSES.get(name)
            if cls is None:
                register_wire_errors()
                cls = _WIRE_CLASSES.get(name)
            return cls
    return None


def from_rpc_error(exc: grpc.RpcError, source: Source, *, where: str = "", model_id: str = "") -> MeshError:
    """Translate a failed call to ``source`` (at ``where``, about ``model_id``) into a MeshError.

    - PEER: the peer's typed ``mm-error`` trailer rebuilds its error class with its message. Without a
      trailer the peer never answered itself: UNAVAILABLE is PeerUnavailable (connection refused or lost), so
      is CANCELLED (the peer's server stopped under the call);
      anything else (gRPC's own RESOURCE_EXHAUSTED for an oversized message, a deadline) keeps its code.
    - RUNTIME (inference): "no such model" answers are ModelNotHere, UNAVAILABLE is RuntimeUnavailable, the
      rest (the runtime's own verdict on the request) passes through unchanged as RemoteError.
    - RUNTIME_SPI: UNAVAILABLE is RuntimeUnavailable, DEADLINE_EXCEEDED DeadlineExceeded, INVALID_ARGUMENT
      InvalidRequest (the runtime refused the arguments), NOT_FOUND ModelNotHere; the rest keeps its code.
    - ETCD: transport-class codes are KvUnavailable, "lease not found" LeaseNotFound, a compacted revision
      KvCompacted, the rest KvError.

    The other side's own message stays available as ``remote_details``.
    """
    err = _translate_rpc_error(exc, source, where, model_id)
    err.remote_details = _status_of(exc)[1]
    return err


def _translate_rpc_error(exc: grpc.RpcError, source: Source, where: str, model_id: str) -> MeshError:
    code, details = _status_of(exc)
    shown = details or code.name
    if source is Source.PEER:
        cls = _trailer_class(exc)
        if cls is not None:
            return cls.from_wire(code, details)
        if code == grpc.StatusCode.UNAVAILABLE:
            return PeerUnavailable(f"peer {where} unreachable: {shown}")
        if code == grpc.StatusCode.CANCELLED:
            # Our own cancellation arrives as asyncio.CancelledError, never as a status: this one came from the
            # peer's side (its server stopping under the call), so the request may go to another copy.
            return PeerUnavailable(f"peer {where} cancelled the call (stopping?): {shown}")
        return RemoteError(code, details or f"peer {where}: {code.name}")
    if source is Source.RUNTIME:
        if code == grpc.StatusCode.NOT_FOUND or (
            code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE)
            and _RUNTIME_UNKNOWN_MODEL.search(details)
        ):
            return ModelNotHere(model_id, f"runtime {where}")
        if code == grpc.StatusCode.UNAVAILABLE:
            return RuntimeUnavailable(f"model runtime {where} unavailable: {shown}")
        return RemoteError(code, details)
    if source is Source.RUNTIME_SPI:
        if code == grpc.StatusCode.UNAVAILABLE:
            return RuntimeUnavailable(f"runtime {where} unavailable: {shown}")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"runtime {where}: {shown}")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidRequest(shown)
        if code == grpc.StatusCode.NOT_FOUND:
            return ModelNotHere(model_id, f"runtime {where}")
        return RemoteError(code, details or code.name)
    # ETCD
    what = f"etcd {where}" if where else "etcd"
    if code in _ETCD_UNAVAILABLE:
        return KvUnavailable(f"{what}: {code.name}: {details}")
    if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
        return LeaseNotFound(f"{what}: {details}")
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
        return KvCompacted(0)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return KvAuthExpired(f"{what}: {details}")
    return KvError(f"{what}: {code.name}: {details}")
