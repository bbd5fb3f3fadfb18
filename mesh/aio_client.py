"""AsyncMeshClient: the asyncio twin of ``mesh.client.MeshClient`` (same methods, awaited; ``async with``).

Owns only the asyncio channels and the failover loop; every request is built by the ``*_call`` functions of
``mesh.client`` and every answer converted by its ``*_dict``/``decode_outputs`` functions, so the two clients
cannot drift apart (tests/unit/test_client_api.py compares their signatures). Several pod addresses: calls
go to the address that answered last and move on to the next one when a call fails with UNAVAILABLE, each
address at most once per call, within the call's deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np

from mesh.client import (
    CHANNEL_OPTIONS,
    DEFAULT_INPUT_NAME,
    Call,
    MeshClientError,
    channel_credentials,
    cluster_status_call,
    cluster_status_dict,
    decode_outputs,
    fails_over,
    infer_call,
    infer_raw_call,
    merge_pages,
    model_status_dict,
    parse_addresses,
    register_call,
    set_vmodel_call,
    vmodel_status_dict,
)
from protos.inference import grpc_predict_v2_pb2 as v2
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from protos.meshadmin import admin_pb2_grpc
from protos.mmesh import model_mesh_pb2 as mm
from protos.mmesh import model_mesh_pb2_grpc as mm_grpc


class AsyncMeshClient:
    """Asyncio client of a mesh: ``async with AsyncMeshClient("a:8033,b:8033") as c: await c.status(...)``.

    Arguments and failover as ``MeshClient``. Channels are opened on first use, in the running loop."""

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        timeout: float = 30,
    ) -> None:
        self.addresses = parse_addresses(target)
        self.timeout = timeout
        self._creds = channel_credentials(tls_ca, tls_cert, tls_key)
        self._channels: dict[int, grpc.aio.Channel] = {}
        self._stubs: dict[int, dict[str, Any]] = {}
        self._current = 0
        self.failovers = 0  # calls that moved on to another address (observability, tests)

    @property
    def target(self) -> str:
        return self.addresses[self._current]

    async def __aenter__(self) -> AsyncMeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        for ch in channels:
            await ch.close()

    def _stub(self, index: int, name: str):
        stubs = self._stubs.get(index)
        if stubs is None:
            address = self.addresses[index]
            if self._creds is None:
                ch = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            else:
                ch = grpc.aio.secure_channel(address, self._creds, options=CHANNEL_OPTIONS)
            self._channels[index] = ch
            stubs = self._stubs[index] = {
                "mm": mm_grpc.ModelMeshStub(ch),
                "admin": admin_pb2_grpc.MeshAdminStub(ch),
                "v2": v2_grpc.GRPCInferenceServiceStub(ch),
            }
        return stubs[name]

    async def _run(self, call: Call, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        start = self._current
        last: grpc.RpcError | None = None
        for step in range(len(self.addresses)):
            index = (start + step) % len(self.addresses)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                fn = getattr(self._stub(index, call.stub), call.method)
                resp = await fn(call.request, metadata=call.metadata, timeout=remaining)
            except grpc.RpcError as exc:
                if not fails_over(exc):
                    raise MeshClientError.from_rpc(exc) from exc
                last = exc
                self.failovers += step < len(self.addresses) - 1
                continue
            self._current = index
            return resp
        if last is None:
            raise MeshClientError("DEADLINE_EXCEEDED", f"no answer within {self.timeout}s")
        self._current = (start + 1) % len(self.addresses)
        raise MeshClientError.from_rpc(last) from last

    # --- models

    async def register(
        self,
        model_id: str,
        model_type: str,
        path: str,
        key: str = "",
        load_now: bool = False,
        sync: bool = False,
        *,
        min_copies: int = 0,
        max_copies: int = 0,
        owner: str = "",
    ) -> dict[str, Any]:
        call = register_call(
            model_id, model_type, path, key, load_now, sync, min_copies=min_copies, max_copies=max_copies,
            owner=owner,
        )  # fmt: skip
        return model_status_dict(await self._run(call))

    async def unregister(self, model_id: str) -> None:
        await self._run(Call("mm", "unregisterModel", mm.UnregisterModelRequest(modelId=model_id)))

    async def status(self, model_id: str) -> dict[str, Any]:
        call = Call("mm", "getModelStatus", mm.GetStatusRequest(modelId=model_id))
        return model_status_dict(await self._run(call))

    async def ensure_loaded(self, model_id: str, sync: bool = False) -> dict[str, Any]:
        call = Call("mm", "ensureLoaded", mm.EnsureLoadedRequest(modelId=model_id, sync=sync))
        return model_status_dict(await self._run(call))

    # --- vmodels

    async def set_vmodel(
        self,
        vmodel_id: str,
        target_model_id: str,
        model_type: str | None = None,
        path: str | None = None,
        key: str | None = None,
        *,
        owner: str = "",
        auto_delete_target: bool = False,
        load_now: bool = False,
        sync: bool = False,
        expected_target: str = "",
        update_only: bool = False,
        force: bool = False,
    ) -> dict[str, Any]:
        call = set_vmodel_call(
            vmodel_id, target_model_id, model_type, path, key, owner=owner,
            auto_delete_target=auto_delete_target, load_now=load_now, sync=sync,
            expected_target=expected_target, update_only=update_only, force=force,
        )  # fmt: skip
        return vmodel_status_dict(await self._run(call))

    async def delete_vmodel(self, vmodel_id: str, owner: str = "") -> None:
        await self._run(Call("mm", "deleteVModel", mm.DeleteVModelRequest(vModelId=vmodel_id, owner=owner)))

    async def vmodel_status(self, vmodel_id: str, owner: str = "") -> dict[str, Any]:
        call = Call("mm", "getVModelStatus", mm.GetVModelStatusRequest(vModelId=vmodel_id, owner=owner))
        return vmodel_status_dict(await self._run(call))

    # --- cluster

    async def cluster_status_page(
        self,
        include_models: bool = True,
        *,
        page_size: int = 0,
        page_token: str = "",
        model_id_glob: str = "",
        model_type: str = "",
        status: str = "",
        pod: str = "",
    ) -> dict[str, Any]:
        call = cluster_status_call(
            include_models, page_size=page_size, page_token=page_token, model_id_glob=model_id_glob,
            model_type=model_type, status=status, pod=pod,
        )  # fmt: skip
        return cluster_status_dict(await self._run(call))

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

    # --- inference

    async def infer(
        self,
        model_id: str,
        inputs: Mapping[str, Any] | Sequence[Any] | np.ndarray,
        *,
        vmodel: bool = False,
        raw: bool = False,
        datatype: str | None = None,
        input_name: str = DEFAULT_INPUT_NAME,
    ) -> dict[str, np.ndarray]:
        call = infer_call(model_id, inputs, vmodel=vmodel, raw=raw, datatype=datatype, input_name=input_name)
        return decode_outputs(await self._run(call))

    async def infer_raw(
        self, request: v2.ModelInferRequest, *, vmodel: bool = False
    ) -> v2.ModelInferResponse:
        return await self._run(infer_raw_call(request, vmodel=vmodel))

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
