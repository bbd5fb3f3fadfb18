"""Pure parts of the data-plane workers (issue 9): the owner's feed and the worker's table agree after any
sequence of changes, usage batches, and the merged metrics of a pod count every request once."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from mesh.dataplane.local_table import LocalTable, RuntimeRoute, Usage
from mesh.local.cache import EntryState, LocalCache
from mesh.local.stats import RequestStats
from mesh.metrics import MeshMetrics
from mesh.metrics_merge import MergedMetrics, snapshot
from mesh.workers import VMODELS_PER_MESSAGE, WorkerFeed

ROUTE = RuntimeRoute("127.0.0.1:1", {"/inference.GRPCInferenceService/ModelInfer": (1,)}, False)


def _cache(*active: str, loading: tuple[str, ...] = ()) -> LocalCache:
    cache = LocalCache(10_000)
    for i, m in enumerate((*active, *loading)):
        entry, _ = cache.reserve(m, 10, i, i)
        entry.state = EntryState.ACTIVE if m in active else EntryState.LOADING
    return cache


def _feed(cache: LocalCache, route=ROUTE, vmodels=None) -> tuple[WorkerFeed, list]:
    routes = [route]
    feed = WorkerFeed(
        instance_id="pod-0",
        peer_token="secret",
        cache=cache,
        runtime_route=lambda: routes[0],
        vmodels=vmodels or {},
    )
    return feed, routes


async def _follow(feed: WorkerFeed, table: LocalTable, until) -> None:
    """Apply the feed's stream to ``table`` until ``until()`` holds (the stream stays open)."""
    stream = feed.follow()
    while not until():
        table.apply(await asyncio.wait_for(stream.__anext__(), 2))
    await stream.aclose()


async def test_a_follower_gets_the_snapshot_then_every_change() -> None:
    cache = _cache("a", "b", loading=("c",))
    feed, routes = _feed(cache, vmodels={"v": "a", "empty": ""})
    table = LocalTable()
    stream = feed.follow()
    first = await stream.__anext__()
    assert first.reset and first.synced and first.peer_token == "secret" and first.instance_id == "pod-0"
    table.apply(first)
    assert table.synced and table.active == {"a", "b"} and table.vmodels == {"v": "a", "empty": ""}
    assert table.runtime == ROUTE

    cache.get("c").state = EntryState.ACTIVE  # a load finished
    cache.remove("a")  # an eviction
    feed.vmodel_changed("v", "c")
    feed.vmodel_changed("empty", None)
    routes[0] = None  # the runtime went down
    feed.poke()
    update = await asyncio.wait_for(stream.__anext__(), 2)
    assert table.apply(update) is True  # the runtime route changed
    assert table.active == {"b", "c"} and table.vmodels == {"v": "c"} and table.runtime is None
    routes[0] = ROUTE
    feed.poke()
    assert table.apply(await asyncio.wait_for(stream.__anext__(), 2)) is True
    assert table.runtime == ROUTE
    await stream.aclose()
    assert feed.followers == 0


async def test_no_change_sends_nothing_and_changes_in_one_turn_are_one_update() -> None:
    cache = _cache("a")
    feed, _ = _feed(cache)
    stream = feed.follow()
    await stream.__anext__()
    feed.poke()
    nothing = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.05)
    assert not nothing.done()
    cache.remove("a")
    feed.poke()
    feed.poke()
    update = await asyncio.wait_for(nothing, 2)
    assert list(update.inactive) == ["a"] and not update.active
    await stream.aclose()


async def test_a_large_vmodel_table_spans_several_messages_and_is_synced_only_at_the_end() -> None:
    vmodels = {f"v{i}": f"m{i}" for i in range(2 * VMODELS_PER_MESSAGE + 5)}
    feed, _ = _feed(_cache(), vmodels=vmodels)
    messages = feed.snapshot()
    assert len(messages) == 3
    assert [m.synced for m in messages] == [False, False, True]
    assert [m.reset for m in messages] == [True, False, False]
    table = LocalTable()
    for m in messages:
        table.apply(m)
    assert table.vmodels == vmodels


def test_a_lost_stream_and_a_new_snapshot_replace_everything() -> None:
    table = LocalTable()
    table.apply(_feed(_cache("a", "b"))[0].snapshot()[0])
    table.lost()
    assert not table.synced
    table.apply(_feed(_cache("c"))[0].snapshot()[0])
    assert table.synced and table.active == {"c"}
    table.deactivate("c")
    assert table.active == set()


def test_usage_batches_counts_and_the_newest_time_and_survives_a_failed_report() -> None:
    usage = Usage()
    usage.record("a", 10)
    usage.record("a", 30)
    usage.record("a", 20)
    usage.record("b", 5)
    taken = usage.take()
    assert {(u.model_id, u.requests, u.last_used_ms) for u in taken} == {("a", 3, 30), ("b", 1, 5)}
    assert len(usage) == 0
    usage.record("a", 40)
    usage.give_back(taken)
    assert {(u.model_id, u.requests, u.last_used_ms) for u in usage.take()} == {("a", 4, 40), ("b", 1, 5)}


def test_request_stats_count_a_batch() -> None:
    stats = RequestStats(window_s=60, tick_s=10)
    stats.record("a", 5)
    stats.record("a")
    stats.roll()
    assert stats.model_rpm["a"] == 6 / (10 / 60)


def _worker_requests(metrics: MeshMetrics, n: int, code: str = "OK") -> None:
    for _ in range(n):
        metrics.api_request_ms.labels("ModelInfer", code).observe(1.0)


def _sample(text: str, name: str, labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and labels in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_merged_metrics_add_the_workers_counts_and_keep_a_restarted_workers_totals() -> None:
    owner = MeshMetrics(CollectorRegistry())
    _worker_requests(owner, 3)
    merged = MergedMetrics(owner.registry, requests_family="modelmesh_api_request_milliseconds")
    w1 = MeshMetrics(CollectorRegistry())
    _worker_requests(w1, 5)
    _worker_requests(w1, 2, code="NOT_FOUND")  # a label set the owner does not have
    w1.requests_routed.labels("worker-relay").inc(4)
    w1.ready.set(1)  # a gauge: the pod's gauges are the owner's alone
    sent = snapshot(w1.registry)
    assert {f.name for f in sent} == {"modelmesh_api_request_milliseconds", "modelmesh_requests_routed"}
    merged.update(1, 100, sent)
    merged.update(1, 100, snapshot(w1.registry))  # cumulative totals: a repeat changes nothing
    text = generate_latest(merged).decode()
    count = "modelmesh_api_request_milliseconds_count"
    assert _sample(text, count, 'code="OK"') == 8
    assert _sample(text, count, 'code="NOT_FOUND"') == 2
    assert _sample(text, "modelmesh_requests_routed_total", 'route="worker-relay"') == 4
    assert _sample(text, "modelmesh_dataplane_requests_total", 'process="owner"') == 3
    assert _sample(text, "modelmesh_dataplane_requests_total", 'process="worker-1"') == 7
    assert text.count("# TYPE modelmesh_api_request_milliseconds histogram") == 1  # one family, not two

    restarted = MeshMetrics(CollectorRegistry())  # worker 1 again, a new process: counts from zero
    _worker_requests(restarted, 1)
    merged.update(1, 101, snapshot(restarted.registry))
    text = generate_latest(merged).decode()
    assert _sample(text, count, 'code="OK"') == 9  # never backwards
    assert _sample(text, "modelmesh_dataplane_requests_total", 'process="worker-1"') == 8
    restricted = generate_latest(merged.restricted_registry([count])).decode()
    assert count in restricted and "modelmesh_requests_routed_total" not in restricted


def test_a_pod_refuses_bad_process_counts_and_workers_without_a_runtime_address() -> None:
    from mesh.pod import Pod
    from mesh.settings import load_settings

    for bad in ("0", "-1", "257"):
        with pytest.raises(ValueError, match="MM_DATAPLANE_PROCESSES"):
            Pod(load_settings(environ={"MM_DATAPLANE_PROCESSES": bad}))
    with pytest.raises(ValueError, match="MM_RUNTIME_INPROCESS"):
        Pod(
            load_settings(
                environ={
                    "MM_DATAPLANE_PROCESSES": "2",
                    "MM_RUNTIME_INPROCESS": "runtime_adapters.builtin.inprocess",
                }
            )
        )
    assert Pod(load_settings(environ={"MM_DATAPLANE_PROCESSES": "4"})).settings.dataplane_processes == 4


def test_socket_dirs_of_dead_owners_are_removed_and_others_kept(tmp_path) -> None:
    import os
    import subprocess
    import sys

    from mesh.workers import SOCKET_DIR_PREFIX, remove_stale_socket_dirs

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)
    dead = tmp_path / f"{SOCKET_DIR_PREFIX}{dead_pid}-abc"
    live = tmp_path / f"{SOCKET_DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / f"something-{dead_pid}-else"
    for d in (dead, live, other):
        d.mkdir()
        (d / "local.sock").write_text("")
    remove_stale_socket_dirs(str(tmp_path))
    assert not dead.exists() and live.exists() and other.exists()
