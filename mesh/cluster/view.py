"""ClusterView: the immutable picture of the cluster that the data plane and the policies read.

A ``ClusterView`` holds the three watch-fed tables' snapshots (instances, registry, vmodels: ``FrozenMap``s
that never change). ``ViewHolder`` swaps in a new view whenever a table commits a change, so a reader takes
``holder.current`` once per request and reads one consistent object without locks or awaits; nothing in it
changes under the reader (style rule 4). Liveness of a pod is the presence of its instance record, which
lives on its lease.

What this pod *plans* (loads it just sent to peers whose records do not show them yet) is not part of the
view: ``mesh.cluster.reservations`` keeps it apart.
"""

from __future__ import annotations

from collections.abc import Callable, KeysView
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mesh.frozenmap import EMPTY, FrozenMap

if TYPE_CHECKING:
    from mesh.kv.records import InstanceRecord, ModelRecord, VModelRecord
    from mesh.kv.table import Table


@dataclass(frozen=True, slots=True)
class ClusterView:
    self_id: str
    instances: FrozenMap[InstanceRecord] = field(default_factory=lambda: EMPTY)
    models: FrozenMap[ModelRecord] = field(default_factory=lambda: EMPTY)
    vmodels: FrozenMap[VModelRecord] = field(default_factory=lambda: EMPTY)

    def model(self, model_id: str) -> ModelRecord | None:
        return self.models.get(model_id)

    def vmodel(self, vmodel_id: str) -> VModelRecord | None:
        return self.vmodels.get(vmodel_id)

    def instance(self, instance_id: str) -> InstanceRecord | None:
        return self.instances.get(instance_id)

    def alive(self) -> KeysView[str]:
        """Ids of live pods (set-like)."""
        return self.instances.keys()

    def address(self, instance_id: str) -> str | None:
        rec = self.instances.get(instance_id)
        return rec.address if rec is not None else None


class ViewHolder:
    """The current ``ClusterView``, replaced whole on every table commit; listeners hear each new view."""

    def __init__(
        self,
        self_id: str,
        instances: Table[InstanceRecord],
        registry: Table[ModelRecord],
        vmodels: Table[VModelRecord],
    ) -> None:
        self._tables = (instances, registry, vmodels)
        self._listeners: list[Callable[[ClusterView], None]] = []
        self.current = ClusterView(self_id)
        self._rebuild()
        for table in self._tables:
            table.add_commit_listener(self._rebuild)

    def add_listener(self, fn: Callable[[ClusterView], None]) -> None:
        self._listeners.append(fn)

    def _rebuild(self) -> None:
        instances, registry, vmodels = self._tables
        self.current = ClusterView(
            self.current.self_id, instances.snapshot(), registry.snapshot(), vmodels.snapshot()
        )
        for fn in self._listeners:
            fn(self.current)
