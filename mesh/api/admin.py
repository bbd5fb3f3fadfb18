"""MeshAdmin servicer (our extension): the responding pod's view of the cluster for ``mesh status``."""

from __future__ import annotations

from collections.abc import Callable

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.cluster.status import model_status
from mesh.cluster.view import ViewHolder
from mesh.cluster.vmodel_plans import vmodel_status
from mesh.local.cache import LocalCache
from mesh.spec_digest import spec_digest
from protos.meshadmin import admin_pb2 as pb
from protos.meshadmin import admin_pb2_grpc as pb_grpc


class MeshAdminServicer(pb_grpc.MeshAdminServicer):
    def __init__(
        self,
        *,
        instance_id: str,
        views: ViewHolder,
        cache: LocalCache,
        is_leader: Callable[[], str | None],
        failure_expiry_ms: int,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.instance_id = instance_id
        self.views = views
        self.clock = clock
        self.cache = cache
        self.leader_id = is_leader
        self.failure_expiry_ms = failure_expiry_ms

    async def ClusterStatus(self, request: pb.ClusterStatusRequest, context):
        return self._status(request.include_models)

    def _status(self, include_models: bool) -> pb.ClusterStatusResponse:
        now = self.clock.now_ms()
        view = self.views.current
        leader = self.leader_id()
        resp = pb.ClusterStatusResponse(responding_instance=self.instance_id)
        for iid, rec in sorted(view.instances.items()):
            resp.instances.append(
                pb.InstanceStatus(
                    instance_id=iid,
                    address=rec.address,
                    zone=rec.zone,
                    labels=rec.labels,
                    capacity_bytes=rec.capacity,
                    used_bytes=rec.used,
                    lru_age_ms=max(0, now - rec.lru_time) if rec.lru_time and rec.count else 0,
                    model_count=rec.count,
                    loads_in_progress=rec.loads_in_progress,
                    rpm=rec.rpm,
                    shutting_down=rec.shutting_down,
                    leader=iid == leader,
                )
            )
        if include_models:
            alive = view.alive()
            for model_id, rec in sorted(view.models.items()):
                local = self.cache.get(model_id)
                st = model_status(
                    rec,
                    self_id=self.instance_id,
                    local=local,
                    alive=alive,
                    now_ms=now,
                    failure_expiry_ms=self.failure_expiry_ms,
                )
                resp.models.append(
                    pb.ModelSummary(
                        model_id=model_id,
                        type=rec.type,
                        loaded_on=[c.instance_id for c in st.copies if c.status == "LOADED"],
                        loading_on=[c.instance_id for c in st.copies if c.status == "LOADING"],
                        failed_on=[c.instance_id for c in st.copies if c.status == "LOADING_FAILED"],
                        last_used_ms=max(rec.last_used, local.last_used if local else 0),
                        status=st.status,
                        errors=st.errors,
                        owner=rec.owner,
                        min_copies=rec.min_copies,
                        max_copies=rec.max_copies,
                        spec_digest=spec_digest(rec.type, rec.path, rec.key),
                    )
                )
            for vmodel_id, vrec in sorted(view.vmodels.items()):
                resp.vmodels.append(
                    pb.VModelSummary(
                        vmodel_id=vmodel_id,
                        owner=vrec.owner,
                        active_model_id=vrec.active,
                        target_model_id=vrec.target,
                        status=vmodel_status(vrec),
                    )
                )
        return resp
