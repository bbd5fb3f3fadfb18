"""Pod: the composition root of one mesh process. Builds every part, starts them in order, stops them in reverse.

Start: etcd client → tables (registry, instances, vmodels: listed, then watched) → lease session → runtime
(started and supervised when ``runtime_cmd`` is set; waited for READY, which purges leftovers) → cache,
loader, router → stale claims of this instance removed → instance record published → leader election,
reaper, janitor, stats → gRPC server and metrics → SERVING.

Stop (SIGTERM/SIGINT): NOT_SERVING and ``shuttingDown`` published (no new loads come here), recently used
models are loaded elsewhere first (bounded by ``shutdown_timeout_s``), local copies are released from the
registry, the server drains, the lease is revoked, the runtime is stopped.
"""

from __future__ import annotations

import os

# The pod forks only to exec its runtime; gRPC's fork handlers can crash such a child (grpc/grpc#29044).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import argparse
import asyncio
import contextlib
import logging
import random
import signal
import sys
import time

import grpc

from mesh import __version__
from mesh.api.admin import MeshAdminServicer
from mesh.api.model_mesh import ModelMeshServicer, add_to_server
from mesh.channels import TlsFiles, add_port
from mesh.cluster.instances import InstancePublisher
from mesh.cluster.janitor import Janitor, Reaper
from mesh.cluster.placement import TypeConstraints
from mesh.cluster.placer import Placer
from mesh.cluster.registry import Registry
from mesh.cluster.scaling import CopyScaler
from mesh.cluster.view import ClusterView
from mesh.cluster.vmodels import VModels
from mesh.dataplane.forwarder import PeerLinks
from mesh.dataplane.router import Router, RuntimeHolder
from mesh.dataplane.runtime_link import RuntimeLink
from mesh.dataplane.server import NOT_SERVING, InferenceHandler, add_health
from mesh.errors import MeshError
from mesh.health import PodHealth, PodState, channel_up
from mesh.ids import check_id, default_instance_id
from mesh.kv.client import EtcdTls, KvClient
from mesh.kv.election import Election
from mesh.kv.keys import Keys
from mesh.kv.records import InstanceRecord, ModelRecord, VModelRecord
from mesh.kv.session import Session
from mesh.kv.table import Table
from mesh.local.cache import LocalCache
from mesh.local.loader import Loader, now_ms
from mesh.local.runtime_client import RuntimeClient, RuntimeInfo
from mesh.local.runtime_process import RuntimeProcess
from mesh.local.stats import RequestStats
from mesh.metrics import MeshMetrics
from mesh.settings import MeshSettings, add_arguments, load_settings
from protos.meshadmin import admin_pb2_grpc

log = logging.getLogger("mesh.pod")

MIGRATION_CUTOFF_MS = 3600 * 1000


class Pod:
    def __init__(self, settings: MeshSettings) -> None:
        self.settings = settings
        self.instance_id = check_id(settings.instance_id or default_instance_id(), what="instance id")
        self.keys = Keys.for_root(settings.kv_root)
        self.metrics = MeshMetrics()
        self.stats = RequestStats(window_s=6 * settings.stats_tick_s, tick_s=settings.stats_tick_s)
        self.start_time = now_ms()
        self.shutting_down = False
        self.ready = False
        self._tasks: list[asyncio.Task] = []
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        s = self.settings
        etcd_tls = (
            EtcdTls(s.etcd_ca or None, s.etcd_cert or None, s.etcd_key or None)
            if (s.etcd_ca or s.etcd_cert)
            else None
        )
        self.kv = KvClient(s.etcd_endpoints, tls=etcd_tls, timeout=s.etcd_timeout_s)
        await self.kv.connect()
        self.registry_table = Table(
            self.kv, self.keys.registry_prefix, ModelRecord.from_json, name="registry"
        )
        self.instances_table = Table(
            self.kv, self.keys.instances_prefix, InstanceRecord.from_json, name="instances"
        )
        self.vmodels_table = Table(self.kv, self.keys.vmodels_prefix, VModelRecord.from_json, name="vmodels")
        for t in (self.registry_table, self.instances_table, self.vmodels_table):
            await t.start()
        self.session = Session(self.kv, ttl=s.lease_ttl_s, on_lease=self._on_new_lease, name="pod")
        await self.session.start()

        self.tls = TlsFiles(ca=s.tls_ca, cert=s.tls_cert, key=s.tls_key)
        self.runtime_client = RuntimeClient(s.runtime_address)
        self.runtime_process: RuntimeProcess | None = None
        if s.runtime_cmd:
            self.runtime_process = RuntimeProcess(
                s.runtime_cmd, on_exit=self._runtime_exited, on_start=self._runtime_started, env=s.runtime_env
            )
            await self.runtime_process.start()
        info = await self.runtime_client.wait_ready(s.runtime_startup_timeout_s)
        self.info = info
        self.cache = LocalCache(s.capacity_bytes or info.capacity)
        default_size = s.default_model_size or info.default_model_size
        if self.cache.capacity < 2 * default_size:
            log.warning(
                "cache capacity %d is below twice the default model size %d: models of unknown size will not fit",
                self.cache.capacity,
                default_size,
            )
        self.view = ClusterView(
            self.instance_id, self.instances_table, self.registry_table, self.vmodels_table
        )
        self.registry = Registry(
            self.registry_table, now_ms, on_write=lambda: self.metrics.kv_writes.labels("registry").inc()
        )
        self.runtime = RuntimeHolder(self._make_link(info))
        self.loader = Loader(
            instance_id=self.instance_id,
            cache=self.cache,
            runtime=self.runtime_client,
            registry=self.registry,
            view=self.view,
            info=info,
            metrics=self.metrics,
            load_timeout_ms=s.load_timeout_ms,
            default_model_size=s.default_model_size,
            on_change=self._local_change,
        )
        constraints = TypeConstraints.parse(s.type_constraints)
        rng = random.Random()
        self.peers = PeerLinks(
            tls=self.tls if self.tls.enabled else None, max_message_bytes=s.max_message_bytes
        )
        self.placer = Placer(
            instance_id=self.instance_id,
            view=self.view,
            loader=self.loader,
            constraints=constraints,
            max_load_failures=s.max_load_failures,
            load_failure_expiry_ms=s.load_failure_expiry_ms,
            tls=self.tls if self.tls.enabled else None,
            rng=rng,
        )
        self.router = Router(
            instance_id=self.instance_id,
            view=self.view,
            cache=self.cache,
            loader=self.loader,
            runtime=self.runtime,
            peers=self.peers,
            stats=self.stats,
            metrics=self.metrics,
            placer=self.placer,
            max_hops=s.max_hops,
            max_load_failures=s.max_load_failures,
            load_failure_expiry_ms=s.load_failure_expiry_ms,
            request_timeout_s=s.request_timeout_s,
            rng=rng,
        )
        self.registry_table.add_listener(self._on_record_change)
        await self._release_stale_claims()

        self.publisher = InstancePublisher(
            instance_id=self.instance_id,
            table=self.instances_table,
            build=self._instance_record,
            lease_id=lambda: self.session.lease_id or None,
            interval_s=s.publish_interval_s,
            on_write=lambda: self.metrics.kv_writes.labels("instances").inc(),
        )
        await self.publisher.publish(force=True)
        self.publisher.start()

        self.election = Election(self.kv, self.keys.leader, self.instance_id, self.session)
        self.reaper = Reaper(
            registry=self.registry,
            view=self.view,
            failure_expiry_ms=s.load_failure_expiry_ms,
            interval_s=max(5.0, s.lease_ttl_s),
            placer=self.placer,
            replace_lost=s.replace_lost_models,
        )
        self.election.on_change(self._leader_changed)
        self.instances_table.add_listener(self.reaper.on_instance_change)
        await self.election.start()
        self.janitor = Janitor(
            instance_id=self.instance_id,
            registry=self.registry,
            cache=self.cache,
            loader=self.loader,
            interval_s=s.janitor_interval_s,
            idle_unload_s=s.idle_unload_s,
        )
        self.scaler = CopyScaler(
            instance_id=self.instance_id,
            view=self.view,
            cache=self.cache,
            stats=self.stats,
            placer=self.placer,
            loader=self.loader,
            rpm_threshold=s.scaleup_rpm_threshold,
            interval_s=s.scale_check_interval_s,
            second_copy_after_s=s.second_copy_after_s,
            extra_copy_idle_s=s.extra_copy_idle_s,
        )
        self._spawn(self.scaler.run(), "mesh:scaler")
        self._spawn(self.reaper.run(), "mesh:reaper")
        self._spawn(self.janitor.run(), "mesh:janitor")
        self._spawn(self._roll_stats(), "mesh:stats")

        await self._start_server()
        self._spawn(self.vmodels.run(lambda: self.election.is_leader), "mesh:vmodels")
        self.metrics.serve(s.metrics_port, addr="127.0.0.1" if s.host.startswith("127.") else "0.0.0.0")
        self.ready = True
        self._runtime_reachable = True
        self._spawn(self.pod_health.run(self._health_state), "mesh:health")
        log.info(
            "pod %s serving on %s (runtime %s, capacity %d bytes)",
            self.instance_id,
            s.advertised,
            s.runtime_address,
            self.cache.capacity,
        )

    async def _start_server(self) -> None:
        s = self.settings
        from mesh.channels import channel_options

        self.server = grpc.aio.server(options=channel_options(s.max_message_bytes))
        self.vmodels = VModels(
            self.view,
            kv=self.kv,
            table=self.vmodels_table,
            registry=self.registry,
            placer=self.placer,
            status_of=lambda model_id: self.api.status_of(model_id),
        )
        self.api = ModelMeshServicer(
            instance_id=self.instance_id,
            registry=self.registry,
            view=self.view,
            cache=self.cache,
            loader=self.loader,
            placer=self.placer,
            vmodels=self.vmodels,
            failure_expiry_ms=s.load_failure_expiry_ms,
            kv_healthy=self.kv_healthy,
        )
        add_to_server(self.api, self.server)
        admin = MeshAdminServicer(
            instance_id=self.instance_id,
            view=self.view,
            cache=self.cache,
            is_leader=lambda: self.election.leader_id,
            failure_expiry_ms=s.load_failure_expiry_ms,
        )
        admin_pb2_grpc.add_MeshAdminServicer_to_server(admin, self.server)
        self.health = add_health(self.server)
        self.pod_health = PodHealth(self.health, kv_grace_s=s.ready_etcd_grace_s)
        await self.pod_health.listening()
        self.server.add_generic_rpc_handlers(
            (
                InferenceHandler(
                    self.router, self.metrics, lambda: self.ready and not self.shutting_down, __version__
                ),
            )
        )
        port = add_port(self.server, f"{s.host}:{s.port}", tls=self.tls if self.tls.cert else None)
        if not port:
            raise RuntimeError(f"could not bind {s.host}:{s.port}")
        await self.server.start()

    # ------------------------------------------------------------------ helpers
    def kv_healthy(self) -> bool:
        return self.session.healthy and self.registry_table.healthy

    def _health_state(self) -> PodState:
        """Readiness inputs for mesh.health (probes): the runtime counts as down while this pod knows it
        exited, or while its channel cannot connect (a runtime container Kubernetes restarts)."""
        self._runtime_reachable = channel_up(self.runtime_client.channel, self._runtime_reachable)
        return PodState(
            started=self.ready,
            shutting_down=self.shutting_down,
            runtime_up=self.loader.runtime_ready and self._runtime_reachable,
            kv_healthy=self.kv_healthy(),
        )

    def _make_link(self, info: RuntimeInfo) -> RuntimeLink:
        return RuntimeLink(
            self.settings.serving,
            method_infos=info.method_infos,
            allow_any_method=info.allow_any_method,
            max_message_bytes=self.settings.max_message_bytes,
        )

    def _instance_record(self) -> InstanceRecord:
        s = self.settings
        oldest = self.cache.oldest_last_used()
        return InstanceRecord(
            address=s.advertised,
            zone=s.zone,
            location=s.location,
            labels=sorted(s.labels),
            capacity=self.cache.capacity,
            used=self.cache.used,
            lru_time=oldest or 0,
            count=len(self.cache),
            loads_in_progress=self.cache.loading_count(),
            loading_threads=self.info.max_loading_concurrency,
            rpm=int(self.stats.rpm),
            version=__version__,
            start_time=self.start_time,
            shutting_down=self.shutting_down,
        )

    def _local_change(self) -> None:
        m = self.metrics
        m.instance_capacity_bytes.set(self.cache.capacity)
        m.instance_used_bytes.set(self.cache.used)
        m.instance_models_total.set(len(self.cache))
        oldest = self.cache.oldest_last_used()
        m.instance_lru_age_seconds.set(max(0, now_ms() - oldest) / 1000 if oldest else 0)
        if hasattr(self, "publisher"):
            self.publisher.poke()

    def _on_record_change(self, model_id: str, old: ModelRecord | None, new: ModelRecord | None) -> None:
        if new is None and model_id in self.cache:
            self.loader.drop_local(model_id, reason="unregistered")

    async def _release_stale_claims(self) -> None:
        """A restarted pod holds nothing (runtimeStatus purged it): drop claims a previous run left."""
        for model_id, rec in list(self.registry.items().items()):
            if self.instance_id in rec.instances or self.instance_id in rec.loaded:
                await self.registry.remove_copy(model_id, self.instance_id)

    async def _on_new_lease(self, lease_id: int) -> None:
        log.warning("etcd lease was lost; re-publishing instance record on lease %x", lease_id)
        if hasattr(self, "publisher"):
            await self.publisher.publish(force=True)

    def _leader_changed(self, leader: str | None) -> None:
        self.reaper.is_leader = self.election.is_leader
        if self.reaper.is_leader:
            log.info("this pod (%s) is now the leader", self.instance_id)
            self.reaper._kick.set()
            if getattr(self, "vmodels", None) is not None:
                self.vmodels.kick()

    async def _runtime_exited(self, code: int) -> None:
        self.metrics.runtime_restarts.inc()
        self.runtime.link = None
        lost = self.loader.runtime_lost()
        for entry in lost:
            with contextlib.suppress(MeshError):
                await self.registry.remove_copy(entry.model_id, self.instance_id, entry.last_used)

    async def _runtime_started(self) -> None:
        info = await self.runtime_client.wait_ready(self.settings.runtime_startup_timeout_s)
        self.info = info
        self.loader.set_runtime_info(info, self.settings.load_timeout_ms, self.settings.default_model_size)
        self.runtime.link = self._make_link(info)
        self.loader.runtime_ready = True
        log.info("runtime is back (restart %d)", self.runtime_process.restarts if self.runtime_process else 0)

    async def _roll_stats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.stats_tick_s)
            self.stats.roll(now_ms())

    def _spawn(self, coro, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    # ------------------------------------------------------------------ stop
    async def stop(self) -> None:
        s = self.settings
        deadline = time.monotonic() + max(2.0, s.shutdown_timeout_s - 5)
        self.shutting_down = True
        with contextlib.suppress(Exception):
            await self.health.set("", NOT_SERVING)
        self.loader.accepting = False
        with contextlib.suppress(Exception):
            await self.publisher.publish(force=True)
        await self._migrate(deadline)
        for entry in sorted(self.cache.entries(), key=lambda e: e.last_used):
            with contextlib.suppress(Exception):
                await self.loader.unload(entry.model_id, reason="shutdown")
        await self.server.stop(grace=min(5.0, max(0.5, deadline - time.monotonic())))
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.publisher.stop()
        with contextlib.suppress(Exception):
            await self.election.stop() if hasattr(self.election, "stop") else await self.election.resign()
        await self.reaper.close()
        await self.loader.close()
        await self.api.close()
        await self.placer.close()
        await self.peers.close()
        await self.session.stop(revoke=True)
        for t in (self.registry_table, self.instances_table, self.vmodels_table):
            await t.stop()
        if self.runtime_process is not None:
            await self.runtime_process.stop()
        await self.runtime_client.close()
        if self.runtime.link is not None:
            await self.runtime.link.close()
        await self.kv.close()
        log.info("pod %s stopped", self.instance_id)

    async def _migrate(self, deadline: float) -> None:
        """Load recently used local models on other pods before leaving (graceful shutdown)."""
        others = [
            i for i, r in self.view.instances().items() if i != self.instance_id and not r.shutting_down
        ]
        if not others:
            return
        cutoff = now_ms() - MIGRATION_CUTOFF_MS
        recent = sorted(
            (e for e in self.cache.entries() if e.last_used >= cutoff), key=lambda e: -e.last_used
        )
        for entry in recent:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("shutdown deadline reached before every model was migrated")
                return
            rec = self.view.model(entry.model_id)
            if rec is None:
                continue
            instances = self.view.instances()
            elsewhere = [
                i
                for i in rec.loaded
                if i != self.instance_id and i in instances and not instances[i].shutting_down
            ]
            if elsewhere:
                continue  # another copy already serves it
            try:
                # an additional copy (not a first load: this pod's own claim stands until it leaves)
                target = await asyncio.wait_for(
                    self.placer.add_copy(
                        entry.model_id, size=entry.size, last_used=entry.last_used, exclude={self.instance_id}
                    ),
                    timeout=remaining,
                )
            except (MeshError, TimeoutError) as exc:
                log.warning("could not migrate %s: %s", entry.model_id, exc)
                continue
            if target is None:
                log.warning("could not migrate %s: no other pod can take it", entry.model_id)
            else:
                log.info("migrated %s to %s before shutdown", entry.model_id, target)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def serve(settings: MeshSettings) -> None:
    pod = Pod(settings)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await pod.start()
        await stop.wait()
    finally:
        log.info("shutting down")
        await pod.stop() if hasattr(pod, "server") else await _partial_stop(pod)


async def _partial_stop(pod: Pod) -> None:
    """Start-up failed half way: release what was started."""
    for name in ("runtime_process",):
        proc = getattr(pod, name, None)
        if proc is not None:
            await proc.stop()
    session = getattr(pod, "session", None)
    if session is not None:
        await session.stop(revoke=True)
    kv = getattr(pod, "kv", None)
    if kv is not None:
        await kv.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mesh serve", description="Run one mesh pod.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    settings = load_settings(args)
    _configure_logging(settings.log_level)
    try:
        asyncio.run(serve(settings))
    except MeshError as exc:
        log.error("pod failed: %s", exc.message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
