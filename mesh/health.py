"""Health of a pod: readiness ("can serve now") and liveness ("the process is not wedged"), told truthfully.

**Readiness** (gRPC ``grpc.health.v1`` service ``""`` and the served service names, V2 ``ServerReady``,
REST ``GET /v2/health/ready``) is SERVING only while all of these hold:

1. start-up finished and the pod is not shutting down (SIGTERM turns it off first, before the drain);
2. the runtime is up: not between its death and the READY answer of its restarted process
   (``LocalRuntime.on_lost`` / ``on_back``), when every local copy is gone and loads are refused;
3. etcd is reachable, or has been unreachable for less than ``etcd_grace_s`` (``MM_ETCD_UNHEALTHY_GRACE_S``):
   the lease session and the registry watch both report their health; a short etcd blip does not take every pod
   out of its Service at once, a long outage does (placement, loads and management need etcd).

``PodHealth.refresh`` re-evaluates and pushes changes to the gRPC health servicer; the pod calls it when the
runtime dies or returns and every ``interval_s`` (the etcd grace is a matter of time). Every transition is
logged with its reason, and ``modelmesh_ready`` follows it.

**Liveness** (gRPC health service ``liveness``, V2 ``ServerLive``, REST ``GET /v2/health/live``) is answered by
the pod's event loop itself, so it fails exactly when the loop cannot answer: the process is *wedged* when its
event loop does not run a callback within ``stall_s`` (``MM_LIVENESS_STALL_S``): a handler blocking the loop
(a synchronous call, a CPU-bound loop, a deadlock on a thread lock), or the process stopped. Nothing else
makes a pod not live: an etcd outage, a dead runtime or a shutdown only make it not *ready*, so Kubernetes
never restarts a pod for a fault a restart would not fix. ``LoopWatchdog``, a daemon thread, measures the
loop's lag; when a stall passes ``stall_s`` it logs the loop thread's stack once (what is blocking it) and
counts ``modelmesh_event_loop_stalls_total``.

**The probe** (client side), for places where Kubernetes' own gRPC probe cannot go (TLS: the kubelet's gRPC
probe is plaintext only) and for the runtime container's preStop hook:

    python -m mesh.health check --address 127.0.0.1:8033 [--service liveness] [--tls-ca F --server-name N]
    python -m mesh.health wait-stopped --address 127.0.0.1:8033 --timeout 115

``check`` exits 0 when the service is SERVING and 1 otherwise; ``wait-stopped`` returns once nothing
accepts connections at the address (the mesh has exited), or after ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.metrics import MeshMetrics

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS_SERVICE = "liveness"
READINESS_SERVICE = ""


class PodHealth:
    def __init__(
        self,
        *,
        servicer: health.aio.HealthServicer,
        services: Iterable[str],
        runtime_up: Callable[[], bool],
        kv_healthy: Callable[[], bool],
        etcd_grace_s: float,
        metrics: MeshMetrics,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.servicer = servicer
        self.services = ("", *services)
        self.runtime_up = runtime_up
        self.kv_healthy = kv_healthy
        self.etcd_grace_s = etcd_grace_s
        self.metrics = metrics
        self.clock = clock
        self.started = False
        self.shutting_down = False
        self._kv_down_since: float | None = None
        self._published: bool | None = None
        self.reason = "starting"

    def evaluate(self) -> tuple[bool, str]:
        """(ready, why not): the readiness rules of the module docstring, now."""
        kv_ok = self.kv_healthy()
        now = self.clock.monotonic()
        if kv_ok:
            self._kv_down_since = None
        elif self._kv_down_since is None:
            self._kv_down_since = now
        if self.shutting_down:
            return False, "shutting down"
        if not self.started:
            return False, "starting"
        if not self.runtime_up():
            return False, "model runtime is down or restarting"
        if self._kv_down_since is not None and now - self._kv_down_since >= self.etcd_grace_s:
            return False, f"etcd unreachable for {now - self._kv_down_since:.0f}s"
        return True, ""

    def ready(self) -> bool:
        return self.evaluate()[0]

    async def refresh(self) -> bool:
        ready, reason = self.evaluate()
        self.reason = reason
        if ready != self._published:
            if self._published is not None:
                if ready:
                    log.info("pod is ready")
                else:
                    log.warning("pod is not ready: %s", reason)
            self._published = ready
            self.metrics.ready.set(1 if ready else 0)
            status = SERVING if ready else NOT_SERVING
            for service in self.services:
                await self.servicer.set(service, status)
        return ready

    async def start(self) -> None:
        """Publish NOT_SERVING (readiness) and SERVING (liveness: the loop answers) before the server starts."""
        await self.servicer.set(LIVENESS_SERVICE, SERVING)
        await self.refresh()


class LoopWatchdog:
    """Measures the event loop's lag from a daemon thread (see the module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        stall_s: float,
        metrics: MeshMetrics,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.loop = loop
        self.stall_s = stall_s
        self.metrics = metrics
        self.clock = clock
        self.period_s = max(0.05, min(1.0, stall_s / 4))
        self.last_beat = clock.monotonic()
        self.stalls = 0
        self._stalled = False
        self._stop = threading.Event()
        self._loop_thread = threading.get_ident()  # built on the loop's thread
        self._thread = threading.Thread(target=self._run, name="mesh-loop-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def lag_s(self) -> float:
        return max(0.0, self.clock.monotonic() - self.last_beat)

    def _beat(self) -> None:
        self.last_beat = self.clock.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.loop.call_soon_threadsafe(self._beat)
            except RuntimeError:  # the loop is closed: the process is ending
                return
            lag = self.lag_s() - self.period_s
            if lag > self.stall_s and not self._stalled:
                self._stalled = True
                self.stalls += 1
                self.metrics.event_loop_stalls.inc()
                frame = sys._current_frames().get(self._loop_thread)
                stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no stack)"
                log.error(
                    "event loop stalled for %.1fs (liveness limit %.1fs); it is running:\n%s",
                    lag,
                    self.stall_s,
                    stack,
                )
            elif lag <= self.stall_s and self._stalled:
                self._stalled = False
                log.warning("event loop runs again")


# ---------------------------------------------------------------------------------------------------------
# Runtime reachability and the probe (client side)


def channel_up(channel: grpc.aio.Channel, previous: bool) -> bool:
    """Whether a channel's peer is reachable: READY/IDLE yes, TRANSIENT_FAILURE/SHUTDOWN no, CONNECTING keeps
    the previous verdict (a reconnect in progress says nothing new). Asks an idle channel to connect."""
    state = channel.get_state(try_to_connect=True)
    if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE):
        return True
    if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
        return False
    return previous


# ---------------------------------------------------------------------------------------------------------
# The probe (client side)


def check(
    address: str,
    *,
    service: str = READINESS_SERVICE,
    tls_ca: str | None = None,
    server_name: str | None = None,
    timeout: float = 3.0,
) -> tuple[bool, str]:
    """One ``grpc.health.v1.Health/Check``: (SERVING?, what was answered)."""
    options = [("grpc.ssl_target_name_override", server_name)] if tls_ca and server_name else []
    if tls_ca:
        creds = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address)
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
    return resp.status == SERVING, health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def accepts_connections(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def wait_stopped(address: str, *, timeout: float, interval: float = 0.5) -> bool:
    """Block until nothing accepts connections at ``address`` (True) or ``timeout`` passes (False)."""
    deadline = SYSTEM_CLOCK.monotonic() + timeout
    while accepts_connections(address):
        if SYSTEM_CLOCK.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mesh.health", description="Health probes of a mesh pod.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="exit 0 when the health service is SERVING, else 1")
    c.add_argument(
        "--address", default="127.0.0.1:8033", help="host:port of the pod (default 127.0.0.1:8033)"
    )
    c.add_argument("--service", default=READINESS_SERVICE, help="'' = readiness (default), 'liveness'")
    c.add_argument("--tls-ca", default=None, help="PEM CA bundle: connect with TLS")
    c.add_argument("--server-name", default=None, help="name the server certificate must carry (TLS)")
    c.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    w = sub.add_parser("wait-stopped", help="return once the pod no longer accepts connections")
    w.add_argument(
        "--address", default="127.0.0.1:8033", help="host:port of the pod (default 127.0.0.1:8033)"
    )
    w.add_argument("--timeout", type=float, required=True, help="give up after this many seconds")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        ok, answer = check(
            args.address,
            service=args.service,
            tls_ca=args.tls_ca,
            server_name=args.server_name,
            timeout=args.timeout,
        )
        print(f"{args.address} service {args.service!r}: {answer}")
        return 0 if ok else 1
    stopped = wait_stopped(args.address, timeout=args.timeout)
    print(f"{args.address}: {'stopped' if stopped else f'still accepting after {args.timeout:.0f}s'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
