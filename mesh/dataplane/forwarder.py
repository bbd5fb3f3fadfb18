"""PeerLinks: raw-bytes forwarding of a request to another mesh pod, over channels created once per peer.

A forward carries the original (filtered) client metadata plus the mesh's internal hop metadata
(``mesh.dataplane.headers``). Connection failures become PeerUnavailable; any status the peer answers with
comes back as RemoteError with its code and details unchanged, so runtime errors reach the client as-is.
"""

from __future__ import annotations

import grpc

from mesh.channels import TlsFiles, aio_channel
from mesh.errors import PeerUnavailable, RemoteError


class PeerLinks:
    def __init__(self, *, tls: TlsFiles | None = None, max_message_bytes: int = 16 << 20) -> None:
        self._tls = tls
        self._max = max_message_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable] = {}

    async def forward(
        self,
        address: str,
        method: str,
        payload: bytes,
        metadata: list[tuple[str, str | bytes]],
        timeout: float | None,
    ) -> bytes:
        call = self._calls.get((address, method))
        if call is None:
            channel = self._channels.get(address)
            if channel is None:
                channel = aio_channel(address, tls=self._tls, max_message_bytes=self._max)
                self._channels[address] = channel
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            self._calls[(address, method)] = call
        try:
            return await call(payload, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            details = exc.details() or ""
            if exc.code() == grpc.StatusCode.UNAVAILABLE and _is_transport_failure(details):
                raise PeerUnavailable(f"peer {address} unreachable: {details}") from exc
            raise RemoteError(exc.code(), details) from exc

    async def drop(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        self._calls = {k: v for k, v in self._calls.items() if k[0] != address}
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._calls.clear()


def _is_transport_failure(details: str) -> bool:
    lowered = details.lower()
    return any(s in lowered for s in ("connect", "socket", "unreachable", "connection", "dns", "goaway"))
