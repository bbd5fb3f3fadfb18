"""DataPlaneWorkers: the owner's side of a pod that serves its port from several processes (issue 9).

With ``MM_DATAPLANE_PROCESSES=N`` (N > 1) the pod process stays the **owner** (the only process with the etcd
session, the tables, the loader, the cache, placement and peers) and starts N-1 **workers**
(``python -m mesh.dataplane.worker``) that bind the same external port with SO_REUSEPORT and the same TLS
settings, so the kernel spreads client connections over all N processes. A worker serves inference for models
ACTIVE in this pod's cache straight from the runtime and passes everything else to the owner (see
``mesh.dataplane.worker``).

This module owns, in the owner process:

* the **local server**: a second gRPC server on a unix socket in a fresh private directory (mode 0700),
  never on a network port (the directory's name carries the owner's pid, so that one left by an owner killed
  with SIGKILL is removed by the next pod started on the host). It serves the pod's own services (management, admin, health, inference: the same
  servicers as the external port, added by the pod) for calls the workers pass on, plus ``meshlocal.PodLocal``;
* the **feed** (``WorkerFeed``): the routing table every worker follows (``PodLocal/Follow``): models ACTIVE
  in the cache, vModel → active model, the runtime's inference address and method table, the instance id and
  the peer token. A change is sent as soon as the owner's cache, vModels or runtime change (one message, not
  polled), so a worker stops sending a model to the runtime when the owner evicts it;
* **reports** (``PodLocal/Report``, every 100 ms from each worker): request counts per model go into the
  pod's ``RequestStats`` (rates, copy scaling, the instance record's rpm) and the newest last-used time into
  the cache entry (LRU order, ``lu``); the workers' metric totals go into ``mesh.metrics_merge``, which is what
  the pod's metrics port serves;
* the worker **processes**, each a ``mesh.process.SupervisedProcess``: restarted when they exit, killed with
  the pod (parent-death signal), stopped (SIGTERM, then SIGKILL) when the pod stops.

Requests passed on by a worker are counted by that worker, not again by the owner: the local server's
inference handler is given metrics that nothing serves.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import grpc

from mesh.boundary import ErrorBoundary
from mesh.channels import SERVER_OPTIONS, channel_options
from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.dataplane.local_table import DOWN, RuntimeRoute
from mesh.errors import InvalidRequest
from mesh.local.cache import EntryState, LocalCache
from mesh.local.stats import RequestStats
from mesh.metrics_merge import MergedMetrics
from mesh.process import SupervisedProcess
from protos.meshlocal import local_pb2 as pb
from protos.meshlocal import local_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

MAX_PROCESSES = 256
SOCKET_NAME = "local.sock"
SOCKET_DIR_PREFIX = "mesh-pod-socket-"  # + the owner's pid + "-" + random (tempfile)
VMODELS_PER_MESSAGE = 10_000  # a snapshot of many vModels spans several messages (message size limit)
FOLLOWER_BACKLOG = 10_000  # updates queued for a worker that does not read: past this its stream ends


class _Follower:
    """One worker's stream: updates queued in order; too many unread ends the stream (it re-follows)."""

    def __init__(self) -> None:
        self.queue: collections.deque[pb.TableUpdate] = collections.deque()
        self.wake = asyncio.Event()
        self.overflow = False

    def push(self, update: pb.TableUpdate) -> None:
        if len(self.queue) >= FOLLOWER_BACKLOG:
            self.overflow = True
        else:
            self.queue.append(update)
        self.wake.set()


class WorkerFeed:
    """The routing table the workers follow, built from the owner's cache, vModels and runtime."""

    def __init__(
        self,
        *,
        instance_id: str,
        peer_token: str,
        cache: LocalCache,
        runtime_route: Callable[[], RuntimeRoute | None],
        vmodels: Mapping[str, str],
    ) -> None:
        self.instance_id = instance_id
        self._peer_token = peer_token
        self._cache = cache
        self._runtime_route = runtime_route
        self._active = self._active_now()
        self._vmodels = dict(vmodels)  # vModel id -> active model id, as last sent
        self._vchanges: dict[str, str | None] = {}  # changes not sent yet (None = deleted)
        self._route = runtime_route()
        self._followers: set[_Follower] = set()
        self._scheduled = False

    def _active_now(self) -> frozenset[str]:
        return frozenset(e.model_id for e in self._cache.entries() if e.state is EntryState.ACTIVE)

    # -- changes
    def poke(self) -> None:
        """Something may have changed (cache, runtime): send the difference soon (once per loop turn)."""
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._scheduled = True
        loop.call_soon(self._publish)

    def vmodel_changed(self, vmodel_id: str, active: str | None) -> None:
        """``vmodel_id`` now has ``active`` as its active model ("" none; None: the vModel was deleted)."""
        self._vchanges[vmodel_id] = active
        self.poke()

    def _publish(self) -> None:
        self._scheduled = False
        update = self._diff()
        if update is not None:
            for follower in self._followers:
                follower.push(update)

    def _diff(self) -> pb.TableUpdate | None:
        active = self._active_now()
        added, removed = active - self._active, self._active - active
        self._active = active
        vset, vremoved = [], []
        changes, self._vchanges = self._vchanges, {}
        for vid, target in changes.items():
            if target is None:
                if self._vmodels.pop(vid, None) is not None:
                    vremoved.append(vid)
            elif self._vmodels.get(vid) != target:
                self._vmodels[vid] = target
                vset.append(pb.VModelActive(vmodel_id=vid, active_model_id=target))
        route = self._runtime_route()
        route_changed = route != self._route
        self._route = route
        if not (added or removed or vset or vremoved or route_changed):
            return None
        update = pb.TableUpdate(
            synced=True,
            active=sorted(added),
            inactive=sorted(removed),
            vmodels=vset,
            vmodels_removed=vremoved,
        )
        if route_changed:
            update.runtime.CopyFrom(route.to_proto() if route is not None else DOWN)
        return update

    def snapshot(self) -> list[pb.TableUpdate]:
        """The whole table as sent to a new follower: reset first, synced last."""
        self._publish()  # pending changes go to current followers first, so every follower sees one state
        first = pb.TableUpdate(
            reset=True,
            active=sorted(self._active),
            instance_id=self.instance_id,
            peer_token=self._peer_token,
        )
        first.runtime.CopyFrom(self._route.to_proto() if self._route is not None else DOWN)
        messages = [first]
        items = [pb.VModelActive(vmodel_id=k, active_model_id=v) for k, v in self._vmodels.items()]
        for i in range(0, len(items), VMODELS_PER_MESSAGE):
            if i:
                messages.append(pb.TableUpdate())
            messages[-1].vmodels.extend(items[i : i + VMODELS_PER_MESSAGE])
        messages[-1].synced = True
        return messages

    # -- streams
    async def follow(self) -> AsyncIterator[pb.TableUpdate]:
        follower = _Follower()
        messages = self.snapshot()  # no await between the snapshot and joining: no change can fall between
        self._followers.add(follower)
        try:
            for message in messages:
                yield message
            while not follower.overflow:
                await follower.wake.wait()
                follower.wake.clear()
                while follower.queue and not follower.overflow:
                    yield follower.queue.popleft()
            log.warning("a data-plane worker fell %d updates behind; it will re-follow", FOLLOWER_BACKLOG)
        finally:
            self._followers.discard(follower)

    @property
    def followers(self) -> int:
        return len(self._followers)


class _PodLocalServicer(pb_grpc.PodLocalServicer):
    def __init__(self, workers: DataPlaneWorkers) -> None:
        self._workers = workers

    async def Follow(self, request: pb.FollowRequest, context) -> AsyncIterator[pb.TableUpdate]:
        self._workers.check_slot(request.worker)
        log.info("data-plane worker %d (pid %d) follows the routing table", request.worker, request.pid)
        async for update in self._workers.feed.follow():
            yield update

    async def Report(self, request: pb.UsageReport, context) -> pb.ReportAck:
        self._workers.apply_report(request)
        return pb.ReportAck()


class DataPlaneWorkers:
    """N-1 worker processes sharing the pod's port, their feed, their reports and the local server."""

    def __init__(
        self,
        *,
        processes: int,
        feed: WorkerFeed,
        cache: LocalCache,
        stats: RequestStats,
        metrics: MergedMetrics,
        worker_args: list[str],
        clock: Clock = SYSTEM_CLOCK,
        max_message_bytes: int = 16 << 20,
        python: str = sys.executable,
        startup_timeout_s: float = 60.0,
    ) -> None:
        if not 2 <= processes <= MAX_PROCESSES:
            raise ValueError(f"data-plane processes must be between 1 and {MAX_PROCESSES}, not {processes}")
        self.slots = range(1, processes)
        self.feed = feed
        self.cache = cache
        self.stats = stats
        self.metrics = metrics
        self.clock = clock
        self._worker_args = list(worker_args)
        self._max = max_message_bytes
        self._python = python
        self._startup_timeout_s = startup_timeout_s
        remove_stale_socket_dirs()
        # mode 0700: this user's processes only; the pid in the name lets a later pod remove it if this one
        # is killed before it can (SIGKILL)
        self._dir = Path(tempfile.mkdtemp(prefix=f"{SOCKET_DIR_PREFIX}{os.getpid()}-"))
        self.socket = self._dir / SOCKET_NAME
        self.address = f"unix:{self.socket}"
        self.server: grpc.aio.Server | None = None
        self.processes: dict[int, SupervisedProcess] = {}
        self._reported: set[int] = set()  # slots whose current process has reported (it serves the port)
        self._changed = asyncio.Event()

    def check_slot(self, slot: int) -> None:
        if slot not in self.slots:
            raise InvalidRequest(f"no data-plane worker slot {slot} in this pod")

    # -- start and stop
    async def start(self, add_pod_services: Callable[[grpc.aio.Server], None]) -> None:
        """Serve the local socket, start the workers and wait (bounded) until each serves the port."""
        server = grpc.aio.server(
            options=[*channel_options(self._max), *SERVER_OPTIONS],
            interceptors=[ErrorBoundary(log)],
        )
        add_pod_services(server)
        pb_grpc.add_PodLocalServicer_to_server(_PodLocalServicer(self), server)
        if not server.add_insecure_port(self.address):
            raise RuntimeError(f"could not bind the pod's local socket {self.socket}")
        await server.start()
        self.server = server
        for slot in self.slots:
            argv = [self._python, "-m", "mesh.dataplane.worker", "--owner", self.address, "--slot", str(slot)]
            process = SupervisedProcess(
                [*argv, *self._worker_args],
                name=f"dataplane-worker-{slot}",
                on_exit=lambda code, slot=slot: self._exited(slot),
                clock=self.clock,
            )
            self.processes[slot] = process
            await process.start()
        try:
            async with asyncio.timeout(self._startup_timeout_s):
                while len(self._reported) < len(self.slots):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            missing = sorted(set(self.slots) - self._reported)
            log.warning("data-plane workers %s not serving after %.0fs", missing, self._startup_timeout_s)
        log.info("%d data-plane worker(s) serving with this pod", len(self._reported))

    def _exited(self, slot: int) -> None:
        self._reported.discard(slot)

    async def stop(self, grace: float) -> None:
        """SIGTERM the workers (they finish in-flight calls within ``grace``), then close the local server."""
        await asyncio.gather(*(p.stop(timeout=grace + 3) for p in self.processes.values()))
        if self.server is not None:
            await self.server.stop(0.5)
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- reports
    def apply_report(self, report: pb.UsageReport) -> None:
        self.check_slot(report.worker)
        now = self.clock.now_ms()
        cache, stats = self.cache, self.stats
        for u in report.usage:
            entry = cache.get(u.model_id)
            if entry is None:  # evicted since: its requests were served, but there is no copy to credit
                continue
            last_used = min(u.last_used_ms, now)
            if entry.last_used < last_used:
                entry.last_used = last_used
            stats.record(u.model_id, u.requests)
        if report.metrics:
            self.metrics.update(report.worker, report.pid, report.metrics)
        if report.worker not in self._reported:
            self._reported.add(report.worker)
            self._changed.set()

    @property
    def serving(self) -> list[int]:
        return sorted(self._reported)

    @property
    def pids(self) -> dict[int, int | None]:
        return {slot: p.pid for slot, p in self.processes.items()}


def worker_args(settings, port: int) -> list[str]:
    """The flags of a worker process, from the pod's settings (``MeshSettings``) and its bound port."""
    s = settings
    args = [
        "--host", s.host,
        "--port", str(port),
        "--max-message-bytes", str(s.max_message_bytes),
        "--request-timeout-s", str(s.request_timeout_s),
        "--log-level", s.log_level,
        "--log-format", s.log_format,
    ]  # fmt: skip
    if s.log_requests:
        args.append("--log-requests")
    if s.tls_cert:
        args += ["--tls-cert", s.tls_cert, "--tls-key", s.tls_key, "--tls-client-auth", s.tls_client_auth]
        if s.tls_ca:
            args += ["--tls-ca", s.tls_ca]
    return args


def remove_stale_socket_dirs(root: str | None = None) -> None:
    """Remove the local-socket directories of owners that are gone (killed before they could remove them):
    only directories of this naming, owned by this user, whose pid is no longer a running process."""
    root = root or tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        if not name.startswith(SOCKET_DIR_PREFIX):
            continue
        pid_text = name[len(SOCKET_DIR_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        path = os.path.join(root, name)
        try:
            if os.stat(path, follow_symlinks=False).st_uid != os.getuid() or _alive(int(pid_text)):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
