"""mesh.health without a server: the readiness rule as a table over time, PodHealth writing statuses only on
change, liveness from the first listen, and the channel-state reading of runtime reachability."""

from __future__ import annotations

import grpc
import pytest

from mesh.health import (
    LIVENESS_SERVICE,
    NOT_SERVING,
    SERVING,
    PodHealth,
    build_parser,
    channel_up,
)
from mesh.metrics import MeshMetrics


class FakeServicer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    async def set(self, service: str, status: int) -> None:
        self.calls.append((service, status))


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def monotonic(self) -> float:
        return self.t

    def now_ms(self) -> int:
        return int(self.t * 1000)


def _health(*, runtime=True, kv=True, grace=30.0):
    state = {"runtime": runtime, "kv": kv}
    servicer, clock = FakeServicer(), FakeClock()
    health = PodHealth(
        servicer=servicer,
        services=(),
        runtime_up=lambda: state["runtime"],
        kv_healthy=lambda: state["kv"],
        etcd_grace_s=grace,
        metrics=MeshMetrics(),
        clock=clock,
    )
    return health, servicer, clock, state


@pytest.mark.parametrize(
    ("started", "shutting_down", "runtime", "ready"),
    [
        (True, False, True, True),
        (False, False, True, False),
        (True, True, True, False),
        (True, False, False, False),
    ],
)
def test_readiness_needs_started_not_shutting_down_and_a_runtime(
    started, shutting_down, runtime, ready
) -> None:
    health, _, _, _ = _health(runtime=runtime)
    health.started, health.shutting_down = started, shutting_down
    assert health.ready() is ready


def test_etcd_loss_is_tolerated_for_the_grace_then_not_and_recovers() -> None:
    health, _, clock, state = _health(kv=False, grace=30)
    health.started = True
    clock.t = 100.0
    assert health.ready()  # lost since 100
    clock.t = 129.9
    assert health.ready()
    clock.t = 130.0
    assert not health.ready()
    state["kv"], clock.t = True, 131.0
    assert health.ready()  # back: ready at once
    state["kv"], clock.t = False, 140.0
    assert health.ready()  # a new loss starts a new grace
    clock.t = 170.5
    assert not health.ready()


async def test_pod_health_sets_liveness_at_start_and_readiness_only_on_change() -> None:
    health, servicer, clock, state = _health(grace=5)
    await health.start()
    assert servicer.calls == [(LIVENESS_SERVICE, SERVING), ("", NOT_SERVING)]
    servicer.calls.clear()
    health.started = True
    assert await health.refresh() and await health.refresh()
    assert servicer.calls == [("", SERVING)]  # written once
    state["kv"], clock.t = False, 10
    assert await health.refresh()
    clock.t = 15
    assert not await health.refresh()
    assert servicer.calls[-1] == ("", NOT_SERVING)
    assert all(service != LIVENESS_SERVICE for service, _ in servicer.calls)  # liveness never drops


class FakeChannel:
    def __init__(self, state: grpc.ChannelConnectivity) -> None:
        self.state = state
        self.asked_to_connect = False

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        self.asked_to_connect = try_to_connect
        return self.state


@pytest.mark.parametrize(
    ("state", "previous", "up"),
    [
        (grpc.ChannelConnectivity.READY, False, True),
        (grpc.ChannelConnectivity.IDLE, False, True),
        (grpc.ChannelConnectivity.TRANSIENT_FAILURE, True, False),
        (grpc.ChannelConnectivity.SHUTDOWN, True, False),
        (grpc.ChannelConnectivity.CONNECTING, True, True),
        (grpc.ChannelConnectivity.CONNECTING, False, False),
    ],
)
def test_channel_up_reads_connectivity(state, previous: bool, up: bool) -> None:
    ch = FakeChannel(state)
    assert channel_up(ch, previous) is up
    assert ch.asked_to_connect


def test_probe_command_lines() -> None:
    ns = build_parser().parse_args(
        ["check", "--service", "liveness", "--tls-ca", "ca.pem", "--server-name", "mm"]
    )
    assert (ns.address, ns.service, ns.tls_ca, ns.server_name) == (
        "127.0.0.1:8033",
        "liveness",
        "ca.pem",
        "mm",
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["wait-stopped"])  # --timeout is required: a preStop hook must end
