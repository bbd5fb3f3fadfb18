"""meshadmin.ClusterStatus paging and filters over a view of many models (no server: the servicer's logic)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mesh.api import admin
from mesh.api.admin import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MeshAdminServicer
from mesh.cluster.view import ClusterView
from mesh.errors import InvalidRequest
from mesh.frozenmap import FrozenMap
from mesh.kv.records import InstanceRecord, ModelRecord
from mesh.local.cache import LocalCache
from protos.meshadmin import admin_pb2 as pb

NOW = 1_000_000_000


def servicer(n: int) -> MeshAdminServicer:
    models = {}
    for i in range(n):
        mid = f"m{i:06d}"
        if i % 3 == 0:
            rec = ModelRecord(
                type="sklearn", instances={"p1": NOW - 5}, loaded={"p1": NOW - 1}, size=1000 + i
            )
        elif i % 3 == 1:
            rec = ModelRecord(type="onnx", instances={"p2": NOW - 5})
        else:
            rec = ModelRecord(type="onnx")
        models[mid] = rec
    instances = {p: InstanceRecord(address=f"{p}:1", capacity=10) for p in ("p0", "p1", "p2")}
    view = ClusterView("p0", FrozenMap(instances), FrozenMap(models))
    clock = SimpleNamespace(now_ms=lambda: NOW)
    return MeshAdminServicer(
        instance_id="p0",  # the responding pod holds no copy: p1 and p2 are judged from the records
        views=SimpleNamespace(current=view),
        cache=LocalCache(10),
        is_leader=lambda: "p1",
        failure_expiry_ms=60_000,
        load_timeout_ms=lambda: 90_000,
        clock=clock,
    )


def pages(svc: MeshAdminServicer, **kw) -> list[pb.ClusterStatusResponse]:
    out, token = [], ""
    while True:
        resp = svc._status(pb.ClusterStatusRequest(include_models=True, page_token=token, **kw))
        out.append(resp)
        token = resp.next_page_token
        if not token:
            return out


def test_old_clients_get_the_first_page_of_the_default_size() -> None:
    svc = servicer(DEFAULT_PAGE_SIZE + 5)
    resp = svc._status(pb.ClusterStatusRequest(include_models=True))
    assert len(resp.models) == DEFAULT_PAGE_SIZE
    assert resp.next_page_token == resp.models[-1].model_id
    assert resp.total_models == DEFAULT_PAGE_SIZE + 5 and resp.load_timeout_ms == 90_000
    small = servicer(10)._status(pb.ClusterStatusRequest(include_models=True))
    assert len(small.models) == 10 and small.next_page_token == ""


def test_pages_cover_every_model_once_in_order() -> None:
    svc = servicer(2345)
    got = [m.model_id for p in pages(svc, page_size=400) for m in p.models]
    assert got == [f"m{i:06d}" for i in range(2345)]
    assert all(len(p.models) <= 400 for p in pages(svc, page_size=400))


def test_page_size_is_bounded_by_the_server() -> None:
    resp = servicer(MAX_PAGE_SIZE + 10)._status(pb.ClusterStatusRequest(include_models=True, page_size=10**6))
    assert len(resp.models) == MAX_PAGE_SIZE and resp.next_page_token


def test_100k_models_fit_the_message_limit_per_page() -> None:
    svc = servicer(100_000)
    resp = svc._status(pb.ClusterStatusRequest(include_models=True, page_size=MAX_PAGE_SIZE))
    assert len(resp.SerializeToString()) < 4 * 1024 * 1024  # gRPC's default receive limit
    everything = svc._status(pb.ClusterStatusRequest(include_models=True, page_size=MAX_PAGE_SIZE))
    assert everything.total_models == 100_000


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"type": "sklearn"}, lambda i: i % 3 == 0),
        ({"status": "LOADED"}, lambda i: i % 3 == 0),
        ({"status": "LOADING"}, lambda i: i % 3 == 1),
        ({"status": "NOT_LOADED"}, lambda i: i % 3 == 2),
        ({"instance_id": "p2"}, lambda i: i % 3 == 1),
        ({"model_id_glob": "m0001?0"}, lambda i: 100 <= i < 200 and i % 10 == 0),
        ({"model_id_glob": "m0001?0", "type": "onnx"}, lambda i: 100 <= i < 200 and i % 10 == 0 and i % 3),
    ],
)
def test_filters_apply_before_paging(kw, expected) -> None:
    svc = servicer(600)
    got = [m.model_id for p in pages(svc, page_size=7, **kw) for m in p.models]
    assert got == [f"m{i:06d}" for i in range(600) if expected(i)]


def test_sizes_and_copies_in_the_summary() -> None:
    m = servicer(3)._status(pb.ClusterStatusRequest(include_models=True)).models
    assert (m[0].status, list(m[0].loaded_on), m[0].size_bytes) == ("LOADED", ["p1"], 1000)
    assert (m[1].status, list(m[1].loading_on), m[1].size_bytes) == ("LOADING", ["p2"], 0)


def test_sparse_filters_stop_after_a_bounded_scan(monkeypatch) -> None:
    monkeypatch.setattr(admin, "MAX_SCAN", 100)
    svc = servicer(1000)
    first = svc._status(pb.ClusterStatusRequest(include_models=True, model_id_glob="m000999"))
    assert list(first.models) == [] and first.next_page_token == "m000099"
    got = [m.model_id for p in pages(svc, model_id_glob="m000999") for m in p.models]
    assert got == ["m000999"]


@pytest.mark.parametrize(
    "kw", [{"status": "SOMETIMES"}, {"page_token": "x" * 300}, {"model_id_glob": "*" * 300}]
)
def test_bad_requests_are_invalid_argument(kw) -> None:
    with pytest.raises(InvalidRequest):
        servicer(3)._status(pb.ClusterStatusRequest(include_models=True, **kw))
