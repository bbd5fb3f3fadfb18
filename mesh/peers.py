"""PeerClient: every call from this pod to another pod, over one pool of channels.

Two calls, both on the peer's external port:
- ``forward``: a request's raw bytes to a pod that holds (``mm-internal: hit``) or should load
  (``mm-internal: load``) the model; the payload is never decoded (DESIGN §3).
- ``load``: ask a pod to load a model (``copy``: one more copy) without a request to carry, through its
  ``mmesh.ModelMesh/ensureLoaded`` with ``mm-internal: load|copy`` so it loads locally instead of placing
  again (ensureLoaded, loadNow, copy scaling, migration at shutdown, the reaper).

One channel per peer address, created on first use and closed as soon as the peer leaves the cluster view
(``retain``), so channels to dead pods never pile up. Every failure goes through
``mesh.errors.from_rpc_error(..., Source.PEER)``: the peer's typed ``mm-error`` trailer says what failed
there; no answer at all (connection refused or lost, or the channel closed under the call because the peer
left the view) is ``PeerUnavailable``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Sequence

import grpc

from mesh.channels import PEER_CHANNEL_OPTIONS, TlsFiles, aio_channel, closed_under_the_call
from mesh.dataplane import headers as h
from mesh.errors import ModelLoadFailed, PeerUnavailable, Source, from_rpc_error
from protos.mmesh import model_mesh_pb2 as pb

log = logging.getLogger(__name__)

ENSURE_LOADED = "/mmesh.ModelMesh/ensureLoaded"
Metadata = Sequence[tuple[str, str | bytes]]


class PeerClient:
    def __init__(
        self,
        *,
        auth_metadata: Metadata = (),
        tls: TlsFiles | None = None,
        max_message_bytes: int = 16 << 20,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._auth = tuple(auth_metadata)  # the cluster's peer token (mesh.dataplane.peer_auth)
        self._tls = tls
        self._max = max_message_bytes
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _call(self, address: str, method: str, *, raw: bool = True) -> grpc.aio.UnaryUnaryMultiCallable:
        call = self._calls.get((address, method))
        if call is None:
            channel = self._channels.get(address)
            if channel is None:
                channel = aio_channel(
                    address, tls=self._tls, max_message_bytes=self._max, extra_options=PEER_CHANNEL_OPTIONS
                )
                self._channels[address] = channel
            if raw:
                call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            else:
                call = channel.unary_unary(
                    method,
                    request_serializer=pb.EnsureLoadedRequest.SerializeToString,
                    response_deserializer=pb.ModelStatusInfo.FromString,
                )
            self._calls[(address, method)] = call
        return call

    async def forward(
        self, peer: str, address: str, method: str, payload: bytes, metadata: Metadata, timeout: float | None
    ) -> bytes:
        """Send ``payload`` to ``peer`` as ``method``; its answer's bytes, or the MeshError it failed with."""
        call = self._call(address, method)
        try:
            await self._connected(peer, address, timeout)
            return await call(payload, metadata=(*metadata, *self._auth), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, Source.PEER, where=f"{peer} ({address})") from exc
        except grpc.aio.UsageError as exc:  # the peer left the view and its channel was closed meanwhile
            raise PeerUnavailable(f"peer {peer} ({address}) left the cluster") from exc
        except asyncio.CancelledError:
            if not closed_under_the_call():
                raise
            raise PeerUnavailable(f"peer {peer} ({address}) left the cluster during the call") from None

    async def _connected(self, peer: str, address: str, timeout: float | None) -> None:
        """Wait (at most ``connect_timeout_s``) for the channel to ``address`` to be connected: a peer that
        cannot be reached is PeerUnavailable within that time, and the request fails over to another copy or a
        new load with the rest of its deadline, instead of waiting for gRPC's own 20 s connect timeout."""
        channel = self._channels[address]
        if channel.get_state(try_to_connect=True) is grpc.ChannelConnectivity.READY:
            return
        limit = self.connect_timeout_s if timeout is None else min(self.connect_timeout_s, timeout)
        try:
            async with asyncio.timeout(limit):
                await channel.channel_ready()
        except TimeoutError:
            raise PeerUnavailable(
                f"peer {peer} ({address}) unreachable: not connected within {limit:.1f}s"
            ) from None

    async def load(
        self,
        peer: str,
        address: str,
        model_id: str,
        *,
        last_used: int,
        timeout: float,
        copy: bool = False,
        fill: bool = False,
    ) -> None:
        """Have ``peer`` load ``model_id`` (one more copy when ``copy``; into spare room only, never evicting,
        when ``fill``) and wait for the outcome."""
        call = self._call(address, ENSURE_LOADED, raw=False)
        request = pb.EnsureLoadedRequest(modelId=model_id, lastUsedTime=last_used, sync=True)
        mode = h.INTERNAL_FILL if fill else h.INTERNAL_COPY if copy else h.INTERNAL_LOAD
        metadata = ((h.INTERNAL, mode), *self._auth)
        try:
            await self._connected(peer, address, timeout)
            status = await call(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, Source.PEER, where=f"{peer} ({address})") from exc
        except grpc.aio.UsageError as exc:
            raise PeerUnavailable(f"peer {peer} ({address}) left the cluster") from exc
        except asyncio.CancelledError:
            if not closed_under_the_call():
                raise
            raise PeerUnavailable(f"peer {peer} ({address}) left the cluster during the call") from None
        if status.status == pb.ModelStatusInfo.LOADING_FAILED:
            raise ModelLoadFailed(model_id, "; ".join(status.errors) or f"load failed on {peer}")

    def retain(self, addresses: Collection[str]) -> None:
        """Close the channels to every address not in ``addresses`` (the live pods' addresses)."""
        for address in [a for a in self._channels if a not in addresses]:
            self._drop(address)

    def _drop(self, address: str) -> None:
        channel = self._channels.pop(address, None)
        self._calls = {k: v for k, v in self._calls.items() if k[0] != address}
        if channel is not None:
            log.debug("closing the channel to %s (no longer in the cluster view)", address)
            task = asyncio.get_running_loop().create_task(channel.close(), name="mesh:peer-close")
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    @property
    def open_addresses(self) -> list[str]:
        return list(self._channels)

    async def close(self) -> None:
        for address in list(self._channels):
            self._drop(address)
        await asyncio.gather(*self._closing, return_exceptions=True)
