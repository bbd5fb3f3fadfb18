"""ClusterView: the read-only, in-memory picture of the cluster that the data plane consults.

It reads the watch-fed tables (instances, registry, vmodels) by reference: every read is a dict lookup on
the event loop thread, never an await, so the hot path stays free of etcd (DESIGN §3). Liveness of a pod is
the presence of its instance record, which lives on its lease.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from mesh.kv.records import InstanceRecord, ModelRecord, VModelRecord
from mesh.kv.table import Table


class ClusterView:
    def __init__(
        self,
        self_id: str,
        instances: Table[InstanceRecord],
        registry: Table[ModelRecord],
        vmodels: Table[VModelRecord] | None = None,
        self_record: Callable[[], InstanceRecord] | None = None,
    ) -> None:
        self.self_id = self_id
        self._instances = instances
        self._registry = registry
        self._vmodels = vmodels
        self._self_record = self_record
        # instance id -> (record revision when reserved, bytes, models) of loads this pod placed there
        self._reserved: dict[str, tuple[int, int, int]] = {}

    def model(self, model_id: str) -> ModelRecord | None:
        return self._registry.get(model_id)

    def models(self) -> dict[str, ModelRecord]:
        return self._registry.items()

    def vmodel(self, vmodel_id: str) -> VModelRecord | None:
        return self._vmodels.get(vmodel_id) if self._vmodels is not None else None

    def vmodels(self) -> dict[str, VModelRecord]:
        return self._vmodels.items() if self._vmodels is not None else {}

    def instances(self) -> dict[str, InstanceRecord]:
        return self._instances.items()

    def instance(self, instance_id: str) -> InstanceRecord | None:
        return self._instances.get(instance_id)

    def alive(self) -> set[str]:
        return set(self._instances.items())

    def reserve(self, instance_id: str, size: int) -> None:
        """Remember a load this pod just placed on ``instance_id`` until that pod republishes its record, so
        a burst of misses does not pile onto a pod whose published free space is a second old."""
        rec = self._instances.get(instance_id)
        if rec is None:
            return
        rev, used, count = self._reserved.get(instance_id, (rec.revision, 0, 0))
        if rev != rec.revision:
            used, count = 0, 0
        self._reserved[instance_id] = (rec.revision, used + size, count + 1)

    def placement_instances(self) -> dict[str, InstanceRecord]:
        """Instance records for placement: this pod's live state, and other pods' published records plus
        the loads this pod placed there since they last published."""
        items = self._instances.items()
        out = dict(items)
        if self._self_record is not None and self.self_id in out:
            out[self.self_id] = self._self_record()  # this pod knows itself exactly, not as last published
        for iid, (rev, used, count) in list(self._reserved.items()):
            rec = items.get(iid)
            if rec is None or rec.revision != rev:
                del self._reserved[iid]
                continue
            out[iid] = dataclasses.replace(rec, used=rec.used + used, count=rec.count + count)
        return out

    def address(self, instance_id: str) -> str | None:
        rec = self._instances.get(instance_id)
        return rec.address if rec is not None else None
