"""InProcessChannel: the runtime's gRPC handlers called directly, in this process, through a channel-shaped API.

The optional in-process runtime mode (``MM_RUNTIME_INPROCESS``, docs/runtimes.md) runs the built-in runtime
inside the pod process: no second process, no second gRPC hop, no SPI round trips over loopback. The pod's
``RuntimeClient`` (SPI) and ``RuntimeLink`` (inference) take this object where they would take a
``grpc.aio.Channel``: ``unary_unary(method, serializers)`` returns an async callable with the same
signature, which resolves the method on the runtime's own generic handlers (exactly the handlers its gRPC
server would serve) and awaits the handler. Raw-bytes methods stay raw bytes: an inference payload is passed
on as the same ``bytes`` object, never copied.

Errors keep their gRPC shape: an exception from a handler becomes a ``grpc.aio.AioRpcError`` with the status
and ``mm-error`` trailer the error boundary would have sent (``mesh.boundary.status_of``), so callers translate
it with ``mesh.errors.from_rpc_error`` as for any runtime. A timeout is the call's deadline
(DEADLINE_EXCEEDED).

What the mode gives up (and why it is optional): the runtime's crashes, hangs, memory and GIL are the pod's;
a model that segfaults takes the pod down with it, and heavy inference competes with routing for the pod's
CPU (the built-in runtime runs predictions on its own thread pool, so the event loop stays free).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc.aio import AioRpcError, Metadata

from mesh.boundary import status_of
from mesh.clock import SYSTEM_CLOCK
from mesh.errors import DeadlineExceeded, Unimplemented


class _Context:
    """The part of ``grpc.aio.ServicerContext`` the runtime handlers use."""

    __slots__ = ("_deadline", "_metadata", "_trailing")

    def __init__(self, metadata: Sequence[tuple[str, str | bytes]], deadline: float | None) -> None:
        self._metadata = tuple(metadata)
        self._deadline = deadline
        self._trailing: tuple = ()

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - SYSTEM_CLOCK.monotonic())

    def set_trailing_metadata(self, trailing: tuple) -> None:
        self._trailing = tuple(trailing)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: tuple = ()) -> None:
        raise AioRpcError(code, Metadata(), Metadata(*trailing_metadata), details=details)


class _UnaryUnary:
    __slots__ = ("_channel", "_deserializer", "_handler", "_method", "_serializer")

    def __init__(self, channel: InProcessChannel, method: str, serializer, deserializer) -> None:
        self._channel = channel
        self._method = method
        self._serializer = serializer
        self._deserializer = deserializer
        self._handler: grpc.RpcMethodHandler | None = None

    async def __call__(
        self,
        request: Any,
        *,
        metadata: Sequence[tuple[str, str | bytes]] | None = None,
        timeout: float | None = None,
        **_: Any,
    ) -> Any:
        context = _Context(
            metadata or (), SYSTEM_CLOCK.monotonic() + timeout if timeout is not None else None
        )
        try:
            handler = self._handler
            if handler is None:
                handler = self._handler = self._channel.resolve(self._method, metadata or ())
            payload = self._serializer(request) if self._serializer is not None else request
            if handler.request_deserializer is not None:
                payload = handler.request_deserializer(payload)
            if timeout is None:
                response = await handler.unary_unary(payload, context)
            else:
                async with asyncio.timeout(timeout):
                    response = await handler.unary_unary(payload, context)
        except AioRpcError:
            raise
        except TimeoutError as exc:
            code, details, trailer = status_of(DeadlineExceeded("Deadline Exceeded"))
            raise AioRpcError(code, Metadata(), Metadata(*trailer), details=details) from exc
        except Exception as exc:
            code, details, trailer = status_of(exc)
            raise AioRpcError(code, Metadata(), Metadata(*trailer), details=details) from exc
        if handler.response_serializer is not None:
            response = handler.response_serializer(response)
        return self._deserializer(response) if self._deserializer is not None else response


class InProcessChannel:
    """A ``grpc.aio.Channel`` stand-in over ``handlers`` (generic RPC handlers of a server in this process)."""

    def __init__(
        self, handlers: Sequence[grpc.GenericRpcHandler], *, on_close: Callable[[], Any] | None = None
    ):
        self._handlers = tuple(handlers)
        self._on_close = on_close

    def resolve(self, method: str, metadata: Sequence[tuple[str, str | bytes]]) -> grpc.RpcMethodHandler:
        details = _CallDetails(method, tuple(metadata))
        for generic in self._handlers:
            handler = generic.service(details)
            if handler is not None:
                if handler.unary_unary is None:
                    raise Unimplemented(f"{method} is not a unary method of the in-process runtime")
                return handler
        raise Unimplemented(f"Method not found: {method}")

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **_: Any,
    ) -> _UnaryUnary:
        return _UnaryUnary(self, method, request_serializer, response_deserializer)

    async def close(self, grace: float | None = None) -> None:
        if self._on_close is not None:
            result = self._on_close()
            if asyncio.iscoroutine(result):
                await result
            self._on_close = None

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY

    async def channel_ready(self) -> None:
        return None


class _CallDetails(grpc.HandlerCallDetails):
    __slots__ = ("invocation_metadata", "method")

    def __init__(self, method: str, invocation_metadata: tuple) -> None:
        self.method = method
        self.invocation_metadata = invocation_metadata
