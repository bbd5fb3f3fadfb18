"""The error boundary: one server interceptor through which every RPC of a pod (and of a runtime) leaves.

Handlers raise; they never pick status codes or call ``context.abort`` themselves. ``ErrorBoundary`` wraps
every handler the server resolves (inference, management, admin, health, the runtime SPI) so that any
exception becomes ``mesh.errors.to_status(exc)``, with the ``mm-error`` trailer that lets a peer rebuild the
error's class (``mesh.errors.from_rpc_error``). Client mistakes are logged at DEBUG (per-request noise),
server-side failures at WARNING, and exceptions that are not ``MeshError`` with their traceback, as bugs.

Wrapping costs one coroutine frame per call; wrapped handlers are cached per handler object (servers
resolve the same handler object for a method each time; the cache is bounded anyway).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from mesh.errors import CLIENT_CODES, MeshError, error_trailer, to_status
from mesh.redact import redact_text

_MAX_CACHED = 1024


async def abort_with(
    context: grpc.aio.ServicerContext, exc: BaseException, *, log: logging.Logger, what: str
):
    """Abort the RPC with the status for ``exc`` (and its ``mm-error`` trailer). Raises, as abort does."""
    code, details, trailer = status_of(exc)
    if not isinstance(exc, MeshError):
        log.error("%s failed unexpectedly: %s", what, details, exc_info=exc)
    elif code in CLIENT_CODES:
        log.debug("%s: %s %s", what, code.name, details)
    else:
        log.warning("%s: %s %s", what, code.name, details)
    await context.abort(code, details, trailing_metadata=trailer)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    """(code, redacted details, ``mm-error`` trailer) that ``exc`` leaves a server with. Redacted here
    (``mesh.redact``) because this is where messages leave a pod or a runtime and become model statuses and
    client errors: no URL password, header or key value gets past it."""
    code, details = to_status(exc)
    return code, redact_text(details), error_trailer(exc)


class ErrorBoundary(grpc.aio.ServerInterceptor):
    """Maps every exception leaving a handler to its status (see the module docstring)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("mesh.boundary")
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        cached = self._wrapped.get(id(handler))
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, handler_call_details.method)
        if len(self._wrapped) >= _MAX_CACHED:
            self._wrapped.clear()
        self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        log = self._log
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    return await inner(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await abort_with(context, exc, log=log, what=method)

            return handler._replace(unary_unary=unary_unary)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            if inspect.isasyncgenfunction(inner_stream):

                async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                    try:
                        async for item in inner_stream(request, context):
                            yield item
                    except grpc.aio.AbortError:
                        raise
                    except Exception as exc:
                        await abort_with(context, exc, log=log, what=method)

            else:  # writes with context.write() (e.g. grpc's health Watch)

                async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> None:
                    try:
                        await inner_stream(request, context)
                    except grpc.aio.AbortError:
                        raise
                    except Exception as exc:
                        await abort_with(context, exc, log=log, what=method)

            return handler._replace(unary_stream=unary_stream)
        return handler  # client-streaming methods: none are served
