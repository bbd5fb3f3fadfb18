"""In-process mesh: N real ``mesh.pod.Pod`` objects in the test's event loop, each with its own FakeRuntime.

Everything that talks is real: the pods use the session's etcd (under a fresh key root), reach each other
over gRPC on loopback, and call their runtime through the real SPI and inference link. Only the runtime is a
stand-in (``tests.fakes.FakeRuntime``), and time can be a ``FakeClock`` shared by every pod. A pod starts in
well under a second, so a test builds exactly the cluster it needs.

Use::

    async with InProcessCluster(etcd_server.endpoint, pods=3, settings={...}) as mesh:
        await mesh[0].client.register("m1")
        served = await mesh[1].client.infer("m1")   # Served(model="m1", runtime="pod-0")
        mesh[0].runtime.loads["m1"]                  # what the pod's runtime was asked
        mesh[0].pod.loader / .availability / .janitor / .reaper / .scaler / .router  # drive parts directly

Settings: ``settings`` apply to every pod, ``pod_settings[i]`` to pod i (over them); ``runtime`` and
``pod_runtimes[i]`` are FakeRuntime arguments (capacity, sizes...); ``client_tls_ca`` makes the test's
clients verify TLS pods with that CA, and ``client_tls_cert`` (cert, key) makes them present a client
certificate (pods with ``tls_client_auth``). Ports are picked before the pods start, so each pod advertises the
address it listens on. Fault injection: ``kill(i)`` (as SIGKILL: no drain, the lease left to expire unless
``revoke_lease``), ``partition(i)`` (its server stops answering but it stays in etcd), ``crash_runtime(i)``
/ ``restore_runtime(i)`` (the runtime dies and comes back, as the pod's process supervisor reports it).
``stop()`` (the context exit) stops every pod gracefully, within 30 s each, then checks that no ``mesh:*``
task is left running.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from mesh.channels import TlsFiles, aio_channel
from mesh.client import (
    MeshClientError,
    cluster_status_dict,
    model_status_dict,
    set_vmodel_call,
    vmodel_status_dict,
)
from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.devtools.cluster import free_port
from mesh.kv.keys import Keys
from mesh.pod import Pod
from mesh.settings import load_settings
from protos.inference import grpc_predict_v2_pb2 as v2
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from protos.meshadmin import admin_pb2, admin_pb2_grpc
from protos.mmesh import model_mesh_pb2 as mm
from protos.mmesh import model_mesh_pb2_grpc as mm_grpc
from tests.fakes import FakeRuntime
from tests.support.conditions import wait_until

#: Fast timings for tests (as the subprocess harness's FAST_POD_ARGS), no metrics listener.
FAST_SETTINGS: dict[str, Any] = {
    "host": "127.0.0.1",
    "metrics_port": 0,
    "rest_port": 0,
    "lease_ttl_s": 3,
    "publish_interval_s": 1,
    "janitor_interval_s": 2,
    "default_model_size": 20_000,
    "runtime_startup_timeout_s": 15,
    "shutdown_timeout_s": 7,
}

#: For tests that run the periodic checks themselves (janitor, reaper, copy scaler, stats roll-up): the
#: pods' own loops wait an hour first, so only the test's calls act.
MANUAL_CHECKS: dict[str, Any] = {
    "janitor_interval_s": 3600,
    "scale_check_interval_s": 3600,
    "stats_tick_s": 60,  # one roll-up per minute: rpm = requests counted before one roll()
    "lease_ttl_s": 30,  # the reaper's own sweep runs every max(5, ttl) s
}

FAKE_TYPE = "fake"
PORT_ATTEMPTS = 3
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Served:
    """What a FakeRuntime answered: the model it served, and which runtime (named after its pod) served it."""

    model: str
    runtime: str


class PodClient:
    """Async client of one pod (management, inference, admin). Errors are ``MeshClientError``s."""

    def __init__(
        self, address: str, timeout: float = 20.0, *, tls_ca: str = "", tls_cert: str = "", tls_key: str = ""
    ) -> None:
        self.address = address
        self.timeout = timeout
        tls = TlsFiles(ca=tls_ca, cert=tls_cert, key=tls_key)
        self.channel = aio_channel(address, tls=tls if tls.enabled else None)
        self._mm = mm_grpc.ModelMeshStub(self.channel)
        self._v2 = v2_grpc.GRPCInferenceServiceStub(self.channel)
        self._admin = admin_pb2_grpc.MeshAdminStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, call, request, metadata=()):
        try:
            return await call(request, metadata=list(metadata), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise MeshClientError.from_rpc(exc) from exc

    # --- models
    async def register(
        self,
        model_id: str,
        model_type: str = FAKE_TYPE,
        path: str = "",
        *,
        load_now: bool = False,
        sync: bool = False,
        min_copies: int = 0,
        max_copies: int = 0,
    ) -> dict:
        req = mm.RegisterModelRequest(
            modelId=model_id, modelInfo=mm.ModelInfo(type=model_type, path=path), loadNow=load_now, sync=sync
        )
        md = []
        if min_copies:
            md.append(("mm-min-copies", str(min_copies)))
        if max_copies:
            md.append(("mm-max-copies", str(max_copies)))
        return model_status_dict(await self._call(self._mm.registerModel, req, md))

    async def unregister(self, model_id: str) -> None:
        await self._call(self._mm.unregisterModel, mm.UnregisterModelRequest(modelId=model_id))

    async def status(self, model_id: str) -> dict:
        return model_status_dict(
            await self._call(self._mm.getModelStatus, mm.GetStatusRequest(modelId=model_id))
        )

    async def ensure_loaded(self, model_id: str, *, sync: bool = True) -> dict:
        req = mm.EnsureLoadedRequest(modelId=model_id, sync=sync)
        return model_status_dict(await self._call(self._mm.ensureLoaded, req))

    async def copies(self, model_id: str, state: str = "LOADED") -> list[str]:
        """Pods holding ``model_id`` in ``state``, as this pod sees them."""
        return sorted(c["location"] for c in (await self.status(model_id))["copies"] if c["status"] == state)

    # --- vmodels
    async def set_vmodel(
        self,
        vmodel_id: str,
        target: str,
        model_type: str | None = None,
        path: str = "",
        *,
        owner: str = "",
        auto_delete_target: bool = False,
        load_now: bool = False,
        sync: bool = False,
        expected_target: str = "",
        update_only: bool = False,
        force: bool = False,
    ) -> dict:
        # the same request the Python client builds (mesh.client.set_vmodel_call)
        req = set_vmodel_call(
            vmodel_id,
            target,
            model_type,
            path,
            owner=owner,
            auto_delete_target=auto_delete_target,
            load_now=load_now,
            sync=sync,
            expected_target=expected_target,
            update_only=update_only,
            force=force,
        ).request
        return vmodel_status_dict(await self._call(self._mm.setVModel, req))

    async def delete_vmodel(self, vmodel_id: str, owner: str = "") -> None:
        await self._call(self._mm.deleteVModel, mm.DeleteVModelRequest(vModelId=vmodel_id, owner=owner))

    async def vmodel_status(self, vmodel_id: str, owner: str = "") -> dict:
        req = mm.GetVModelStatusRequest(vModelId=vmodel_id, owner=owner)
        return vmodel_status_dict(await self._call(self._mm.getVModelStatus, req))

    async def cluster_status(self, include_models: bool = True) -> dict:
        req = admin_pb2.ClusterStatusRequest(include_models=include_models)
        return cluster_status_dict(await self._call(self._admin.ClusterStatus, req))

    # --- inference
    async def infer(
        self,
        model_id: str | None = None,
        *,
        vmodel: str | None = None,
        by_name: str | None = None,
        metadata: Sequence[tuple[str, str | bytes]] = (),
        timeout: float | None = None,
    ) -> Served:
        """ModelInfer for ``model_id`` (``mm-model-id``), ``vmodel`` (``mm-vmodel-id``) or, with no header,
        ``by_name`` in ``model_name``. Returns which model and which pod's runtime served it."""
        md = list(metadata)
        if model_id is not None:
            md.append(("mm-model-id", model_id))
        if vmodel is not None:
            md.append(("mm-vmodel-id", vmodel))
        request = v2.ModelInferRequest(model_name=by_name or "", id="req")
        try:
            resp = await self._v2.ModelInfer(request, metadata=md, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise MeshClientError.from_rpc(exc) from exc
        return Served(resp.model_name, resp.model_version)

    async def ready(self, model_id: str) -> bool:
        """ModelReady by name (no header): the mesh reads field 1."""
        req = v2.ModelReadyRequest(name=model_id)
        return (await self._call(self._v2.ModelReady, req)).ready

    async def raw(
        self, method: str, payload: bytes, metadata: Sequence[tuple[str, str | bytes]] = ()
    ) -> bytes:
        call = self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            return await call(payload, metadata=list(metadata), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise MeshClientError.from_rpc(exc) from exc


@dataclass
class PodUnderTest:
    index: int
    pod: Pod
    runtime: FakeRuntime
    client: PodClient
    alive: bool = True

    @property
    def id(self) -> str:
        return self.pod.instance_id

    @property
    def address(self) -> str:
        return self.pod.settings.advertised

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` on this pod whose labels include ``labels``. A name the pod does
        not export at all is an error, not 0: a renamed metric must fail the test that reads it."""
        total = 0.0
        exported = False
        for family in self.pod.metrics.registry.collect():
            for sample in family.samples:
                if sample.name != name:
                    continue
                exported = True
                if all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
            # a labelled family with no child yet has no samples: it is still exported
            exported = (
                exported
                or name.removesuffix("_total") in (family.name, f"{family.name}_total")
                or (name.removesuffix("_count").removesuffix("_sum") == family.name)
            )
        if not exported:
            raise AssertionError(f"{self.id} exports no metric named {name!r}")
        return total

    def holds(self, model_id: str) -> bool:
        """An ACTIVE copy in this pod's cache."""
        entry = self.pod.cache.get(model_id)
        return entry is not None and entry.active


class InProcessCluster:
    def __init__(
        self,
        etcd: str,
        *,
        pods: int = 1,
        settings: Mapping[str, Any] | None = None,
        pod_settings: Sequence[Mapping[str, Any]] = (),
        runtime: Mapping[str, Any] | None = None,
        pod_runtimes: Sequence[Mapping[str, Any]] = (),
        clock: Clock = SYSTEM_CLOCK,
        kv_root: str | None = None,
        client_tls_ca: str = "",
        client_tls_cert: tuple[str, str] | None = None,
    ) -> None:
        self.etcd = etcd
        self.count = pods
        self.settings = {**FAST_SETTINGS, **(settings or {})}
        self.pod_settings = list(pod_settings)
        self.runtime_args = dict(runtime or {})
        self.pod_runtimes = list(pod_runtimes)
        self.clock = clock
        self.kv_root = kv_root or f"/mmtest/{uuid.uuid4().hex}/"
        self.keys = Keys.for_root(self.kv_root)
        self.pods: list[PodUnderTest] = []
        self.client_tls_ca = client_tls_ca
        self.client_tls_cert = client_tls_cert

    def __getitem__(self, index: int) -> PodUnderTest:
        return self.pods[index]

    def __len__(self) -> int:
        return len(self.pods)

    @property
    def live(self) -> list[PodUnderTest]:
        return [p for p in self.pods if p.alive]

    async def __aenter__(self) -> InProcessCluster:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        for _ in range(self.count):
            await self.add_pod()
        await self.wait_views()

    async def add_pod(self, **overrides: Any) -> PodUnderTest:
        """Start one more pod (pod-<n>) with its own FakeRuntime."""
        index = len(self.pods)
        rt_args = {
            **self.runtime_args,
            **(self.pod_runtimes[index] if index < len(self.pod_runtimes) else {}),
        }
        runtime = await FakeRuntime(name=f"pod-{index}", **rt_args).start()
        values = {
            **self.settings,
            **(self.pod_settings[index] if index < len(self.pod_settings) else {}),
            **overrides,
            "instance_id": f"pod-{index}",
            "etcd_endpoints": [self.etcd],
            "kv_root": self.kv_root,
            "runtime_address": runtime.address,
            "runtime_cmd": "",
        }
        for attempt in range(PORT_ATTEMPTS):
            # The port is chosen before the pod starts so that it advertises the address it listens on;
            # another process on the machine may take it in between, so a failed bind picks again.
            pod = Pod(load_settings(environ={}, overrides={**values, "port": free_port()}), clock=self.clock)
            try:
                await pod.start()
                break
            except BaseException as exc:
                await (pod.stop() if hasattr(pod, "server") else pod.stop_partial())
                if "could not bind" in str(exc) and attempt + 1 < PORT_ATTEMPTS:
                    continue
                await runtime.stop()
                raise
        cert, key = self.client_tls_cert or ("", "")
        client = PodClient(pod.settings.advertised, tls_ca=self.client_tls_ca, tls_cert=cert, tls_key=key)
        handle = PodUnderTest(index, pod, runtime, client)
        self.pods.append(handle)
        return handle

    async def wait_views(self, timeout: float = 30.0) -> None:
        """Until every live pod sees every live pod."""
        ids = {p.id for p in self.live}
        await wait_until(
            lambda: all(ids <= set(p.pod.views.current.alive()) for p in self.live),
            timeout=timeout,
            what=f"every pod to see {sorted(ids)}",
        )

    # ------------------------------------------------------------------ faults
    async def kill(self, index: int, *, revoke_lease: bool = False) -> None:
        """As SIGKILL of the pod's process: it stops answering and working at once, nothing is drained or
        released, its runtime dies with it. Its lease expires after the TTL (at once with ``revoke_lease``,
        as if that time had passed)."""
        p = self.pods[index]
        p.alive = False
        pod = p.pod
        pod.ready = False
        if pod.http is not None:
            await pod.http.stop(grace_s=0)
        await pod.server.stop(grace=None)
        if getattr(pod, "watchdog", None) is not None:
            pod.watchdog.stop()
        await pod.tasks.close()
        await pod.peers.close()
        await pod.session.stop(revoke=revoke_lease)
        for table in (pod.registry_table, pod.instances_table, pod.vmodels_table):
            await table.stop()
        await pod.runtime.stop()
        await pod.kv.close()
        await p.runtime.crash()
        await p.client.close()

    async def partition(self, index: int) -> None:
        """Pod ``index`` stops answering gRPC but keeps its lease and records (a hung or cut-off pod)."""
        await self.pods[index].pod.server.stop(grace=None)

    async def crash_runtime(self, index: int) -> None:
        """The runtime process of pod ``index`` dies; the pod hears it as from its process supervisor."""
        p = self.pods[index]
        await p.runtime.crash()
        await p.pod.runtime._exited(-9)  # the supervisor's exit callback

    async def restore_runtime(self, index: int) -> None:
        """The supervisor restarted the runtime: it serves again (empty) and the pod reconnects."""
        p = self.pods[index]
        await p.runtime.restart()
        await p.pod.runtime._restarted()  # the supervisor's restart callback

    # ------------------------------------------------------------------ stop
    async def stop(self) -> None:
        """Stop every live pod gracefully (all marked leaving first, so none migrates models to another
        that is leaving too), stop the runtimes, and check that no ``mesh:*`` task outlived them."""
        live = [p for p in self.pods if p.alive and hasattr(p.pod, "server")]
        for p in live:
            p.pod.shutting_down = True
            p.pod.loader.accepting = False
        for p in live:
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await p.pod.publisher.publish(force=True)
            except Exception:  # etcd may be down in an outage test: stop regardless
                pass
        results = await asyncio.gather(*(self._stop_pod(p) for p in live), return_exceptions=True)
        for p in self.pods:
            p.alive = False
            await p.runtime.stop()
            await p.client.close()
        leaked = [
            t.get_name()
            for t in asyncio.all_tasks()
            if t.get_name().startswith("mesh:") and not t.done() and t is not asyncio.current_task()
        ]
        assert not leaked, f"pods left mesh tasks running: {leaked}"
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise failed[0]

    async def _stop_pod(self, p: PodUnderTest) -> None:
        """``Pod.stop``, bounded: a pod that does not stop in time is killed and the test fails (pytest's
        hang guard covers test bodies only, not fixture teardown)."""
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await p.pod.stop()
        except TimeoutError:
            await self.kill(p.index, revoke_lease=True)
            raise AssertionError(f"{p.id} did not stop within {STOP_TIMEOUT_S:.0f}s; killed it") from None


__all__ = [
    "FAKE_TYPE",
    "FAST_SETTINGS",
    "MANUAL_CHECKS",
    "InProcessCluster",
    "PodClient",
    "PodUnderTest",
    "Served",
]
