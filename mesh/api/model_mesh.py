"""The ``mmesh.ModelMesh`` management servicer: translates protobuf to calls on the cluster modules.

Every method runs inside ``guard`` so errors reach the client through mesh.errors' single mapping. Loads
requested here (``loadNow``, ``ensureLoaded``) go through the same placement as inference misses
(``Placer``); ``sync`` waits for the load, otherwise it continues in the background.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc

from mesh.cluster.placer import Placer
from mesh.cluster.registry import ModelSpec, Registry
from mesh.cluster.status import ModelStatus, model_status
from mesh.cluster.view import ClusterView
from mesh.cluster.vmodels import VModels
from mesh.dataplane import headers as h
from mesh.errors import InvalidRequest, KvUnavailable, MeshError, abort
from mesh.ids import check_id
from mesh.local.cache import LocalCache
from mesh.local.loader import Loader, now_ms
from mesh.tasks import log_failure
from protos.mmesh import model_mesh_pb2 as pb
from protos.mmesh import model_mesh_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_STATUS = pb.ModelStatusInfo.ModelStatus
SYNC_SETTLE_S = 5.0


def guard(fn):
    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            return await fn(self, request, context)
        except Exception as exc:
            if not isinstance(exc, MeshError):
                log.exception("%s failed", fn.__name__)
            await abort(context, exc)

    return wrapper


def to_proto(status: ModelStatus) -> pb.ModelStatusInfo:
    return pb.ModelStatusInfo(
        status=_STATUS.Value(status.status),
        errors=status.errors,
        modelCopyInfos=[
            pb.ModelStatusInfo.ModelCopyInfo(
                location=c.instance_id, copyStatus=_STATUS.Value(c.status), time=c.time
            )
            for c in status.copies
        ],
    )


class ModelMeshServicer(pb_grpc.ModelMeshServicer):
    def __init__(
        self,
        *,
        instance_id: str,
        registry: Registry,
        view: ClusterView,
        cache: LocalCache,
        loader: Loader,
        placer: Placer,
        vmodels: VModels,
        failure_expiry_ms: int,
        kv_healthy,
    ) -> None:
        self.instance_id = instance_id
        self.registry = registry
        self.view = view
        self.cache = cache
        self.loader = loader
        self.placer = placer
        self.vmodels = vmodels
        self.failure_expiry_ms = failure_expiry_ms
        self._kv_healthy = kv_healthy
        self._background: set[asyncio.Task] = set()

    def status_of(self, model_id: str) -> ModelStatus:
        return model_status(
            self.registry.get(model_id),
            self_id=self.instance_id,
            local=self.cache.get(model_id),
            alive=self.view.alive(),
            now_ms=now_ms(),
            failure_expiry_ms=self.failure_expiry_ms,
        )

    async def _settled_status(self, model_id: str) -> ModelStatus:
        """Status after a sync load. The loading pod records LOADED in etcd just after it starts serving,
        so this pod's watch-fed view may trail by a moment: wait for it (bounded) rather than say LOADING."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SYNC_SETTLE_S
        status = self.status_of(model_id)
        while status.status == "LOADING" and loop.time() < deadline:
            await asyncio.sleep(0.02)
            status = self.status_of(model_id)
        return status

    def _check_kv(self) -> None:
        if not self._kv_healthy():
            raise KvUnavailable("etcd is unreachable; management operations are unavailable")

    async def load_and_status(
        self, model_id: str, *, sync: bool, last_used: int, local_only: bool = False, copy: bool = False
    ) -> ModelStatus:
        coro = self.placer.ensure_loaded(model_id, last_used=last_used, local_only=local_only, copy=copy)
        if sync:
            try:
                await coro
            except MeshError as exc:
                log.info("sync load of %s failed: %s", model_id, exc.message)
            return await self._settled_status(model_id)
        task = asyncio.create_task(coro, name=f"mesh:ensure:{model_id}")
        self._background.add(task)
        task.add_done_callback(log_failure)
        task.add_done_callback(self._background.discard)
        await asyncio.sleep(0)
        return self.status_of(model_id)

    @guard
    async def registerModel(self, request: pb.RegisterModelRequest, context):
        model_id = check_id(request.modelId)
        info = request.modelInfo
        if not info.type:
            raise InvalidRequest("modelInfo.type must not be empty")
        self._check_kv()
        min_copies, max_copies = _copy_bounds(context.invocation_metadata())
        await self.registry.register(
            model_id,
            ModelSpec(
                type=info.type,
                path=info.path,
                key=info.key,
                min_copies=min_copies,
                max_copies=max_copies,
                owner=_owner(context.invocation_metadata()),
            ),
            load_now=request.loadNow,
            last_used=request.lastUsedTime,
        )
        if request.loadNow:
            st = await self.load_and_status(
                model_id, sync=request.sync, last_used=request.lastUsedTime or now_ms() - 3_600_000
            )
            return to_proto(st)
        return to_proto(self.status_of(model_id))

    @guard
    async def unregisterModel(self, request: pb.UnregisterModelRequest, context):
        model_id = check_id(request.modelId)
        self._check_kv()
        await self.registry.unregister(model_id)
        self.loader.drop_local(model_id, reason="unregistered")
        return pb.UnregisterModelResponse()

    @guard
    async def getModelStatus(self, request: pb.GetStatusRequest, context):
        model_id = check_id(request.modelId)
        return to_proto(self.status_of(model_id))

    @guard
    async def ensureLoaded(self, request: pb.EnsureLoadedRequest, context):
        model_id = check_id(request.modelId)
        md = h.parse_metadata(context.invocation_metadata())
        if self.registry.get(model_id) is None and await self.registry.get_strong(model_id) is None:
            return to_proto(self.status_of(model_id))
        st = await self.load_and_status(
            model_id,
            sync=request.sync,
            last_used=request.lastUsedTime or now_ms(),
            local_only=md.internal in (h.INTERNAL_LOAD, h.INTERNAL_COPY),
            copy=md.internal == h.INTERNAL_COPY,
        )
        return to_proto(st)

    # ---- vmodels
    @guard
    async def setVModel(self, request: pb.SetVModelRequest, context):
        self._check_kv()
        return await self.vmodels.set_vmodel(request, self)

    @guard
    async def deleteVModel(self, request: pb.DeleteVModelRequest, context):
        self._check_kv()
        await self.vmodels.delete_vmodel(check_id(request.vModelId, what="vmodel id"), request.owner)
        return pb.DeleteVModelResponse()

    @guard
    async def getVModelStatus(self, request: pb.GetVModelStatusRequest, context):
        return self.vmodels.status_proto(check_id(request.vModelId, what="vmodel id"), request.owner, self)

    async def close(self) -> None:
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


OWNER_HEADER = "mm-owner"


def _copy_bounds(metadata) -> tuple[int, int]:
    """Per-model copy bounds from the ``mm-min-copies``/``mm-max-copies`` registration headers."""
    values = {h.MIN_COPIES: 0, h.MAX_COPIES: 0}
    for key, value in metadata or ():
        if key in values:
            try:
                values[key] = int(value)
            except ValueError as exc:
                raise InvalidRequest(f"header {key} must be an integer") from exc
            if not 0 <= values[key] <= 1000:
                raise InvalidRequest(f"header {key} must be between 0 and 1000")
    lo, hi = values[h.MIN_COPIES], values[h.MAX_COPIES]
    if hi and lo > hi:
        raise InvalidRequest(f"{h.MIN_COPIES} ({lo}) must not exceed {h.MAX_COPIES} ({hi})")
    return lo, hi


def _owner(metadata) -> str:
    """The registration's owner from the ``mm-owner`` header (a mesh extension, like ``mm-min-copies``;
    ``mesh apply`` marks what it manages with it), validated like an id; "" when absent."""
    for key, value in metadata or ():
        if key == OWNER_HEADER:
            return check_id(value, what=f"header {OWNER_HEADER}")
    return ""


def add_to_server(servicer: ModelMeshServicer, server: grpc.aio.Server) -> None:
    pb_grpc.add_ModelMeshServicer_to_server(servicer, server)
