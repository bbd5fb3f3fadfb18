"""Pod health for Kubernetes: what the pod reports on ``grpc.health.v1``, and the probe that asks it.

Owns the two health services of the external port and the rule that sets them:

- ``""`` (readiness, the service ModelMesh clients and Kubernetes' gRPC readiness probe ask): SERVING while
  the pod can serve: start-up finished, not shutting down, the runtime up, and etcd reachable or lost for
  less than ``ready_etcd_grace_s``. The grace keeps a short etcd blip from emptying a Service of endpoints
  while loaded models still serve (DESIGN §5); after it, traffic goes to pods that still see the cluster.
- ``"liveness"``: SERVING from the moment the server listens until the process ends. Its only question is
  "does the event loop still answer", so a pod that lost etcd or its runtime is not restarted for it (a
  restart would not bring either back, and would drop the models this pod still serves).

``PodHealth.run`` re-evaluates the rule every second from a ``PodState`` snapshot the pod provides (the pod
stays the owner of its state; this module only reads it) and writes a status only when it changes.

Also the client side, for places where Kubernetes' own gRPC probe cannot go (TLS: the kubelet's gRPC probe
is plaintext only) and for the runtime container's preStop hook:

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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

READINESS_SERVICE = ""
LIVENESS_SERVICE = "liveness"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CHECK_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class PodState:
    """What readiness depends on, as the pod sees it at one moment."""

    started: bool
    shutting_down: bool
    runtime_up: bool
    kv_healthy: bool


class ReadinessRule:
    """The readiness rule (pure apart from remembering since when etcd has been lost)."""

    def __init__(self, kv_grace_s: float) -> None:
        self.kv_grace_s = kv_grace_s
        self._kv_lost_since: float | None = None

    def ready(self, state: PodState, now: float) -> bool:
        if state.kv_healthy:
            self._kv_lost_since = None
        elif self._kv_lost_since is None:
            self._kv_lost_since = now
        kv_ok = self._kv_lost_since is None or now - self._kv_lost_since < self.kv_grace_s
        return state.started and not state.shutting_down and state.runtime_up and kv_ok


class PodHealth:
    """Sets the readiness and liveness services of a ``grpc.health.v1`` servicer."""

    def __init__(self, servicer, *, kv_grace_s: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self._servicer = servicer
        self._rule = ReadinessRule(kv_grace_s)
        self._clock = clock
        self._ready: bool | None = None

    async def listening(self) -> None:
        """The server accepts calls: alive, not ready yet."""
        await self._servicer.set(LIVENESS_SERVICE, SERVING)
        await self._set_ready(False)

    async def update(self, state: PodState) -> bool:
        ready = self._rule.ready(state, self._clock.monotonic())
        await self._set_ready(ready)
        return ready

    async def run(self, snapshot: Callable[[], PodState], interval_s: float = CHECK_INTERVAL_S) -> None:
        while True:
            await self.update(snapshot())
            await asyncio.sleep(interval_s)

    async def _set_ready(self, ready: bool) -> None:
        if ready != self._ready:
            if self._ready is not None:
                log.info("readiness: %s", "SERVING" if ready else "NOT_SERVING")
            self._ready = ready
            await self._servicer.set(READINESS_SERVICE, SERVING if ready else NOT_SERVING)


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
