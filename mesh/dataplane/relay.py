"""OwnerRelay: a data-plane worker passes a call to its pod's owner process as bytes, and the owner's answer
back to the client unchanged.

A worker (``mesh.dataplane.worker``) shares the pod's external port with the owner, so any call can land on
it: management (``mmesh.ModelMesh``), admin, health, and inference it cannot serve from its table (a model not
ACTIVE here, a load, a vModel it cannot resolve, anything erroneous). It relays those over the owner's unix
socket, with the client's own metadata (internal headers and the peer token included, so the owner accepts
or refuses them exactly as on its own port) and the client's deadline. The owner's answer comes back as it
was: the response bytes, or the status code, details and trailers (the ``mm-error`` trailer that peers read),
so a client cannot tell which process it reached.

The status of a failed relay is the owner's, not a mapping, so it is passed on with ``context.abort`` as it
came (the one exception to "handlers raise"): the error boundary lets an abort through. Only when the owner
never answered (its socket refused the call: the owner is restarting) does the worker raise an error of its
own, ``PeerUnavailable``, which a peer retries elsewhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from mesh.channels import aio_channel
from mesh.errors import ERROR_TRAILER, PeerUnavailable, Source, from_rpc_error

Metadata = Sequence[tuple[str, str | bytes]]

# Transport-level headers gRPC sets itself on the next hop (with pseudo-headers and grpc-*): never copied.
_HOP_HEADERS = frozenset({"user-agent", "content-type", "te", "host"})


def forwardable(metadata: Metadata | None) -> tuple[tuple[str, str | bytes], ...]:
    """The client's metadata minus what gRPC sets per connection; everything else goes on unchanged."""
    return tuple(
        (k, v) for k, v in metadata or () if k not in _HOP_HEADERS and not k.startswith((":", "grpc-"))
    )


#: The owner is on this host: after a lost connection, try again within 100-500 ms (gRPC's default backoff
#: starts at 1 s and grows to 2 min, and a call made meanwhile fails at once).
LOCAL_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class OwnerRelay:
    def __init__(self, address: str, *, max_message_bytes: int = 16 << 20) -> None:
        self.address = address
        # one channel to the owner for the relayed calls and the worker's own (PodLocal): when the table
        # stream is back, so is the connection the relayed calls use
        self.channel = aio_channel(
            address, max_message_bytes=max_message_bytes, extra_options=LOCAL_CHANNEL_OPTIONS
        )
        self._unary: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._stream: dict[str, grpc.aio.UnaryStreamMultiCallable] = {}

    async def close(self) -> None:
        await self.channel.close()

    def _unary_call(self, method: str, cache: bool) -> grpc.aio.UnaryUnaryMultiCallable:
        call = self._unary.get(method)
        if call is None:
            call = self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            if cache:  # only for a bounded set of method names (client-chosen names are never kept)
                self._unary[method] = call
        return call

    async def unary(
        self, method: str, payload: bytes, context: grpc.aio.ServicerContext, *, cache: bool = False
    ) -> bytes:
        """The owner's answer to ``payload`` as ``method``; its failure is passed on to ``context``."""
        call = self._unary_call(method, cache)(
            payload, metadata=forwardable(context.invocation_metadata()), timeout=context.time_remaining()
        )
        try:
            response = await call
        except grpc.aio.AioRpcError as exc:
            await pass_on_failure(context, exc, self.address)
        await _pass_on_metadata(context, call)
        return response

    async def unary_stream(
        self, method: str, payload: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """The owner's stream of answers (grpc.health.v1 Watch), item by item."""
        multi = self._stream.get(method)
        if multi is None:
            multi = self.channel.unary_stream(method, request_serializer=None, response_deserializer=None)
            self._stream[method] = multi  # only called for the fixed set of streaming methods
        call = multi(
            payload, metadata=forwardable(context.invocation_metadata()), timeout=context.time_remaining()
        )
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as exc:
            await pass_on_failure(context, exc, self.address)
        await _pass_on_metadata(context, call, initial=False)


async def _pass_on_metadata(context: grpc.aio.ServicerContext, call, *, initial: bool = True) -> None:
    if initial:
        sent = await call.initial_metadata()
        if sent:
            await context.send_initial_metadata(tuple(sent))
    trailing = await call.trailing_metadata()
    if trailing:
        context.set_trailing_metadata(tuple(trailing))


def owner_silent(exc: grpc.aio.AioRpcError, where: str) -> PeerUnavailable | None:
    """PeerUnavailable when the owner did not answer the call itself (no trailer of its error boundary, and
    the transport's UNAVAILABLE: its socket refused or dropped the connection), else None."""
    trailers = tuple(exc.trailing_metadata() or ())
    if any(k == ERROR_TRAILER for k, _ in trailers):
        return None
    err = from_rpc_error(exc, Source.PEER, where=f"this pod's owner process ({where})")
    return err if isinstance(err, PeerUnavailable) else None


async def pass_on_failure(context: grpc.aio.ServicerContext, exc: grpc.aio.AioRpcError, where: str):
    """Fail the worker's call as the owner's failed (raises, as abort does)."""
    silent = owner_silent(exc, where)
    if silent is not None:
        raise silent from exc
    await context.abort(
        exc.code(), exc.details() or "", trailing_metadata=tuple(exc.trailing_metadata() or ())
    )
