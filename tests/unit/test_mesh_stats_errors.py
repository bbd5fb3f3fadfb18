"""mesh.cluster.instances.significant thresholds, mesh.local.stats.RequestStats, mesh.errors mapping."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from mesh import errors
from mesh.cluster.instances import significant
from mesh.errors import Source, from_rpc_error, to_status
from mesh.kv.records import InstanceRecord
from mesh.local.stats import RequestStats

NOW = 1_700_000_000_000
BASE = InstanceRecord(
    address="h:1",
    labels=["a"],
    capacity=1_000_000,
    used=500_000,
    count=50,
    loads_in_progress=0,
    rpm=1_000,
    lru_time=NOW - 3_600_000,  # one hour old
)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, False),
        ({"shutting_down": True}, True),
        ({"address": "h:2"}, True),
        ({"labels": ["a", "b"]}, True),
        ({"zone": "other"}, False),
        ({"capacity": 1_020_000}, False),  # exactly 2 %
        ({"capacity": 1_020_001}, True),
        ({"capacity": 979_999}, True),
        ({"count": 54}, False),  # < 10 % of 50
        ({"count": 55}, True),
        ({"count": 45}, True),
        ({"used": 599_999}, False),  # < 20 %
        ({"used": 600_000}, True),
        ({"used": 400_000}, True),
        ({"loads_in_progress": 1}, True),  # 0 -> non-zero
        ({"rpm": 1_099}, False),
        ({"rpm": 1_100}, True),  # ≥ 100 absolute
        ({"rpm": 901}, False),
        ({"lru_time": BASE.lru_time + 19_999}, False),  # < 20 s
        ({"lru_time": BASE.lru_time + 225_000}, True),  # ≥ 20 s and ≥ 1/16 of 1 h (225 s)
        ({"lru_time": BASE.lru_time + 224_000}, False),  # ≥ 20 s but < 1/16 of the age
    ],
)
def test_significant_thresholds(changes: dict, expected: bool) -> None:
    assert significant(BASE, BASE.replace(**changes), NOW) is expected


def test_first_record_is_significant() -> None:
    assert significant(None, BASE, NOW)


def test_small_counts_any_change() -> None:
    small = BASE.replace(count=3)
    assert significant(small, small.replace(count=4), NOW)
    assert significant(small, small.replace(count=2), NOW)
    big = BASE.replace(count=200)
    assert not significant(big, big.replace(count=219), NOW)
    assert significant(big, big.replace(count=220), NOW)


def test_loads_in_progress() -> None:
    busy = BASE.replace(loads_in_progress=2)
    assert significant(busy, busy.replace(loads_in_progress=0), NOW)
    assert not significant(busy, busy.replace(loads_in_progress=4), NOW)
    assert significant(busy, busy.replace(loads_in_progress=5), NOW)


def test_rpm_relative_when_low() -> None:
    low = BASE.replace(rpm=50)
    assert not significant(low, low.replace(rpm=55), NOW)
    assert significant(low, low.replace(rpm=56), NOW)  # > 10 %
    zero = BASE.replace(rpm=0)
    assert not significant(zero, zero.replace(rpm=99), NOW)
    assert significant(zero, zero.replace(rpm=100), NOW)


def test_lru_recent_needs_20s() -> None:
    young = BASE.replace(lru_time=NOW - 30_000)
    assert not significant(young, young.replace(lru_time=NOW - 15_000), NOW)
    assert significant(young, young.replace(lru_time=NOW - 5_000), NOW)
    # from "empty" (0) to a time: 0 counts as now
    empty = BASE.replace(lru_time=0)
    assert significant(empty, empty.replace(lru_time=NOW - 3_600_000), NOW)


# ---------------------------------------------------------------------------------------------------------
# RequestStats


def test_rpm_over_partial_window() -> None:
    stats = RequestStats(window_s=60, tick_s=10)
    assert stats.rpm == 0 and stats.model_rpm == {}
    for _ in range(10):
        stats.record("a")
    stats.record("b")
    stats.roll()  # 11 requests in 10 s
    assert stats.rpm == pytest.approx(66.0)
    assert stats.model_rpm == {"a": pytest.approx(60.0), "b": pytest.approx(6.0)}


def test_rpm_over_full_window_drops_old_ticks() -> None:
    stats = RequestStats(window_s=60, tick_s=10)
    for _ in range(60):
        stats.record("a")
    stats.roll()
    for _ in range(5):
        stats.roll()  # five idle ticks: 60 requests over the full minute
    assert stats.rpm == pytest.approx(60.0)
    stats.roll()  # the busy tick leaves the window
    assert stats.rpm == 0
    assert stats.model_rpm == {}


def test_rpm_steady_rate() -> None:
    stats = RequestStats(window_s=60, tick_s=10)
    for _ in range(20):
        for _ in range(5):
            stats.record("m")
        stats.roll()
    assert stats.rpm == pytest.approx(30.0)  # 5 per 10 s
    assert stats.model_rpm["m"] == pytest.approx(30.0)


def test_window_shorter_than_tick() -> None:
    stats = RequestStats(window_s=5, tick_s=10)
    stats.record("x")
    stats.roll()
    assert stats.rpm == pytest.approx(6.0)
    stats.roll()
    assert stats.rpm == 0


# ---------------------------------------------------------------------------------------------------------
# errors


ALL_MESH_ERRORS = [
    (errors.InvalidRequest("bad"), grpc.StatusCode.INVALID_ARGUMENT, False),
    (errors.ModelNotFound("m"), grpc.StatusCode.NOT_FOUND, False),
    (errors.ModelNotFound("v", kind="vmodel"), grpc.StatusCode.NOT_FOUND, False),
    (errors.ModelNotHere("m", "pod-1"), grpc.StatusCode.UNAVAILABLE, True),
    (errors.ModelLoadFailed("m", "disk full"), grpc.StatusCode.INTERNAL, False),
    (errors.ModelTooLarge("m", 10, 5), grpc.StatusCode.RESOURCE_EXHAUSTED, False),
    (errors.CapacityExhausted("full"), grpc.StatusCode.RESOURCE_EXHAUSTED, True),
    (errors.NoPlacement("none"), grpc.StatusCode.UNAVAILABLE, True),
    (errors.RuntimeUnavailable("rt"), grpc.StatusCode.UNAVAILABLE, True),
    (errors.PeerUnavailable("peer"), grpc.StatusCode.UNAVAILABLE, True),
    (errors.KvUnavailable("etcd"), grpc.StatusCode.UNAVAILABLE, True),
    (errors.KvConflict("cas"), grpc.StatusCode.ABORTED, True),
    (errors.KvCompacted(12), grpc.StatusCode.INTERNAL, False),
    (errors.FailedPrecondition("fp"), grpc.StatusCode.FAILED_PRECONDITION, False),
    (errors.AlreadyExists("ae"), grpc.StatusCode.ALREADY_EXISTS, False),
    (errors.Unimplemented("u"), grpc.StatusCode.UNIMPLEMENTED, False),
    (errors.ShuttingDown("bye"), grpc.StatusCode.UNAVAILABLE, True),
    (errors.DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED, True),
    (
        errors.RemoteError(grpc.StatusCode.PERMISSION_DENIED, "denied"),
        grpc.StatusCode.PERMISSION_DENIED,
        False,
    ),
    (errors.RemoteError(grpc.StatusCode.UNAVAILABLE, "down"), grpc.StatusCode.UNAVAILABLE, False),
    (errors.LoadedElsewhere(["pod-2"]), grpc.StatusCode.ABORTED, True),
    (errors.PermissionDenied("no"), grpc.StatusCode.PERMISSION_DENIED, False),
    (errors.KvError("etcd said no"), grpc.StatusCode.INTERNAL, False),
    (errors.LeaseNotFound("gone"), grpc.StatusCode.INTERNAL, False),
    (errors.KvAuthExpired("token"), grpc.StatusCode.INTERNAL, False),
    (errors.MeshError("base"), grpc.StatusCode.INTERNAL, False),
]


@pytest.mark.parametrize(("exc", "code", "retryable"), ALL_MESH_ERRORS, ids=lambda x: type(x).__name__)
def test_mesh_errors_to_status(exc: errors.MeshError, code: grpc.StatusCode, retryable: bool) -> None:
    assert to_status(exc) == (code, exc.message)
    assert exc.retryable is retryable
    assert str(exc) == exc.message


def test_messages() -> None:
    assert errors.ModelNotFound("m1").message == "model 'm1' not found"
    assert errors.ModelNotFound("v1", kind="vmodel").message == "vmodel 'v1' not found"
    assert "disk full" in errors.ModelLoadFailed("m", "disk full").message
    assert errors.KvCompacted(12).compact_revision == 12


def test_every_mesh_error_subclass_is_covered() -> None:
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    covered = {type(e) for e, _, _ in ALL_MESH_ERRORS}
    defined_here = {c for c in subclasses(errors.MeshError) if c.__module__ == errors.__name__}
    assert defined_here <= covered


def test_rpc_error_to_status() -> None:
    exc = AioRpcError(grpc.StatusCode.NOT_FOUND, Metadata(), Metadata(), details="model x missing")
    assert to_status(exc) == (grpc.StatusCode.NOT_FOUND, "model x missing")
    no_details = AioRpcError(grpc.StatusCode.ABORTED, Metadata(), Metadata(), details=None)
    assert to_status(no_details) == (grpc.StatusCode.ABORTED, "")


def test_rpc_error_without_code_is_internal() -> None:
    class Bare(grpc.RpcError):
        pass

    code, details = to_status(Bare("x"))
    assert code is grpc.StatusCode.INTERNAL and "Bare" in details


def test_timeout_to_status() -> None:
    exc = TimeoutError()  # asyncio.TimeoutError is the same class since 3.11
    assert to_status(exc) == (grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")


def test_cancelled_to_status() -> None:
    assert to_status(asyncio.CancelledError()) == (grpc.StatusCode.CANCELLED, "cancelled")


def test_generic_exception_to_status() -> None:
    assert to_status(ValueError("boom")) == (grpc.StatusCode.INTERNAL, "internal error: ValueError: boom")
    assert to_status(KeyError("k"))[0] is grpc.StatusCode.INTERNAL


def _rpc_error(code: grpc.StatusCode, details: str | None, trailer: str | None = None) -> AioRpcError:
    trailing = Metadata((errors.ERROR_TRAILER, trailer)) if trailer else Metadata()
    return AioRpcError(code, Metadata(), trailing, details=details)


def test_runtime_verdicts_pass_through_unchanged() -> None:
    err = from_rpc_error(
        _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad tensor"), Source.RUNTIME, where="rt"
    )
    assert isinstance(err, errors.RemoteError)
    assert to_status(err) == (grpc.StatusCode.INVALID_ARGUMENT, "bad tensor")
    assert not err.retryable


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.NOT_FOUND, "whatever"),
        (grpc.StatusCode.INVALID_ARGUMENT, "Model iris not found"),  # MLServer
        (grpc.StatusCode.UNAVAILABLE, "Request for unknown model: 'iris' is not found"),  # Triton
    ],
)
def test_runtime_no_such_model_is_model_not_here(code: grpc.StatusCode, details: str) -> None:
    err = from_rpc_error(_rpc_error(code, details), Source.RUNTIME, where="rt", model_id="iris")
    assert isinstance(err, errors.ModelNotHere) and err.retryable and "iris" in err.message


def test_runtime_unavailable() -> None:
    err = from_rpc_error(
        _rpc_error(grpc.StatusCode.UNAVAILABLE, "connect failed"), Source.RUNTIME, where="rt"
    )
    assert isinstance(err, errors.RuntimeUnavailable) and err.retryable
    assert "connect failed" in err.message


def test_peer_errors_are_rebuilt_from_their_trailer_not_their_text() -> None:
    for exc in (
        errors.ModelNotHere("m", "pod-2"),
        errors.CapacityExhausted("full"),
        errors.ModelLoadFailed("m", "disk full"),
        errors.InvalidRequest("bad header"),
    ):
        code, details = to_status(exc)
        trailer = dict(errors.error_trailer(exc))[errors.ERROR_TRAILER]
        back = from_rpc_error(_rpc_error(code, details, trailer), Source.PEER, where="pod-2")
        assert type(back) is type(exc)
        assert to_status(back) == (code, details)
        assert back.retryable is exc.retryable


def test_peer_without_trailer() -> None:
    # No answer of its own: unreachable.
    down = from_rpc_error(
        _rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect"), Source.PEER, where="p"
    )
    assert isinstance(down, errors.PeerUnavailable) and down.retryable
    # gRPC's own verdict (an oversized message) is not "the peer is full": the same request fails anywhere.
    big = from_rpc_error(_rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "too large"), Source.PEER, where="p")
    assert isinstance(big, errors.RemoteError) and not big.retryable
    assert big.grpc_code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_trailer_naming_no_mesh_error_is_ignored() -> None:
    err = from_rpc_error(
        _rpc_error(grpc.StatusCode.INTERNAL, "x", trailer="NotAClass"), Source.PEER, where="p"
    )
    assert isinstance(err, errors.RemoteError)
    assert errors.error_trailer(ValueError("x")) == ()


@pytest.mark.parametrize(
    ("code", "details", "cls"),
    [
        (grpc.StatusCode.UNAVAILABLE, "down", errors.KvUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", errors.KvUnavailable),
        (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found", errors.LeaseNotFound),
        (
            grpc.StatusCode.OUT_OF_RANGE,
            "etcdserver: mvcc: required revision has been compacted",
            errors.KvCompacted,
        ),
        (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied", errors.KvError),
    ],
)
def test_etcd_errors(code: grpc.StatusCode, details: str, cls: type) -> None:
    assert type(from_rpc_error(_rpc_error(code, details), Source.ETCD, where="get")) is cls


def test_runtime_spi_errors() -> None:
    spi = Source.RUNTIME_SPI
    assert isinstance(
        from_rpc_error(_rpc_error(grpc.StatusCode.UNAVAILABLE, "x"), spi), errors.RuntimeUnavailable
    )
    assert isinstance(
        from_rpc_error(_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "x"), spi), errors.InvalidRequest
    )
    assert isinstance(from_rpc_error(_rpc_error(grpc.StatusCode.NOT_FOUND, "x"), spi), errors.ModelNotHere)
    internal = from_rpc_error(_rpc_error(grpc.StatusCode.INTERNAL, None), spi)
    assert isinstance(internal, errors.RemoteError) and internal.message == "INTERNAL"
