"""gRPC plumbing shared by the runtime's servicers: handler construction.

Every handler the runtime serves (SPI and V2 inference) is built with ``unary_handler``, and the runtime's
server runs ``mesh.boundary.ErrorBoundary``, the same interceptor as a mesh pod's: handlers raise
``MeshError`` subclasses and never pick codes, and no method can bypass ``mesh.errors.to_status``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def unary_handler(
    fn: Handler,
    *,
    name: str,
    request_deserializer: Callable[[bytes], Any] | None = None,
    response_serializer: Callable[[Any], bytes] | None = None,
) -> grpc.RpcMethodHandler:
    """A unary-unary handler around ``fn``. ``None`` (de)serializers mean raw bytes in/out. ``name`` names
    the method in the boundary's logs."""
    del name  # the boundary logs the full method name it receives
    return grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=request_deserializer, response_serializer=response_serializer
    )
