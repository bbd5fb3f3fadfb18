"""LocalTable: what a data-plane worker process knows of its pod, and the usage it owes the owner.

A worker (``mesh.dataplane.worker``) serves a request itself only when this table says the model is ACTIVE in
the pod's cache and the runtime is up; everything else goes to the owner process. The owner streams the
table (``meshlocal.PodLocal/Follow``: a snapshot, then changes), so it is as fresh as the owner's own cache
within one message on a unix socket. Until the snapshot is complete (``synced``), and again from the moment
the stream is lost, the table is not synced and the worker passes every request to the owner.

``Usage`` counts the requests a worker served per model with their newest last-used time; the worker sends
it to the owner in batches. Keys are only models that were ACTIVE in the table, so it is bounded by the
pod's cache.

Pure bookkeeping: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from protos.meshlocal import local_pb2 as pb


@dataclass(frozen=True, slots=True)
class RuntimeRoute:
    """Where the pod's runtime serves inference and its method table (for ``RuntimeLink``)."""

    address: str
    method_infos: Mapping[str, tuple[int, ...]]
    allow_any_method: bool

    @classmethod
    def from_proto(cls, msg: pb.RuntimeRoute) -> RuntimeRoute | None:
        if not msg.up:
            return None
        return cls(
            msg.address,
            {name: tuple(m.path) for name, m in msg.methods.items()},
            msg.allow_any_method,
        )

    def to_proto(self) -> pb.RuntimeRoute:
        return pb.RuntimeRoute(
            up=True,
            address=self.address,
            methods={name: pb.MethodPath(path=list(path)) for name, path in self.method_infos.items()},
            allow_any_method=self.allow_any_method,
        )


DOWN = pb.RuntimeRoute(up=False)


class LocalTable:
    def __init__(self) -> None:
        self.synced = False
        self.instance_id = ""
        self.peer_token = ""
        self.active: set[str] = set()
        self.vmodels: dict[str, str] = {}  # vModel id -> active model id ("" = none)
        self.runtime: RuntimeRoute | None = None
        self.generation = 0  # bumped by every reset: a new stream, maybe a new owner

    def apply(self, update: pb.TableUpdate) -> bool:
        """Apply one update; True when the runtime route changed (the caller rebuilds its runtime link)."""
        runtime_changed = False
        if update.reset:
            self.generation += 1
            self.active.clear()
            self.vmodels.clear()
            self.instance_id = update.instance_id
            self.peer_token = update.peer_token
        self.active.difference_update(update.inactive)
        self.active.update(update.active)
        for v in update.vmodels:
            self.vmodels[v.vmodel_id] = v.active_model_id
        for vid in update.vmodels_removed:
            self.vmodels.pop(vid, None)
        if update.reset or update.HasField("runtime"):
            route = RuntimeRoute.from_proto(update.runtime)
            runtime_changed = route != self.runtime
            self.runtime = route
        if update.synced:
            self.synced = True
        return runtime_changed

    def lost(self) -> None:
        """The stream ended: nothing here can be trusted until the next snapshot."""
        self.synced = False

    def deactivate(self, model_id: str) -> None:
        """The runtime said it does not have ``model_id``: stop serving it here until the owner says again."""
        self.active.discard(model_id)


class Usage:
    """Requests served per model and their newest last-used time, since the last ``take``."""

    def __init__(self) -> None:
        self._counts: dict[str, list[int]] = {}  # model id -> [requests, newest last-used ms]

    def record(self, model_id: str, last_used: int) -> None:
        entry = self._counts.get(model_id)
        if entry is None:
            self._counts[model_id] = [1, last_used]
        else:
            entry[0] += 1
            if entry[1] < last_used:
                entry[1] = last_used

    def take(self) -> list[pb.ModelUsage]:
        counts, self._counts = self._counts, {}
        return [pb.ModelUsage(model_id=m, requests=n, last_used_ms=lu) for m, (n, lu) in counts.items()]

    def give_back(self, usage: list[pb.ModelUsage]) -> None:
        """A report that did not reach the owner: count it again with the next one."""
        for u in usage:
            entry = self._counts.setdefault(u.model_id, [0, 0])
            entry[0] += u.requests
            entry[1] = max(entry[1], u.last_used_ms)

    def __len__(self) -> int:
        return len(self._counts)
