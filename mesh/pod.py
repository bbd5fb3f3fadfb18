"""Pod: the composition root of one mesh process. Builds every part, starts them in order, stops them in reverse.

Nothing here decides anything: each policy lives in its own module (placement, availability, copies, drain,
janitor, reaper, vModels) and this file only wires them. Every background task runs under one
``TaskSupervisor``; time comes from one injected ``Clock``; every RPC leaves through the ``ErrorBoundary``.

Start: etcd client → tables (registry, instances, vmodels: listed, then watched) → lease session → runtime
(started and supervised when ``runtime_cmd`` is set; waited for READY, which purges leftovers) → cache,
loader, availability, router → stale claims of this instance removed → instance record published → leader
election, reaper, janitor, copy scaler, stats → gRPC server and metrics → SERVING.

Stop (SIGTERM/SIGINT): NOT_SERVING and ``shuttingDown`` published (no new loads come here), the drain
(``mesh.cluster.drain``: hot models loaded elsewhere first, then local copies released), the server drains,
every task is cancelled, the lease is revoked, the runtime is stopped.
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
import shlex
import signal
import sys

import grpc
from grpc_health.v1 import health_pb2_grpc

from mesh import __version__
from mesh.api.admin import MeshAdminServicer
from mesh.api.model_mesh import ModelMeshServicer, add_to_server
from mesh.boundary import ErrorBoundary
from mesh.channels import SERVER_OPTIONS, TlsFiles, add_port, channel_options, server_ssl_context
from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.cluster.availability import Availability
from mesh.cluster.drain import Drain
from mesh.cluster.instances import InstancePublisher
from mesh.cluster.janitor import Janitor, Reaper, SpareFiller
from mesh.cluster.peer_secret import peer_secret
from mesh.cluster.placement import TypeConstraints
from mesh.cluster.registry import LocalCopyRecords, Registry
from mesh.cluster.reservations import Reservations
from mesh.cluster.scaling import CopyScaler
from mesh.cluster.view import ViewHolder
from mesh.cluster.vmodels import VModels
from mesh.dataplane.headers import PEER_TOKEN
from mesh.dataplane.http import HttpServer
from mesh.dataplane.local_table import RuntimeRoute
from mesh.dataplane.observe import RequestObserver
from mesh.dataplane.peer_auth import PeerAuth
from mesh.dataplane.rest import RestApi
from mesh.dataplane.router import Router
from mesh.dataplane.server import InferenceHandler, add_health
from mesh.errors import MeshError
from mesh.health import LoopWatchdog, PodHealth, channel_up
from mesh.ids import check_id, default_instance_id
from mesh.kv.client import KvClient
from mesh.kv.election import Election
from mesh.kv.keys import Keys
from mesh.kv.records import InstanceRecord, ModelRecord, VModelRecord
from mesh.kv.session import Session
from mesh.kv.table import Table
from mesh.local.cache import LocalCache
from mesh.local.eviction import make_policy
from mesh.local.loader import Loader
from mesh.local.runtime import LocalRuntime
from mesh.local.stats import RequestStats
from mesh.logs import add_log_fields, configure_logging
from mesh.metrics import ClusterTotals, InstanceStats, MeshMetrics
from mesh.metrics_merge import MergedMetrics
from mesh.peers import PeerClient
from mesh.settings import MeshSettings, SettingError, add_arguments, load_settings
from mesh.tasks import TaskSupervisor
from mesh.tracing import TRACING, TracingUnavailable
from mesh.workers import DataPlaneWorkers, WorkerFeed, worker_args
from protos.meshadmin import admin_pb2_grpc

log = logging.getLogger("mesh.pod")


class Pod:
    def __init__(
        self, settings: MeshSettings, *, clock: Clock = SYSTEM_CLOCK, metrics: MeshMetrics | None = None
    ):
        self.settings = settings
        self.clock = clock
        self.instance_id = check_id(
            settings.instance_id or default_instance_id(settings.hostname), what="instance id"
        )
        self.keys = Keys.for_root(settings.key_root)
        self.metrics = metrics or MeshMetrics(
            per_model=settings.per_model_metrics, per_model_cap=settings.per_model_metrics_max
        )
        self.tasks = TaskSupervisor(on_restart=lambda name: self.metrics.task_restarts.labels(name).inc())
        self.stats = RequestStats(window_s=6 * settings.stats_tick_s, tick_s=settings.stats_tick_s)
        self.start_time = clock.now_ms()
        self.workers: DataPlaneWorkers | None = None
        self.shutting_down = False
        self.rng = random.Random()
        self.http: HttpServer | None = None
        self._instance_stats: InstanceStats | None = None
        self._totals: tuple[float, ClusterTotals] | None = None  # (computed at, totals): leader only

    # ------------------------------------------------------------------ start
    async def start(self) -> None:
        s = self.settings
        await self._start_kv()
        self.runtime = LocalRuntime(
            spi_address=s.runtime_address,
            serving_address=s.serving,
            command=shlex.split(s.runtime_cmd) if s.runtime_cmd else None,
            env=s.runtime_process_env(),
            startup_timeout_s=s.runtime_startup_timeout_s,
            max_message_bytes=s.max_message_bytes,
            on_restart=self.metrics.runtime_restarts.inc,
            clock=self.clock,
            inprocess=s.runtime_inprocess,
        )
        info = await self.runtime.start()
        self.info = info
        self.cache = LocalCache(s.capacity_bytes or info.capacity, policy=make_policy(s.eviction_policy))
        default_size = s.default_model_size or info.default_model_size
        if self.cache.capacity < 2 * default_size:
            log.warning(
                "cache capacity %d is below twice the default model size %d: models of unknown size will not fit",
                self.cache.capacity,
                default_size,
            )
        self._build_cluster(info)
        await self._release_stale_claims()
        await self.publisher.publish(force=True)
        self.tasks.supervise("mesh:publisher", self.publisher.run)
        await self._start_leader_work()
        self._start_local_work()
        await self._start_server()
        await self._start_workers()
        await self._start_ops()
        log.info(
            "pod %s serving on %s (REST %s, metrics %s, runtime %s, capacity %d bytes)",
            self.instance_id,
            s.advertised,
            f"{s.host}:{self.http.port}" if self.http else "off",
            f"{s.host}:{s.metrics_port}" if s.metrics_port else "off",
            s.runtime_address,
            self.cache.capacity,
        )

    async def _start_kv(self) -> None:
        s = self.settings
        self.kv = KvClient.from_settings(s)
        await self.kv.connect()
        self.registry_table = Table(
            self.kv, self.keys.registry_prefix, ModelRecord.from_json, name="registry"
        )
        self.instances_table = Table(
            self.kv, self.keys.instances_prefix, InstanceRecord.from_json, name="instances"
        )
        self.vmodels_table = Table(self.kv, self.keys.vmodels_prefix, VModelRecord.from_json, name="vmodels")
        for t in (self.registry_table, self.instances_table, self.vmodels_table):
            await t.start(self.tasks)
        self.session = Session(
            self.kv, ttl=s.lease_ttl_s, on_lease=self._on_new_lease, name="pod", clock=self.clock
        )
        await self.session.start(tasks=self.tasks)
        self.peer_auth = PeerAuth(await peer_secret(self.kv, self.keys, path=s.peer_secret_path))

    def _build_cluster(self, info) -> None:
        s, clock, me = self.settings, self.clock, self.instance_id
        self.views = ViewHolder(me, self.instances_table, self.registry_table, self.vmodels_table)
        self.registry = Registry(
            self.registry_table, clock, on_write=lambda: self.metrics.kv_writes.labels("registry").inc()
        )
        self.loader = Loader(
            instance_id=me,
            cache=self.cache,
            runtime=self.runtime.client,
            hooks=LocalCopyRecords(self.registry, me, lambda: self.views.current.alive()),
            info=info,
            metrics=self.metrics,
            tasks=self.tasks,
            load_timeout_ms=s.load_timeout_ms,
            default_model_size=s.default_model_size,
            on_change=self._local_change,
            clock=clock,
        )
        self.runtime.on_lost(self._runtime_lost)
        self.runtime.on_back(self._runtime_back)
        self.tls = TlsFiles(ca=s.tls_ca, cert=s.tls_cert, key=s.tls_key)
        self.peers = PeerClient(
            auth_metadata=self.peer_auth.metadata,
            tls=self.tls if self.tls.enabled else None,
            max_message_bytes=s.max_message_bytes,
            connect_timeout_s=s.peer_connect_timeout_s,
        )
        self.views.add_listener(lambda view: self.peers.retain({r.address for r in view.instances.values()}))
        self.availability = Availability(
            instance_id=me,
            views=self.views,
            registry=self.registry,
            cache=self.cache,
            loader=self.loader,
            peers=self.peers,
            reservations=Reservations(me, self._instance_record),
            constraints=TypeConstraints.parse(s.type_constraints),
            max_load_failures=s.max_load_failures,
            load_failure_expiry_ms=s.load_failure_expiry_ms,
            max_hops=s.max_hops,
            remote_load_timeout_s=2 * self.loader.load_timeout_s + 30,
            clock=clock,
            rng=self.rng,
            can_claim=lambda: self.session.healthy,
        )
        self.router = Router(
            instance_id=me,
            view=lambda: self.views.current,
            cache=self.cache,
            cold=self.availability,
            runtime=lambda: self.runtime.link,
            peers=self.peers,
            peer_auth=self.peer_auth,
            stats=self.stats,
            metrics=self.metrics,
            request_timeout_s=s.request_timeout_s,
            peer_hop_fraction=s.peer_hop_fraction,
            clock=clock,
            rng=self.rng,
        )
        self.registry_table.add_listener(self._on_record_change)
        self.registry_table.add_listener(self.availability.on_record_change)
        self.publisher = InstancePublisher(
            instance_id=me,
            table=self.instances_table,
            build=self._instance_record,
            lease_id=lambda: self.session.lease_id or None,
            interval_s=s.publish_interval_s,
            on_write=lambda: self.metrics.kv_writes.labels("instances").inc(),
            clock=clock,
        )
        self.drain = Drain(
            instance_id=me,
            views=self.views,
            cache=self.cache,
            loader=self.loader,
            availability=self.availability,
            clock=clock,
        )

    async def _start_leader_work(self) -> None:
        s = self.settings
        self.election = Election(self.kv, self.keys.leader, self.instance_id, self.session)
        self.reaper = Reaper(
            registry=self.registry,
            views=self.views,
            failure_expiry_ms=s.load_failure_expiry_ms,
            interval_s=max(5.0, s.lease_ttl_s),
            availability=self.availability,
            tasks=self.tasks,
            is_leader=lambda: self.election.is_leader,
            replace_lost=s.replace_lost_models,
            clock=self.clock,
        )
        self.election.on_change(self._leader_changed)
        self.instances_table.add_listener(self.reaper.on_instance_change)
        self.registry_table.add_listener(self.reaper.on_record_change)
        await self.election.start(self.tasks)
        self.tasks.every(
            "mesh:reaper", self.reaper.interval_s, self.reaper.sweep_if_leader, kick=self.reaper.kick
        )
        if s.proactive_loading:
            filler = SpareFiller(
                views=self.views,
                availability=self.availability,
                tasks=self.tasks,
                is_leader=lambda: self.election.is_leader,
                kv_healthy=self.kv_healthy,
                failure_expiry_ms=s.load_failure_expiry_ms,
                constraints=TypeConstraints.parse(s.type_constraints),
                clock=self.clock,
            )
            self.tasks.every("mesh:proactive", s.scale_check_interval_s, filler.run_once)

    def _start_local_work(self) -> None:
        s = self.settings
        self.janitor = Janitor(
            instance_id=self.instance_id,
            registry=self.registry,
            cache=self.cache,
            loader=self.loader,
            interval_s=s.janitor_interval_s,
            alive=lambda: self.views.current.alive(),
            idle_unload_s=s.idle_unload_s,
            clock=self.clock,
        )
        self.scaler = CopyScaler(
            instance_id=self.instance_id,
            views=self.views,
            cache=self.cache,
            stats=self.stats,
            availability=self.availability,
            loader=self.loader,
            rpm_threshold=s.scaleup_rpm_threshold,
            interval_s=s.scale_check_interval_s,
            second_copy_after_s=s.second_copy_after_s,
            extra_copy_idle_s=s.extra_copy_idle_s,
            clock=self.clock,
        )
        self.tasks.every("mesh:scaler", s.scale_check_interval_s, self._scale_copies)
        self.tasks.every("mesh:janitor", s.janitor_interval_s, self.janitor.run_once)
        self.tasks.every("mesh:stats", s.stats_tick_s, self._roll_stats)

    async def _start_server(self) -> None:
        s = self.settings
        # several data-plane processes share the port (mesh.workers): the owner's socket must allow it too
        sharing = [("grpc.so_reuseport", 1)] if s.dataplane_processes > 1 else []
        self.server = grpc.aio.server(
            options=[*channel_options(s.max_message_bytes), *SERVER_OPTIONS, *sharing],
            interceptors=[ErrorBoundary(log)],
        )
        self.api = ModelMeshServicer(
            instance_id=self.instance_id,
            registry=self.registry,
            views=self.views,
            cache=self.cache,
            loader=self.loader,
            availability=self.availability,
            failure_expiry_ms=s.load_failure_expiry_ms,
            kv_healthy=self.kv_healthy,
            tasks=self.tasks,
            peer_auth=self.peer_auth,
            clock=self.clock,
            default_vmodel_owner=s.default_vmodel_owner,
        )
        self.vmodels = VModels(
            self.views,
            kv=self.kv,
            table=self.vmodels_table,
            registry=self.registry,
            availability=self.availability,
            status_of=self.api.status_of,
            load=self.api.load_and_status,
            tasks=self.tasks,
            clock=self.clock,
        )
        self.api.vmodels = self.vmodels
        self.admin = MeshAdminServicer(
            instance_id=self.instance_id,
            views=self.views,
            cache=self.cache,
            is_leader=lambda: self.election.leader_id,
            failure_expiry_ms=s.load_failure_expiry_ms,
            load_timeout_ms=lambda: int(self.loader.load_timeout_s * 1000),
            clock=self.clock,
        )
        self.health = PodHealth(
            servicer=add_health(self.server),
            services=("mmesh.ModelMesh", "inference.GRPCInferenceService"),
            runtime_up=self._runtime_up,
            kv_healthy=self.kv_healthy,
            etcd_grace_s=s.etcd_unhealthy_grace_s,
            metrics=self.metrics,
            clock=self.clock,
        )
        await self.health.start()
        self.observer = RequestObserver(self.metrics, pod=self.instance_id, log_requests=s.log_requests)
        self._add_services(self.server, self.observer)
        port = add_port(
            self.server,
            f"{s.host}:{s.port}",
            tls=self.tls if self.tls.cert else None,
            client_auth=s.tls_client_auth,
        )
        if not port:
            raise RuntimeError(f"could not bind {s.host}:{s.port}")
        self.bound_port = port
        await self.server.start()
        self.vmodels.start(lambda: self.election.is_leader)

    # ------------------------------------------------------------------ REST, metrics, health (issue 10)
    async def _start_ops(self) -> None:
        """REST listener, metrics endpoint, loop watchdog, periodic health; then readiness goes SERVING."""
        s = self.settings
        if s.rest_port:
            api = RestApi(
                self.router, self.observer, ready=self.health.evaluate, version=__version__, clock=self.clock
            )
            self.http = HttpServer(
                api,
                max_body=s.max_message_bytes,
                read_timeout_s=s.rest_read_timeout_s,
                idle_timeout_s=s.rest_idle_timeout_s,
                max_connections=s.rest_max_connections,
            )
            # HTTPS with the gRPC listener's certificate and client-auth rule when TLS is configured
            ssl_context = server_ssl_context(self.tls, s.tls_client_auth) if self.tls.cert else None
            await self.http.start(s.host, s.rest_port, ssl_context=ssl_context)
        self.metrics.bind_state(
            instance=lambda: self._instance_stats, cluster=self._cluster_totals, now_ms=self.clock.now_ms
        )
        self._local_change()
        self.metrics.serve(
            s.metrics_port,
            addr="127.0.0.1" if s.host.startswith("127.") else "0.0.0.0",
            source=self.workers.metrics if self.workers is not None else None,
        )
        self.watchdog = LoopWatchdog(
            asyncio.get_running_loop(), stall_s=s.liveness_stall_s, metrics=self.metrics, clock=self.clock
        )
        self.watchdog.start()
        self.ready = True
        self._runtime_reachable = True
        self.health.started = True
        await self.health.refresh()
        self.tasks.every("mesh:health", s.health_check_interval_s, self._health_tick)

    async def _health_tick(self) -> None:
        self._local_change(publish=False)  # the LRU copy's last use moves without a load or an eviction
        await self.health.refresh()

    def _cluster_totals(self) -> ClusterTotals | None:
        """ModelMesh's cluster-wide gauges, on the leader only; computed from the immutable view at most every
        5 s (this runs on the metrics server's thread)."""
        if not self.election.is_leader:
            return None
        now = self.clock.monotonic()
        cached = self._totals
        if cached is not None and now - cached[0] < 5.0:
            return cached[1]
        now_ms, expiry = self.clock.now_ms(), self.settings.load_failure_expiry_ms
        loaded = failed = managed = 0
        for rec in self.views.current.models.values():
            managed += 1
            loaded += 1 if rec.loaded else 0
            failed += 1 if rec.recent_failures(now_ms, expiry) else 0
        totals = ClusterTotals(loaded=loaded, with_failure=failed, managed=managed)
        self._totals = (now, totals)
        return totals

    def _add_services(self, server: grpc.aio.Server, observer: RequestObserver) -> None:
        """The pod's services (management, admin, inference) on ``server``: the external one, or the local
        socket the data-plane workers pass calls to (mesh.workers)."""
        add_to_server(self.api, server)
        admin_pb2_grpc.add_MeshAdminServicer_to_server(self.admin, server)
        server.add_generic_rpc_handlers(
            (
                InferenceHandler(
                    self.router,
                    observer,
                    self.health.ready,
                    __version__,
                    known_methods=lambda: self.runtime.link.declared_methods if self.runtime.link else (),
                    clock=self.clock,
                ),
            )
        )

    async def _start_workers(self) -> None:
        """``MM_DATAPLANE_PROCESSES`` > 1: start the workers that share the external port (mesh.workers)."""
        s = self.settings
        if s.dataplane_processes <= 1:
            return
        feed = WorkerFeed(
            instance_id=self.instance_id,
            peer_token=dict(self.peer_auth.metadata)[PEER_TOKEN],
            cache=self.cache,
            runtime_route=self._runtime_route,
            vmodels={vid: rec.active for vid, rec in self.views.current.vmodels.items()},
        )
        self.vmodels_table.add_listener(
            lambda vid, old, new: feed.vmodel_changed(vid, None if new is None else new.active)
        )
        self.runtime.on_back(lambda info: feed.poke())
        self.workers = DataPlaneWorkers(
            processes=s.dataplane_processes,
            feed=feed,
            cache=self.cache,
            stats=self.stats,
            metrics=MergedMetrics(
                self.metrics.registry, requests_family=self.metrics.api_request_ms.describe()[0].name
            ),
            worker_args=worker_args(s, self.bound_port),
            clock=self.clock,
            max_message_bytes=s.max_message_bytes,
        )

        def local_services(server: grpc.aio.Server) -> None:
            # requests a worker passes on were counted (and logged) by that worker: these metrics are never
            # served, and no request line is written here
            self._add_services(
                server, RequestObserver(MeshMetrics(), pod=self.instance_id, log_requests=False)
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)

        await self.workers.start(local_services)

    def _runtime_route(self) -> RuntimeRoute | None:
        """Where the workers send inference for ACTIVE models (None while the runtime is down)."""
        link, info = self.runtime.link, self.runtime.info
        if link is None or info is None or not self.loader.runtime_ready:
            return None
        return RuntimeRoute(link.address, dict(info.method_infos), info.allow_any_method)

    # ------------------------------------------------------------------ wiring callbacks
    def kv_healthy(self) -> bool:
        return self.session.healthy and self.registry_table.healthy

    def _runtime_up(self) -> bool:
        """Readiness input: the runtime is up unless this pod knows it exited (and it is not back yet), or its
        channel cannot connect (a runtime container beside the pod that Kubernetes is restarting)."""
        if self.runtime.link is None or not self.loader.runtime_ready:
            return False
        self._runtime_reachable = channel_up(self.runtime.client.channel, self._runtime_reachable)
        return self._runtime_reachable

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

    def _local_change(self, publish: bool = True) -> None:
        cache = self.cache
        self._instance_stats = InstanceStats(
            capacity=cache.capacity, used=cache.used, models=len(cache), lru_ms=cache.oldest_last_used() or 0
        )
        if publish and hasattr(self, "publisher"):
            self.publisher.poke()
        if self.workers is not None:
            self.workers.feed.poke()

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
        if self.election.is_leader:
            log.info("this pod (%s) is now the leader", self.instance_id)
            self.reaper.kick.set()
            if getattr(self, "vmodels", None) is not None:
                self.vmodels.kick()

    async def _runtime_lost(self) -> None:
        """The runtime died: every local copy is gone from the cache and, as far as etcd answers, the registry."""
        lost = self.loader.runtime_lost()
        await self.health.refresh()  # not ready until the restarted runtime answers READY
        for entry in lost:
            with contextlib.suppress(MeshError):
                await self.registry.remove_copy(entry.model_id, self.instance_id, entry.last_used)

    def _runtime_back(self, info) -> None:
        self.info = info
        self.loader.set_runtime_info(info)
        self.loader.runtime_ready = True
        self.tasks.spawn("mesh:health-refresh", self.health.refresh())

    async def _scale_copies(self) -> None:
        """Copy scaling needs etcd for every copy it adds or removes: skip the check while etcd is lost, rather
        than start loads whose claims cannot be recorded (and that requests would then wait on)."""
        if self.kv_healthy():
            await self.scaler.run_once()

    async def _roll_stats(self) -> None:
        self.stats.roll(self.clock.now_ms())

    # ------------------------------------------------------------------ stop
    async def stop(self) -> None:
        s = self.settings
        deadline = self.clock.monotonic() + max(2.0, s.shutdown_timeout_s - 5)
        self.shutting_down = True
        self.health.shutting_down = True
        with contextlib.suppress(Exception):
            await self.health.refresh()
        self.loader.accepting = False
        with contextlib.suppress(Exception):
            await self.publisher.publish(force=True)
        await self.drain.run(deadline)
        grace = min(5.0, max(0.5, deadline - self.clock.monotonic()))
        if self.http is not None:
            await self.http.stop(grace_s=grace)
        if self.workers is not None:  # workers finish their calls (passed on to this process) first
            await asyncio.gather(self.server.stop(grace=grace), self.workers.stop(grace))
        else:
            await self.server.stop(grace=grace)
        if getattr(self, "watchdog", None) is not None:
            self.watchdog.stop()
        with contextlib.suppress(Exception):
            await self.election.resign()
        await self.tasks.close()
        await self.peers.close()
        await self.session.stop(revoke=True)
        for t in (self.registry_table, self.instances_table, self.vmodels_table):
            await t.stop()
        await self.runtime.stop()
        await self.kv.close()
        log.info("pod %s stopped", self.instance_id)

    async def stop_partial(self) -> None:
        """Start-up failed half way: release what was started."""
        if self.workers is not None:
            await self.workers.stop(1.0)
        runtime = getattr(self, "runtime", None)
        if runtime is not None:
            await runtime.stop()
        await self.tasks.close()
        session = getattr(self, "session", None)
        if session is not None:
            await session.stop(revoke=True)
        kv = getattr(self, "kv", None)
        if kv is not None:
            await kv.close()


async def serve(settings: MeshSettings) -> None:
    pod = Pod(settings)
    add_log_fields({"pod": pod.instance_id})
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await pod.start()
        await stop.wait()
    finally:
        log.info("shutting down")
        await pod.stop() if hasattr(pod, "server") else await pod.stop_partial()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mesh serve", description="Run one mesh pod.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
    except SettingError as exc:
        print(exc.message, file=sys.stderr)  # the whole story: "MM_X: 'v' is not <what>"
        return 2
    configure_logging(settings.log_level, settings.log_format, secrets=settings.secret_values())
    try:
        TRACING.configure(settings.tracing, service="modelmesh-py", endpoint=settings.tracing_endpoint)
    except TracingUnavailable as exc:
        log.error("%s", exc)
        return 1
    try:
        asyncio.run(serve(settings))
    except MeshError as exc:
        log.error("pod failed: %s", exc.message)
        return 1
    finally:
        TRACING.shutdown()  # flush spans still buffered
    return 0


if __name__ == "__main__":
    sys.exit(main())
