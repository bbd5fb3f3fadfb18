"""Reservations: loads this pod has just placed on peers, remembered until those peers republish.

Placement runs on the ingress pod's view of other pods' published records, which lag by up to a publish
interval. Without a correction, a burst of misses would all pick the same pod (the one that looked emptiest a
second ago). So each load this pod sends to a peer is remembered here, tagged with the revision of that peer's
record at the time, and ``adjust`` adds the remembered bytes and models to the peer's record until a new record
(another revision) arrives. This pod's own record is replaced by its live state (``self_record``).

Kept apart from the immutable ``ClusterView``: this is this pod's plan, not the cluster's published state.
Bounded by the number of live pods (entries of pods that left are dropped by ``adjust``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesh.kv.records import InstanceRecord


class Reservations:
    def __init__(self, self_id: str, self_record: Callable[[], InstanceRecord] | None = None) -> None:
        self.self_id = self_id
        self._self_record = self_record
        # instance id -> (record revision when reserved, bytes, models)
        self._reserved: dict[str, tuple[int, int, int]] = {}

    def reserve(self, instances: Mapping[str, InstanceRecord], instance_id: str, size: int) -> None:
        rec = instances.get(instance_id)
        if rec is None:
            return
        rev, used, count = self._reserved.get(instance_id, (rec.revision, 0, 0))
        if rev != rec.revision:
            used, count = 0, 0
        self._reserved[instance_id] = (rec.revision, used + size, count + 1)

    def adjust(self, instances: Mapping[str, InstanceRecord]) -> dict[str, InstanceRecord]:
        """Instance records for placement: this pod's live state, other pods' records plus the loads this pod
        placed there since they last published."""
        out = dict(instances)
        if self._self_record is not None and self.self_id in out:
            out[self.self_id] = self._self_record()
        for iid, (rev, used, count) in list(self._reserved.items()):
            rec = instances.get(iid)
            if rec is None or rec.revision != rev:
                del self._reserved[iid]
                continue
            out[iid] = dataclasses.replace(rec, used=rec.used + used, count=rec.count + count)
        return out
