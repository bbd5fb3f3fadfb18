"""MeshAdmin servicer (our extension): the responding pod's view of the cluster for ``mesh status``.

Models come one page at a time in model-id order (``page_size``, ``page_token`` = the last id of the previous
page), filtered before paging (id glob, type, status, pod). Page sizes are bounded here, whatever a client
asks, and so is the number of records one call examines when filters skip most of them: a page may then
come back short with a ``next_page_token`` to continue from. A client that knows nothing of paging gets the
first page of the default size, which is the whole registry for clusters of up to that many models. Every
vmodel comes with the first page (vmodels are few: one per served name).
"""

from __future__ import annotations

import bisect
import fnmatch
import re
from collections.abc import Callable

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.cluster.status import model_status
from mesh.cluster.view import ViewHolder
from mesh.cluster.vmodel_plans import vmodel_status
from mesh.errors import InvalidRequest
from mesh.ids import MAX_ID_LENGTH
from mesh.local.cache import LocalCache
from mesh.spec_digest import spec_digest
from protos.meshadmin import admin_pb2 as pb
from protos.meshadmin import admin_pb2_grpc as pb_grpc

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 5000
#: Records one call may examine beyond what it returns when filters skip them (bounds the CPU of one call).
MAX_SCAN = 50_000
STATUSES = ("NOT_LOADED", "LOADING", "LOADED", "LOADING_FAILED")
MAX_GLOB_LENGTH = 256


class MeshAdminServicer(pb_grpc.MeshAdminServicer):
    def __init__(
        self,
        *,
        instance_id: str,
        views: ViewHolder,
        cache: LocalCache,
        is_leader: Callable[[], str | None],
        failure_expiry_ms: int,
        load_timeout_ms: Callable[[], int] = lambda: 0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.instance_id = instance_id
        self.views = views
        self.clock = clock
        self.cache = cache
        self.leader_id = is_leader
        self.failure_expiry_ms = failure_expiry_ms
        self.load_timeout_ms = load_timeout_ms
        self._sorted: tuple[object, list[str]] = (None, [])  # (the models map it was built from, its ids)

    async def ClusterStatus(self, request: pb.ClusterStatusRequest, context):
        return self._status(request)

    def _sorted_ids(self, models) -> list[str]:
        """Model ids in order; rebuilt only when the registry snapshot changed (snapshots are immutable)."""
        source, ids = self._sorted
        if source is not models:
            ids = sorted(models.keys())
            self._sorted = (models, ids)
        return ids

    def _status(self, request: pb.ClusterStatusRequest) -> pb.ClusterStatusResponse:
        now = self.clock.now_ms()
        view = self.views.current
        leader = self.leader_id()
        resp = pb.ClusterStatusResponse(
            responding_instance=self.instance_id,
            total_models=len(view.models),
            load_timeout_ms=max(0, int(self.load_timeout_ms())),
        )
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
        if request.include_models:
            self._models_page(request, view, now, resp)
            if not request.page_token:
                self._vmodels(view, resp)
        return resp

    @staticmethod
    def _vmodels(view, resp) -> None:
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

    def _models_page(self, request: pb.ClusterStatusRequest, view, now: int, resp) -> None:
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if len(request.page_token) > MAX_ID_LENGTH:
            raise InvalidRequest("page_token is not a model id (too long)")
        if request.status and request.status not in STATUSES:
            raise InvalidRequest(f"status {request.status!r} is not one of {', '.join(STATUSES)}")
        if len(request.model_id_glob) > MAX_GLOB_LENGTH:
            raise InvalidRequest(f"model_id_glob is longer than {MAX_GLOB_LENGTH} characters")
        glob = re.compile(fnmatch.translate(request.model_id_glob)) if request.model_id_glob else None
        ids = self._sorted_ids(view.models)
        start = bisect.bisect_right(ids, request.page_token) if request.page_token else 0
        alive = view.alive()
        scanned = 0
        last = ""
        for model_id in ids[start:]:
            if len(resp.models) >= page_size or scanned >= MAX_SCAN:
                resp.next_page_token = last
                return
            scanned += 1
            last = model_id
            rec = view.models.get(model_id)
            if rec is None or (glob is not None and not glob.match(model_id)):
                continue
            if request.type and rec.type != request.type:
                continue
            local = self.cache.get(model_id)
            st = model_status(
                rec,
                self_id=self.instance_id,
                local=local,
                alive=alive,
                now_ms=now,
                failure_expiry_ms=self.failure_expiry_ms,
            )
            if request.status and st.status != request.status:
                continue
            loaded = [c.instance_id for c in st.copies if c.status == "LOADED"]
            loading = [c.instance_id for c in st.copies if c.status == "LOADING"]
            failed = [c.instance_id for c in st.copies if c.status == "LOADING_FAILED"]
            if request.instance_id and request.instance_id not in (*loaded, *loading, *failed):
                continue
            resp.models.append(
                pb.ModelSummary(
                    model_id=model_id,
                    type=rec.type,
                    loaded_on=loaded,
                    loading_on=loading,
                    failed_on=failed,
                    last_used_ms=max(rec.last_used, local.last_used if local else 0),
                    status=st.status,
                    errors=st.errors,
                    size_bytes=max(0, rec.size or (local.size if local else 0)),
                    owner=rec.owner,
                    min_copies=rec.min_copies,
                    max_copies=rec.max_copies,
                    spec_digest=spec_digest(rec.type, rec.path, rec.key),
                )
            )
