"""A call in flight on a channel the pod closes is a failed call, not a cancelled request (real grpc.aio over
loopback). Found by the chaos suite (tests/chaos/test_chaos_runtime.py): when the runtime exits the pod
closes its link to it; grpc.aio then raises ``asyncio.CancelledError`` in every call in flight, the request
handler looked cancelled, gRPC sent the client nothing, and the client waited for its whole deadline
(DEADLINE_EXCEEDED after 10 s) instead of the request going to another copy. The same held for a forward to a
peer whose channel closes when the peer leaves the view. Now they fail with RuntimeUnavailable /
PeerUnavailable, which the router retries elsewhere; a real cancellation still cancels.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from mesh.dataplane.runtime_link import RuntimeLink
from mesh.errors import PeerUnavailable, RuntimeUnavailable
from mesh.peers import PeerClient

METHOD = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture
async def slow_server() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A server whose ModelInfer answers only when the test lets it (or after 30 s); yields its address and
    an event set when a call has arrived."""
    arrived = asyncio.Event()

    async def slow(request: bytes, context) -> bytes:
        arrived.set()
        await asyncio.sleep(30)
        return b""

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(slow)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {"ModelInfer": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", arrived
    finally:
        await server.stop(0)


def _link(address: str) -> RuntimeLink:
    return RuntimeLink(address, method_infos={}, allow_any_method=True)


async def test_a_runtime_call_in_flight_when_the_link_closes_is_runtime_unavailable(slow_server) -> None:
    address, arrived = slow_server
    link = _link(address)
    call = asyncio.ensure_future(link.call(METHOD, b"", "m", [], timeout=20))
    await asyncio.wait_for(arrived.wait(), 10)
    await link.close()  # what LocalRuntime does when the runtime process exits
    with pytest.raises(RuntimeUnavailable):
        await asyncio.wait_for(call, 10)


async def test_a_forward_in_flight_when_the_peer_leaves_the_view_is_peer_unavailable(slow_server) -> None:
    address, arrived = slow_server
    peers = PeerClient()
    call = asyncio.ensure_future(peers.forward("pod-9", address, METHOD, b"", [], timeout=20))
    await asyncio.wait_for(arrived.wait(), 10)
    peers.retain([])  # the peer left the cluster view: its channel is closed
    with pytest.raises(PeerUnavailable):
        await asyncio.wait_for(call, 10)


async def test_a_cancelled_request_is_still_cancelled(slow_server) -> None:
    address, arrived = slow_server
    link = _link(address)
    try:
        call = asyncio.ensure_future(link.call(METHOD, b"", "m", [], timeout=20))
        await asyncio.wait_for(arrived.wait(), 10)
        call.cancel()  # the client went away: the handler task is cancelled
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        await link.close()
