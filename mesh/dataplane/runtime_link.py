"""RuntimeLink: raw-bytes inference calls from this pod to its local runtime's serving port.

The payload is forwarded as bytes; the concrete model id is written where the runtime expects it: the
``mm-model-id`` header (``mm-model-id-bin`` when not ASCII) and, for methods the runtime lists in
``methodInfos``, spliced into the message at its ``idInjectionPath`` (modelmesh.md §1.3). Failed calls go
through ``mesh.errors.from_rpc_error(..., Source.RUNTIME)``: answers meaning "I don't have that model" become
ModelNotHere so the router can reload or go elsewhere; the runtime's own verdicts pass through unchanged.
A call in flight when the link is closed (the runtime exited) is RuntimeUnavailable, not a cancellation.
"""

from __future__ import annotations

import asyncio

import grpc

from mesh.channels import TlsFiles, aio_channel, closed_under_the_call
from mesh.dataplane.headers import MODEL_ID, MODEL_ID_BIN, V2_METHODS, splice_string
from mesh.errors import RuntimeUnavailable, Source, Unimplemented, from_rpc_error


class RuntimeLink:
    def __init__(
        self,
        address: str,
        *,
        method_infos: dict[str, tuple[int, ...]],
        allow_any_method: bool,
        tls: TlsFiles | None = None,
        max_message_bytes: int = 16 << 20,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        """``channel``: an already made channel (``mesh.inprocess.InProcessChannel`` for the in-process
        runtime); it is the caller's to close then."""
        self.address = address
        self._own_channel = channel is None
        self._channel = (
            channel
            if channel is not None
            else aio_channel(address, tls=tls, max_message_bytes=max_message_bytes)
        )
        self._method_infos = {"/" + k.lstrip("/"): v for k, v in method_infos.items()}
        self._allow_any = allow_any_method or not method_infos
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self._id_metadata: dict[str, tuple[tuple[str, str | bytes], ...]] = {}  # model id -> its id headers

    @property
    def declared_methods(self) -> frozenset[str]:
        """The methods the runtime declared (methodInfos), with a leading '/'."""
        return frozenset(self._method_infos)

    async def close(self) -> None:
        if self._own_channel:
            await self._channel.close()

    def check_allowed(self, method: str) -> None:
        if method.startswith("/mmesh.ModelRuntime/"):
            raise Unimplemented(f"method {method} is not callable through the mesh")
        if not self._allow_any and method not in self._method_infos:
            raise Unimplemented(f"method {method} is not supported by the model runtime")

    async def call(
        self,
        method: str,
        payload: bytes,
        model_id: str,
        metadata: list[tuple[str, str | bytes]],
        timeout: float | None,
    ) -> bytes:
        call = self._calls.get(method)
        if call is None:
            self.check_allowed(method)
            call = self._channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            if method in self._method_infos or method in V2_METHODS:  # never cache client-chosen names
                self._calls[method] = call
        path = self._method_infos.get(method)
        if path:
            payload = splice_string(payload, path, model_id)
        id_md = self._id_metadata.get(model_id)
        if id_md is None:
            id_md = _id_headers(model_id)
            if len(self._id_metadata) >= 4096:
                self._id_metadata.clear()
            self._id_metadata[model_id] = id_md
        md = (*metadata, *id_md) if metadata else id_md
        try:
            return await call(payload, metadata=md, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, Source.RUNTIME, where=self.address, model_id=model_id) from exc
        except asyncio.CancelledError:
            if not closed_under_the_call():
                raise
            # the runtime exited and the pod closed this link: the router retries elsewhere
            raise RuntimeUnavailable(f"model runtime {self.address} went away during the call") from None


def _id_headers(model_id: str) -> tuple[tuple[str, str | bytes], ...]:
    if model_id.isascii():
        return ((MODEL_ID, model_id), (MODEL_ID_BIN, model_id.encode("utf-8")))
    return ((MODEL_ID_BIN, model_id.encode("utf-8")),)
