"""gRPC plumbing shared by the runtime's servicers: the one wrapper that maps exceptions to statuses.

Every handler the runtime serves (SPI and V2 inference) is built with ``unary_handler``, so no method can
bypass ``mesh.errors.to_status``: handlers raise ``MeshError`` subclasses and never pick codes. Client
errors are logged at DEBUG (per-request noise), server-side failures at WARNING, and exceptions that are
not ``MeshError`` with their traceback, since they are bugs. Every status message and log line passes
through ``puller.redact`` first: this is where runtime messages leave the process (and become the model
statuses the mesh records), so no URL password, header or key value gets past it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from mesh.errors import MeshError, to_status
from puller.redact import redact_text

log = logging.getLogger("runtime_adapters.rpc")

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]

_CLIENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


def unary_handler(
    fn: Handler,
    *,
    name: str,
    request_deserializer: Callable[[bytes], Any] | None = None,
    response_serializer: Callable[[Any], bytes] | None = None,
) -> grpc.RpcMethodHandler:
    """A unary-unary handler around ``fn`` with the error mapping applied. ``None`` (de)serializers
    mean raw bytes in/out."""

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, details = to_status(exc)
            details = redact_text(details)
            if not isinstance(exc, MeshError):
                # a bug: the traceback helps; the processes' RedactingFilter scrubs it (install_log_redaction)
                log.exception("%s failed unexpectedly: %s", name, details)
            elif code in _CLIENT_CODES:
                log.debug("%s: %s %s", name, code.name, details)
            else:
                log.warning("%s: %s %s", name, code.name, details)
            await context.abort(code, details)

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=request_deserializer, response_serializer=response_serializer
    )
