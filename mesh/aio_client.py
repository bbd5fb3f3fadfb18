"""AsyncMeshClient: the asyncio twin of ``mesh.client.MeshClient`` (same methods, awaited; ``async with``).

Owns only the asyncio side of sending: the channels, addresses and failover decisions are
``mesh.client.ClientCore``/``Failover``; every request is built by the ``*_call`` functions of
``mesh.client`` and every answer converted by its ``*_dict``/``decode_outputs`` functions, so the two clients
cannot drift apart (tests/unit/test_client_failover.py compares their signatures). Several pod addresses: calls
go to the address that answered last and move on to the next one when a call fails with UNAVAILABLE, each
address at most once per call, within the call's deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import grpc

from mesh.client import (
    Call,
    ClientCore,
    MeshClientError,
    Rpc,
    merge_pages,
)


class AsyncMeshClient(ClientCore):
    """Asyncio client of a mesh: ``async with AsyncMeshClient("a:8033,b:8033") as c: await c.status(...)``.

    Arguments and failover as ``MeshClient`` (``ClientCore``). Channels are opened on first use, in the
    running loop."""

    async def __aenter__(self) -> AsyncMeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for ch in self._take_channels():
            await ch.close()

    def _stub(self, index: int, name: str):
        stubs = self._stubs.get(index) or self._open(index, grpc.aio)
        return stubs[name]

    async def _run(self, call: Call, timeout: float | None = None) -> Any:
        walk = self._failover(timeout)
        for index, remaining in walk:
            try:
                fn = getattr(self._stub(index, call.stub), call.method)
                response = await fn(call.request, metadata=call.metadata, timeout=remaining)
            except grpc.RpcError as exc:
                walk.failed(exc)
                continue
            return walk.answered(index, response)
        raise walk.exhausted()

    def _method(self, rpc: Rpc) -> Callable[..., Any]:
        async def method(*args: Any, **kwargs: Any) -> Any:
            return rpc.convert(await self._run(rpc.build(*args, **kwargs)))

        return method

    async def cluster_status(
        self,
        include_models: bool = True,
        *,
        page_size: int = 0,
        model_id_glob: str = "",
        model_type: str = "",
        status: str = "",
        pod: str = "",
    ) -> dict[str, Any]:
        """The whole cluster status: every page of models (matching the filters), merged."""
        pages, token = [], ""
        while True:
            page = await self.cluster_status_page(
                include_models, page_size=page_size, page_token=token, model_id_glob=model_id_glob,
                model_type=model_type, status=status, pod=pod,
            )  # fmt: skip
            pages.append(page)
            token = page["next_page_token"]
            if not token or not include_models:
                return merge_pages(pages)

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until a channel to one of the addresses connects (not the same as health SERVING)."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(len(self.addresses)):
                self._stub(index, "mm")
                try:
                    await asyncio.wait_for(self._channels[index].channel_ready(), 0.2)
                except TimeoutError:
                    continue
                self._current = index
                return
            if time.monotonic() > deadline:
                shown = ",".join(self.addresses)
                raise MeshClientError("UNAVAILABLE", f"{shown} not reachable within {timeout}s")
