"""VModels: owns ``vmodels/<vModelId>``. Virtual models are aliases that move between concrete models.

NOT IMPLEMENTED YET beyond reads: the data plane resolves existing vmodel records (``mm-vmodel-id`` and
``model_name``), but setVModel/deleteVModel answer UNIMPLEMENTED until transitions (target loads, then
traffic switches; owner checks; autoDeleteTargetModel; refs kept in one txn with the model records) land.
"""

from __future__ import annotations

from mesh.cluster.view import ClusterView
from mesh.errors import Unimplemented
from protos.mmesh import model_mesh_pb2 as pb


class VModels:
    def __init__(self, view: ClusterView) -> None:
        self.view = view

    async def set_vmodel(self, request: pb.SetVModelRequest, api) -> pb.VModelStatusInfo:
        raise Unimplemented("setVModel is not implemented yet in this version of the mesh")

    async def delete_vmodel(self, vmodel_id: str, owner: str) -> None:
        raise Unimplemented("deleteVModel is not implemented yet in this version of the mesh")

    def status_proto(self, vmodel_id: str, owner: str, api) -> pb.VModelStatusInfo:
        rec = self.view.vmodel(vmodel_id)
        if rec is None:
            return pb.VModelStatusInfo(status=pb.VModelStatusInfo.NOT_FOUND)
        status = (
            pb.VModelStatusInfo.DEFINED if rec.active == rec.target else pb.VModelStatusInfo.TRANSITIONING
        )
        if rec.failed:
            status = pb.VModelStatusInfo.TRANSITION_FAILED
        from mesh.api.model_mesh import to_proto

        return pb.VModelStatusInfo(
            status=status,
            activeModelId=rec.active,
            targetModelId=rec.target,
            owner=rec.owner,
            activeModelStatus=to_proto(api.status_of(rec.active)) if rec.active else None,
            targetModelStatus=to_proto(api.status_of(rec.target)) if rec.target else None,
        )
