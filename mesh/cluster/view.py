"""ClusterView: the read-only, in-memory picture of the cluster that the data plane consults.

It reads the watch-fed tables (instances, registry, vmodels) by reference: every read is a dict lookup on
the event loop thread, never an await, so the hot path stays free of etcd (DESIGN §3). Liveness of a pod is
the presence of its instance record, which lives on its lease.
"""

from __future__ import annotations

from mesh.kv.records import InstanceRecord, ModelRecord, VModelRecord
from mesh.kv.table import Table


class ClusterView:
    def __init__(
        self,
        self_id: str,
        instances: Table[InstanceRecord],
        registry: Table[ModelRecord],
        vmodels: Table[VModelRecord] | None = None,
    ) -> None:
        self.self_id = self_id
        self._instances = instances
        self._registry = registry
        self._vmodels = vmodels

    def model(self, model_id: str) -> ModelRecord | None:
        return self._registry.get(model_id)

    def models(self) -> dict[str, ModelRecord]:
        return self._registry.items()

    def vmodel(self, vmodel_id: str) -> VModelRecord | None:
        return self._vmodels.get(vmodel_id) if self._vmodels is not None else None

    def instances(self) -> dict[str, InstanceRecord]:
        return self._instances.items()

    def instance(self, instance_id: str) -> InstanceRecord | None:
        return self._instances.get(instance_id)

    def alive(self) -> set[str]:
        return set(self._instances.items())

    def is_alive(self, instance_id: str) -> bool:
        return self._instances.get(instance_id) is not None

    def address(self, instance_id: str) -> str | None:
        rec = self._instances.get(instance_id)
        return rec.address if rec is not None else None
