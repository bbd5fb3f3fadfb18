"""mesh.health without a server: the readiness rule as a table over time, PodHealth writing statuses only on
change, liveness from the first listen, and the channel-state reading of runtime reachability."""

from __future__ import annotations

import grpc
import pytest

from mesh.health import (
    LIVENESS_SERVICE,
    NOT_SERVING,
    READINESS_SERVICE,
    SERVING,
    PodHealth,
    PodState,
    ReadinessRule,
    build_parser,
    channel_up,
)

UP = PodState(started=True, shutting_down=False, runtime_up=True, kv_healthy=True)


@pytest.mark.parametrize(
    ("state", "ready"),
    [
        (UP, True),
        (PodState(started=False, shutting_down=False, runtime_up=True, kv_healthy=True), False),
        (PodState(started=True, shutting_down=True, runtime_up=True, kv_healthy=True), False),
        (PodState(started=True, shutting_down=False, runtime_up=False, kv_healthy=True), False),
    ],
)
def test_readiness_needs_started_not_shutting_down_and_a_runtime(state: PodState, ready: bool) -> None:
    assert ReadinessRule(kv_grace_s=30).ready(state, now=0.0) is ready


def test_etcd_loss_is_tolerated_for_the_grace_then_not_and_recovers() -> None:
    rule = ReadinessRule(kv_grace_s=30)
    lost = PodState(started=True, shutting_down=False, runtime_up=True, kv_healthy=False)
    assert rule.ready(lost, now=100.0)  # lost since 100
    assert rule.ready(lost, now=129.9)
    assert not rule.ready(lost, now=130.0)
    assert rule.ready(UP, now=131.0)  # back: ready at once
    assert rule.ready(lost, now=140.0)  # a new loss starts a new grace
    assert not rule.ready(lost, now=170.5)
    assert not ReadinessRule(kv_grace_s=0).ready(lost, now=0.0)


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


async def test_pod_health_sets_liveness_on_listen_and_readiness_only_on_change() -> None:
    servicer, clock = FakeServicer(), FakeClock()
    health = PodHealth(servicer, kv_grace_s=5, clock=clock)
    await health.listening()
    assert servicer.calls == [(LIVENESS_SERVICE, SERVING), (READINESS_SERVICE, NOT_SERVING)]
    servicer.calls.clear()
    assert await health.update(UP) and await health.update(UP)
    assert servicer.calls == [(READINESS_SERVICE, SERVING)]  # written once
    lost = PodState(started=True, shutting_down=False, runtime_up=True, kv_healthy=False)
    clock.t = 10
    assert await health.update(lost)
    clock.t = 15
    assert not await health.update(lost)
    assert servicer.calls[-1] == (READINESS_SERVICE, NOT_SERVING)
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
