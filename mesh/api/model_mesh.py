"""The ``mmesh.ModelMesh`` management servicer: translates protobuf to calls on the cluster modules and back.

Handlers raise ``MeshError``s; the pod's error boundary (``mesh.boundary``) maps them to statuses. Loads
requested here (``loadNow``, ``ensureLoaded``) go through the same placement as inference misses
(``mesh.cluster.availability``); ``sync`` waits for the load, otherwise it continues in the background. This
is also the one place that turns model and vModel states into their protobuf messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.cluster.availability import Availability
from mesh.cluster.registry import ModelSpec, Registry
from mesh.cluster.sizes import parse_size_override
from mesh.cluster.status import LOADING, NOT_LOADED, ModelStatus, model_status
from mesh.cluster.view import ViewHolder
from mesh.cluster.vmodel_plans import SetRequest, vmodel_status
from mesh.cluster.vmodels import SetOptions, VModels
from mesh.dataplane import headers as h
from mesh.dataplane.peer_auth import PeerAuth
from mesh.errors import InvalidRequest, KvUnavailable, MeshError, ModelNotFound
from mesh.ids import MAX_OWNER_LENGTH, check_id, check_length, check_model_info
from mesh.kv.records import VModelRecord
from mesh.local.cache import LocalCache
from mesh.local.loader import Loader
from mesh.tasks import TaskSupervisor
from protos.mmesh import model_mesh_pb2 as pb
from protos.mmesh import model_mesh_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_STATUS = pb.ModelStatusInfo.ModelStatus
SYNC_SETTLE_S = 5.0
SETTLE_POLL_S = 0.02
LOAD_NOW_AGE_MS = 3_600_000  # loadNow without lastUsedTime: an hour ago, never displacing active models


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
        views: ViewHolder,
        cache: LocalCache,
        loader: Loader,
        availability: Availability,
        failure_expiry_ms: int,
        kv_healthy: Callable[[], bool],
        tasks: TaskSupervisor,
        peer_auth: PeerAuth,
        clock: Clock = SYSTEM_CLOCK,
        default_vmodel_owner: str = "",
    ) -> None:
        self.instance_id = instance_id
        self.default_vmodel_owner = default_vmodel_owner  # MM_DEFAULT_VMODEL_OWNER: for sets that name none
        self.registry = registry
        self.views = views
        self.cache = cache
        self.loader = loader
        self.availability = availability
        self.failure_expiry_ms = failure_expiry_ms
        self._kv_healthy = kv_healthy
        self.tasks = tasks
        self.peer_auth = peer_auth
        self.clock = clock
        self.vmodels: VModels | None = None  # set by the pod (VModels loads through this servicer)

    def status_of(self, model_id: str) -> ModelStatus:
        view = self.views.current
        return model_status(
            view.model(model_id),
            self_id=self.instance_id,
            local=self.cache.get(model_id),
            alive=view.alive(),
            now_ms=self.clock.now_ms(),
            failure_expiry_ms=self.failure_expiry_ms,
        )

    async def _settled_status(self, model_id: str) -> ModelStatus:
        """Status after a sync load. The loading pod records LOADED in etcd just after it starts serving,
        so this pod's watch-fed view may trail by a moment: wait for it (bounded) rather than say LOADING."""
        deadline = self.clock.monotonic() + SYNC_SETTLE_S
        status = self.status_of(model_id)
        while status.status == "LOADING" and self.clock.monotonic() < deadline:
            await asyncio.sleep(SETTLE_POLL_S)
            status = self.status_of(model_id)
        return status

    def _check_kv(self) -> None:
        if not self._kv_healthy():
            raise KvUnavailable("etcd is unreachable; management operations are unavailable")

    async def load_and_status(
        self, model_id: str, sync: bool, last_used: int, *, local_only: bool = False, copy: bool = False
    ) -> ModelStatus:
        coro = self.availability.ensure_loaded(
            model_id, last_used=last_used, local_only=local_only, copy=copy
        )
        if sync:
            try:
                await coro
            except MeshError as exc:
                log.info("sync load of %s failed: %s", model_id, exc.message)
            return await self._settled_status(model_id)
        self.tasks.spawn(f"mesh:ensure:{model_id}", coro)
        await asyncio.sleep(0)
        status = self.status_of(model_id)
        if status.status == NOT_LOADED:  # the load has been started: ModelMesh answers LOADING
            return ModelStatus(LOADING, copies=status.copies)
        return status

    async def registerModel(self, request: pb.RegisterModelRequest, context):
        model_id = check_id(request.modelId)
        info = request.modelInfo
        check_model_info(info.type, info.path, info.key)
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
                size_override=_size_override(context.invocation_metadata()),
            ),
            load_now=request.loadNow,
            last_used=request.lastUsedTime,
        )
        if request.loadNow:
            last_used = request.lastUsedTime or self.clock.now_ms() - LOAD_NOW_AGE_MS
            return to_proto(await self.load_and_status(model_id, request.sync, last_used))
        return to_proto(self.status_of(model_id))

    async def unregisterModel(self, request: pb.UnregisterModelRequest, context):
        model_id = check_id(request.modelId)
        self._check_kv()
        await self.registry.unregister(model_id)
        self.loader.drop_local(model_id, reason="unregistered")
        return pb.UnregisterModelResponse()

    async def getModelStatus(self, request: pb.GetStatusRequest, context):
        model_id = check_id(request.modelId)
        return to_proto(self.status_of(model_id))

    async def ensureLoaded(self, request: pb.EnsureLoadedRequest, context):
        model_id = check_id(request.modelId)
        md = h.parse_metadata(context.invocation_metadata())
        self.peer_auth.check(md, self.clock)
        if self.views.current.model(model_id) is None and await self.registry.get_strong(model_id) is None:
            raise ModelNotFound(model_id)  # as ModelMesh: a failed call, not OK with NOT_FOUND inside
        if md.internal == h.INTERNAL_FILL:  # the leader's proactive load: spare room only
            try:
                await self.availability.fill(model_id, self.instance_id, last_used=request.lastUsedTime)
            except MeshError as exc:
                log.info("proactive load of %s not taken: %s", model_id, exc.message)
            return to_proto(self.status_of(model_id))
        st = await self.load_and_status(
            model_id,
            request.sync,
            request.lastUsedTime or self.clock.now_ms(),
            local_only=md.internal in (h.INTERNAL_LOAD, h.INTERNAL_COPY),
            copy=md.internal == h.INTERNAL_COPY,
        )
        return to_proto(st)

    # ---- vmodels
    def _vmodels(self) -> VModels:
        assert self.vmodels is not None, "the pod wires VModels before serving"
        return self.vmodels

    async def setVModel(self, request: pb.SetVModelRequest, context):
        self._check_kv()
        vmodel_id = check_id(request.vModelId, what="vmodel id")
        target = check_id(request.targetModelId, what="target model id")
        if request.expectedTargetModelId:
            check_id(request.expectedTargetModelId, what="expected target model id")
        create = None
        check_length(request.owner, MAX_OWNER_LENGTH, what="owner")
        if request.HasField("modelInfo"):
            info = request.modelInfo
            check_model_info(info.type, info.path, info.key)
            create = ModelSpec(type=info.type, path=info.path, key=info.key)
        await self._vmodels().set_vmodel(
            SetRequest(
                vmodel_id=vmodel_id,
                target=target,
                owner=request.owner or self.default_vmodel_owner,
                update_only=request.updateOnly,
                expected_target=request.expectedTargetModelId,
                force=request.force,
            ),
            SetOptions(
                create=create,
                auto_delete=request.autoDeleteTargetModel,
                load_now=request.loadNow,
                sync=request.sync,
            ),
        )
        return self._vmodel_proto(self._vmodels().get(vmodel_id, request.owner))

    async def deleteVModel(self, request: pb.DeleteVModelRequest, context):
        self._check_kv()
        await self._vmodels().delete_vmodel(check_id(request.vModelId, what="vmodel id"), request.owner)
        return pb.DeleteVModelResponse()

    async def getVModelStatus(self, request: pb.GetVModelStatusRequest, context):
        vmodel_id = check_id(request.vModelId, what="vmodel id")
        return self._vmodel_proto(self._vmodels().get(vmodel_id, request.owner))

    def _vmodel_proto(self, rec: VModelRecord | None) -> pb.VModelStatusInfo:
        if rec is None:
            return pb.VModelStatusInfo(status=pb.VModelStatusInfo.NOT_FOUND)
        return pb.VModelStatusInfo(
            status=pb.VModelStatusInfo.VModelStatus.Value(vmodel_status(rec)),
            activeModelId=rec.active,
            targetModelId=rec.target,
            owner=rec.owner,
            activeModelStatus=to_proto(self.status_of(rec.active)) if rec.active else None,
            # as ModelMesh: the target's status only while it differs from the active model
            targetModelStatus=to_proto(self.status_of(rec.target)) if rec.target != rec.active else None,
        )


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


def _size_override(metadata) -> int:
    """The ``mm-model-size`` registration header (bytes; 0 = none): the planned size of a copy for a model
    whose measured size is noisy or whose first load must be planned (``mesh.cluster.sizes``)."""
    for key, value in metadata or ():
        if key == h.MODEL_SIZE:
            return parse_size_override(value)
    return 0


def add_to_server(servicer: ModelMeshServicer, server: grpc.aio.Server) -> None:
    pb_grpc.add_ModelMeshServicer_to_server(servicer, server)
