"""Placer: make sure a model is loaded somewhere, without a request to carry (``ensureLoaded``, ``loadNow``,
proactive copies). Uses the same placement policy as the router; a remote pod is asked through its
``ensureLoaded`` with ``mm-internal: load`` so it loads locally instead of placing again."""

from __future__ import annotations

import logging
import random

import grpc

from mesh.channels import TlsFiles, aio_channel
from mesh.cluster.placement import TypeConstraints, choose_load_target
from mesh.cluster.registry import LoadedElsewhere
from mesh.cluster.view import ClusterView
from mesh.dataplane import headers as h
from mesh.errors import MeshError, ModelLoadFailed, ModelNotFound, NoPlacement, from_rpc_error
from mesh.kv.records import ModelRecord
from mesh.local.loader import Loader, now_ms
from protos.mmesh import model_mesh_pb2 as pb
from protos.mmesh import model_mesh_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class Placer:
    def __init__(
        self,
        *,
        instance_id: str,
        view: ClusterView,
        loader: Loader,
        constraints: TypeConstraints,
        max_load_failures: int,
        load_failure_expiry_ms: int,
        tls: TlsFiles | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.view = view
        self.loader = loader
        self.constraints = constraints
        self.max_load_failures = max_load_failures
        self.load_failure_expiry_ms = load_failure_expiry_ms
        self.tls = tls
        self.rng = rng or random.Random()
        self._stubs: dict[str, pb_grpc.ModelMeshStub] = {}
        self._channels: list[grpc.aio.Channel] = []

    async def ensure_loaded(
        self,
        model_id: str,
        *,
        last_used: int,
        local_only: bool = False,
        copy: bool = False,
        exclude: set[str] | None = None,
    ) -> str:
        """Load ``model_id`` on one pod unless a copy exists. Returns the instance holding/loading it."""
        exclude = set(exclude or ())
        last_error: MeshError | None = None
        for _ in range(4):
            rec = self.view.model(model_id) or await self.loader.registry.get_strong(model_id)
            if rec is None:
                raise ModelNotFound(model_id)
            if local_only:
                try:
                    await self.loader.ensure_local(model_id, last_used=last_used, exclusive=not copy)
                except LoadedElsewhere as exc:
                    return exc.holders[0]
                return self.instance_id
            alive = self.view.instances()
            live = [i for i in rec.instances if (i in alive or i == self.instance_id) and i not in exclude]
            if live:
                return live[0]
            now = now_ms()
            recent = rec.recent_failures(now, self.load_failure_expiry_ms)
            if len(recent) >= self.max_load_failures:
                raise ModelLoadFailed(model_id, "; ".join(dict.fromkeys(rec.failure_messages.values())))
            target = self.pick(rec, exclude=exclude, now=now)
            if target is None and not alive and self.instance_id not in exclude:
                target = self.instance_id
            if target is None:
                raise last_error or NoPlacement(f"no pod can load model '{model_id}' (type {rec.type!r})")
            try:
                if target == self.instance_id:
                    await self.loader.ensure_local(model_id, last_used=last_used, exclusive=True)
                else:
                    self.view.reserve(target, rec.size or self.loader.default_size)
                    await self._remote_load(target, model_id, last_used)
                return target
            except LoadedElsewhere as exc:
                return exc.holders[0]
            except MeshError as exc:
                exclude.add(target)
                last_error = exc
        raise last_error or NoPlacement(f"could not place model '{model_id}'")

    def pick(self, rec: ModelRecord, *, exclude: set[str], now: int, size: int = 0) -> str | None:
        """The pod that should load (another copy of) ``rec``: the placement policy applied to this pod's
        view, skipping ``exclude`` and pods where the model failed recently. Used for every placement."""
        recent = rec.recent_failures(now, self.load_failure_expiry_ms)
        return choose_load_target(
            self.view.placement_instances(),
            model_type=rec.type,
            size=size or rec.size or self.loader.default_size,
            exclude=exclude | set(recent),
            constraints=self.constraints,
            rng=self.rng,
            now_ms=now,
        )

    async def add_copy(self, model_id: str, *, size: int, last_used: int, exclude: set[str]) -> str | None:
        """Load one more copy of a model on a pod not in ``exclude`` (its current holders). Returns the pod,
        or None when no pod qualifies (the caller tries again on its next check)."""
        rec = self.view.model(model_id)
        if rec is None:
            return None
        target = self.pick(rec, exclude=exclude | set(rec.instances), now=now_ms(), size=size)
        if target is None:
            return None
        if target == self.instance_id:
            await self.loader.ensure_local(model_id, last_used=last_used, exclusive=False)
        else:
            self.view.reserve(target, size)
            await self._remote_load(target, model_id, last_used, copy=True)
        log.info("added a copy of %s on %s", model_id, target)
        return target

    async def _remote_load(self, target: str, model_id: str, last_used: int, *, copy: bool = False) -> None:
        address = self.view.address(target)
        if not address:
            raise NoPlacement(f"peer {target} has no address")
        stub = self._stubs.get(address)
        if stub is None:
            channel = aio_channel(address, tls=self.tls)
            self._channels.append(channel)
            stub = self._stubs[address] = pb_grpc.ModelMeshStub(channel)
        try:
            resp = await stub.ensureLoaded(
                pb.EnsureLoadedRequest(modelId=model_id, lastUsedTime=last_used, sync=True),
                metadata=[(h.INTERNAL, h.INTERNAL_COPY if copy else h.INTERNAL_LOAD)],
                timeout=600,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, where=f"peer {target}") from exc
        if resp.status == pb.ModelStatusInfo.LOADING_FAILED:
            raise ModelLoadFailed(model_id, "; ".join(resp.errors) or "load failed")

    async def close(self) -> None:
        for c in self._channels:
            await c.close()
