"""Behaviour of whole pods through their public APIs (ModelMesh management, V2 inference, admin status), on
in-process pods with fake runtimes. These moved here from the subprocess suites, which keep only what needs
real processes (signals, supervision, real runtimes and storage); see tests/integration/test_mesh_pod.py
and test_mesh_cluster.py for those.
"""

from __future__ import annotations

import asyncio

import pytest

from protos.inference import grpc_predict_v2_pb2 as v2
from tests.fakes import FakeClock
from tests.inprocess.conftest import Failed, load_on, outcome
from tests.support.conditions import wait_until
from tests.support.inprocess import InProcessCluster, Served

V2 = "/inference.GRPCInferenceService/"


# ---------------------------------------------------------------------------------------------- one pod
async def test_register_does_not_load_and_the_first_request_does(cluster) -> None:
    mesh = await cluster(pods=1)
    c = mesh[0].client
    assert (await c.register("m"))["status"] == "NOT_LOADED"
    assert mesh[0].runtime.total_loads == 0
    assert await c.infer("m") == Served("m", "pod-0")
    assert (await c.status("m"))["status"] == "LOADED"
    assert list(mesh[0].runtime.loaded) == ["m"]


async def test_load_now_loads_at_registration(cluster) -> None:
    mesh = await cluster(pods=1)
    st = await mesh[0].client.register("m", load_now=True, sync=True)
    assert st["status"] == "LOADED"
    assert "m" in mesh[0].runtime.loaded


async def test_async_loads_answer_loading_and_unknown_ensure_loaded_fails(cluster) -> None:
    """ModelMesh's answers: an async loadNow registration and an async ensureLoaded report LOADING (the load
    has started), and ensureLoaded of an unknown id fails with NOT_FOUND."""
    mesh = await cluster(pods=1)
    c, runtime = mesh[0].client, mesh[0].runtime
    runtime.behave("first", hang=True)
    runtime.behave("second", hang=True)
    st = await c.register("first", load_now=True)
    assert st["status"] == "LOADING", st
    await c.register("second")
    assert (await c.ensure_loaded("second", sync=False))["status"] == "LOADING"
    await wait_until(
        lambda: runtime.loads["first"] == runtime.loads["second"] == 1, what="both loads started"
    )
    for model_id in ("first", "second"):
        runtime.release(model_id)
        await wait_until(lambda m=model_id: _status_is(c, m, "LOADED"), what=f"{model_id} loaded")
    got = await outcome(c.ensure_loaded("never-registered"))
    assert isinstance(got, Failed) and got.code == "NOT_FOUND", got


async def _status_is(client, model_id: str, status: str) -> bool:
    return (await client.status(model_id))["status"] == status


async def test_concurrent_first_requests_share_one_load(cluster) -> None:
    mesh = await cluster(pods=1)
    await mesh[0].client.register("m")
    mesh[0].runtime.behave("m", load_delay_s=0.2)
    answers = await asyncio.gather(*(mesh[0].client.infer("m") for _ in range(16)))
    assert set(answers) == {Served("m", "pod-0")}
    assert mesh[0].runtime.loads["m"] == 1
    assert mesh[0].metric("modelmesh_loadmodel_milliseconds_count") == 1


async def test_eviction_is_least_recently_used_first(cluster) -> None:
    """A 100 kB pod and 20 kB models: filling it past capacity evicts the least recently used models, never
    one in regular use, and what survives is the newest suffix of the load order."""
    # LRU pinned: the cost-aware policy is tested by its ordering tests and the simulator; this pins
    # ModelMesh's rule
    mesh = await cluster(
        pods=1, settings={"eviction_policy": "lru"}, runtime={"capacity": 100_000, "model_size": 20_000}
    )
    c = mesh[0].client
    models = [f"m{i:02}" for i in range(12)]
    for m in models:
        await c.register(m)
    for i, m in enumerate(models):
        await c.infer(m)
        if i % 3 == 0:
            await c.infer(models[0])  # in regular use
    assert mesh[0].metric("modelmesh_age_at_eviction_milliseconds_count") >= 3
    loaded = {m for m in models if (await c.status(m))["status"] == "LOADED"}
    assert models[0] in loaded, "a model in regular use was evicted"
    rest = [m for m in models if m != models[0]]
    flags = [m in loaded for m in rest]
    assert flags == sorted(flags), f"eviction not in LRU order: {list(zip(rest, flags, strict=True))}"
    assert set(mesh[0].runtime.loaded) == loaded  # the runtime holds exactly what the mesh says
    evicted = rest[0]
    assert evicted not in loaded
    assert await c.infer(evicted) == Served(evicted, "pod-0")  # evicted models load again on demand


async def test_model_larger_than_capacity_fails_clearly(cluster) -> None:
    mesh = await cluster(pods=1, runtime={"capacity": 100_000})
    mesh[0].runtime.behave("big", predicted_size=150_000)
    await mesh[0].client.register("big")
    got = await outcome(mesh[0].client.infer("big"))
    assert isinstance(got, Failed) and got.code == "RESOURCE_EXHAUSTED", got
    assert "capacity" in got.text and "big" in got.text and "150000" in got.text
    assert mesh[0].runtime.total_loads == 0


async def test_unregister_while_loaded_unloads(cluster) -> None:
    mesh = await cluster(pods=1)
    c = mesh[0].client
    await c.register("m")
    await c.infer("m")
    await c.unregister("m")
    assert (await c.status("m"))["status"] == "NOT_FOUND"
    await wait_until(lambda: "m" not in mesh[0].runtime.loaded, what="runtime unload after unregister")
    assert mesh[0].runtime.unloads == ["m"]
    assert await outcome(c.infer("m")) == Failed("NOT_FOUND", "model 'm' not found")
    await c.unregister("m")  # unknown model: no effect, no error


BAD_IDS = {"slash": "a/b", "control character": "bad\x01id", "too long": "x" * 300}


@pytest.mark.parametrize("bad_id", BAD_IDS.values(), ids=BAD_IDS.keys())
async def test_bad_ids_are_invalid_argument(cluster, bad_id: str) -> None:
    mesh = await cluster(pods=1)
    c = mesh[0].client
    payload = v2.ModelInferRequest().SerializeToString()
    got = await outcome(c.raw(V2 + "ModelInfer", payload, [("mm-model-id-bin", bad_id.encode())]))
    assert isinstance(got, Failed) and got.code == "INVALID_ARGUMENT", got
    assert isinstance(await outcome(c.register(bad_id)), Failed)
    assert (await outcome(c.register(bad_id))).code == "INVALID_ARGUMENT"


BAD_REQUESTS = {
    "no header and no model_name": (
        V2 + "ModelInfer",
        v2.ModelInferRequest(id="x").SerializeToString(),
        "mm-model-id",
    ),
    "malformed protobuf where the mesh reads model_name": (V2 + "ModelInfer", b"\x0a\x05ab", ""),
    "ModelMetadata with neither": (V2 + "ModelMetadata", b"", "mm-model-id"),
}


@pytest.mark.parametrize(("method", "payload", "text"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
async def test_bad_requests_are_invalid_argument(cluster, method: str, payload: bytes, text: str) -> None:
    mesh = await cluster(pods=1)
    got = await outcome(mesh[0].client.raw(method, payload))
    assert isinstance(got, Failed) and got.code == "INVALID_ARGUMENT" and text in got.text, got
    assert mesh[0].runtime.total_loads == 0


async def test_register_without_a_type_is_invalid_argument(cluster) -> None:
    mesh = await cluster(pods=1)
    got = await outcome(mesh[0].client.register("no-type", ""))
    assert isinstance(got, Failed) and got.code == "INVALID_ARGUMENT" and "type" in got.text


async def test_a_load_failure_reaches_the_request_and_the_status(cluster) -> None:
    mesh = await cluster(pods=1)
    mesh[0].runtime.behave("bad", fail="artifact 'bad' is corrupt")
    await mesh[0].client.register("bad")
    await mesh[0].client.register("good")
    got = await outcome(mesh[0].client.infer("bad"))
    assert isinstance(got, Failed) and got.code == "INTERNAL" and "is corrupt" in got.text, got
    st = await mesh[0].client.status("bad")
    assert st["status"] == "LOADING_FAILED" and any("is corrupt" in e for e in st["errors"]), st
    assert await mesh[0].client.infer("good") == Served("good", "pod-0")  # nothing else was affected


async def test_server_methods_and_model_ready(cluster) -> None:
    mesh = await cluster(pods=1)
    c = mesh[0].client
    await c.register("m")
    assert v2.ServerLiveResponse.FromString(await c.raw(V2 + "ServerLive", b"")).live
    assert v2.ServerReadyResponse.FromString(await c.raw(V2 + "ServerReady", b"")).ready
    assert v2.ServerMetadataResponse.FromString(await c.raw(V2 + "ServerMetadata", b"")).name
    assert not await c.ready("m")
    assert mesh[0].runtime.total_loads == 0  # ModelReady never loads
    await c.infer("m")
    assert await c.ready("m")
    meta = v2.ModelMetadataResponse.FromString(
        await c.raw(V2 + "ModelMetadata", v2.ModelMetadataRequest(name="m").SerializeToString())
    )
    assert meta.name == "m"
    payload = v2.RepositoryModelLoadRequest(model_name="m").SerializeToString()
    got = await outcome(c.raw(V2 + "RepositoryModelLoad", payload))
    assert isinstance(got, Failed) and got.code == "UNIMPLEMENTED", got


async def test_runtime_crash_drops_copies_and_models_reload_once_it_is_back(cluster) -> None:
    """As the supervisor reports a dead runtime: copies leave the cache and the registry at once, requests
    fail UNAVAILABLE (retryable) meanwhile, and models load again when the runtime is back."""
    mesh = await cluster(pods=1)
    c = mesh[0].client
    await c.register("m")
    await c.infer("m")
    await mesh.crash_runtime(0)
    assert (await c.status("m"))["status"] == "NOT_LOADED"
    assert (await mesh[0].pod.registry.get_strong("m")).instances == {}
    got = await outcome(c.infer("m"))
    assert isinstance(got, Failed) and got.code == "UNAVAILABLE", got
    await mesh.restore_runtime(0)
    assert await c.infer("m") == Served("m", "pod-0")
    assert mesh[0].metric("modelmesh_runtime_restarts_total") == 1


# ---------------------------------------------------------------------------------------------- several pods
async def test_requests_to_any_pod_reach_the_model_loaded_once(cluster) -> None:
    """A working set larger than one pod's cache but within the cluster's: every model loads once, on more
    than one pod, nothing is evicted, and requests reach the copy through forwards."""
    mesh = await cluster(pods=3, runtime={"capacity": 220_000, "model_size": 20_000})
    models = [f"m{i:02}" for i in range(18)]
    for m in models:
        await mesh[0].client.register(m)
    for round_ in range(3):
        for i, m in enumerate(models):
            assert (await mesh[(i + round_) % 3].client.infer(m)).model == m
    holders: dict[str, list[str]] = {}

    async def all_seen() -> bool:  # LOADED is written after the answer; pod-0 sees it through its watch
        holders.update({m: await mesh[0].client.copies(m) for m in models})
        return all(holders.values())

    await wait_until(all_seen, what="a LOADED copy of every model in pod-0's view")
    assert all(len(h) == 1 for h in holders.values()), holders
    assert len({h[0] for h in holders.values()}) >= 2, holders
    assert sum(p.metric("modelmesh_age_at_eviction_milliseconds_count") for p in mesh.pods) == 0
    assert sum(p.runtime.total_loads for p in mesh.pods) == len(models)
    assert sum(p.metric("modelmesh_requests_routed_total", route="forward") for p in mesh.pods) > 0
    assert len((await mesh[0].client.cluster_status())["instances"]) == 3


async def test_oldest_lru_pod_takes_the_load_when_all_are_full(cluster) -> None:
    """Both pods full: the pod holding the globally least recently used models loads the new one."""
    clock = FakeClock()
    mesh = await cluster(pods=2, runtime={"capacity": 60_000, "model_size": 20_000}, clock=clock)
    for i in range(2):
        for k in range(3):
            await mesh[0].client.register(f"p{i}-{k}")
            await load_on(mesh, i, f"p{i}-{k}", copy=k > 0)
    clock.advance(600)
    for k in range(3):  # every model on pod-1 used again: pod-0 now holds the oldest ones
        await mesh[1].client.infer(f"p1-{k}")
    for p in mesh.pods:
        await p.pod.publisher.publish(force=True)
    await wait_until(
        lambda: mesh[1].pod.views.current.instance("pod-1").lru_time == clock.now_ms(),
        what="pod-1's LRU time",
    )
    status = {p["instance_id"]: p for p in (await mesh[1].client.cluster_status(False))["instances"]}
    assert all(p["capacity_bytes"] - p["used_bytes"] < 20_000 for p in status.values()), status
    assert status["pod-0"]["lru_age_ms"] == 600_000 and status["pod-1"]["lru_age_ms"] == 0
    await mesh[1].client.register("new")
    assert await mesh[1].client.infer("new") == Served("new", "pod-0")
    assert sorted(mesh[0].runtime.unloads) == ["p0-0"]  # one of its own old models made room


async def test_hot_model_gains_copies_under_traffic_and_loses_them_when_cold(cluster) -> None:
    """The copy scaler's own periodic checks (every second, real time) while traffic flows: a hot model
    gets a second copy and no request fails meanwhile, a model capped at one copy does not, and the extra
    copy goes once the model is cold. The fake clock skips the scale-up guard after a load and the idle
    period, so nothing waits for them."""
    clock = FakeClock()
    settings = {
        "stats_tick_s": 1,
        "scale_check_interval_s": 1,
        "scaleup_rpm_threshold": 120,
        "extra_copy_idle_s": 3,
        "second_copy_after_s": 600,
    }
    mesh = await cluster(pods=3, settings=settings, clock=clock)
    ticks = [0, 0, 0]
    for p in mesh.pods:  # count each pod's stats roll-ups (its scaler checks at the same period)
        stats, roll = p.pod.stats, p.pod.stats.roll

        def counted(now_ms=None, roll=roll, index=p.index) -> None:
            ticks[index] += 1
            roll(now_ms)

        stats.roll = counted
    await mesh[0].client.register("hot")
    await mesh[0].client.register("capped", max_copies=1)
    for m in ("hot", "capped"):
        await mesh[0].client.infer(m)
    clock.advance(settings["scale_check_interval_s"] + 10)  # past the guard after a load
    stop = asyncio.Event()
    errors: list[object] = []

    async def drive(index: int) -> None:
        while not stop.is_set():
            for m in ("hot", "capped"):
                got = await outcome(mesh[index].client.infer(m))
                if not isinstance(got, Served):
                    errors.append(got)
            await asyncio.sleep(0.02)  # a request rate, not a synchronisation

    drivers = [asyncio.create_task(drive(i)) for i in range(3)]
    try:
        await wait_until(lambda: len(_loaded(mesh, "hot")) >= 2, what="a second copy of the hot model")
        seen = list(ticks)
        await wait_until(
            lambda: all(n >= m + 3 for n, m in zip(ticks, seen, strict=True)),
            what="three more ticks (and scaling checks) on every pod at the same rate",
        )
        assert len((await mesh[0].pod.registry.get_strong("capped")).instances) == 1
    finally:
        stop.set()
        await asyncio.gather(*drivers)
    assert not errors, errors[:3]
    clock.advance(settings["extra_copy_idle_s"] + 1)
    await wait_until(lambda: len(_loaded(mesh, "hot")) == 1, what="extra copies removed when cold")


def _loaded(mesh: InProcessCluster, model_id: str) -> list[str]:
    rec = mesh[0].pod.views.current.model(model_id)
    return sorted(rec.loaded) if rec else []
