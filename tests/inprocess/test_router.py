"""Router: where one request goes, case by case, on three in-process pods (real etcd, real gRPC, fake runtimes).

Each row names a situation (``arrange``), the request sent to pod-0 (``send``), and what must come of it: the
answer (``Served(model, runtime)``: which model, served by which pod's runtime; or ``Failed(code, text)``) and
how many times each pod's runtime loaded the model. pod-0 carries the label ``a`` and pod-2 the label ``c``;
models of type ``only-a`` / ``only-c`` may only load there, which makes placement deterministic where a row
needs it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import pytest

from protos.inference import grpc_predict_v2_pb2 as v2
from tests.inprocess.conftest import Failed, case_ids, load_on, matches, outcome, wait_loaded_everywhere
from tests.support.conditions import wait_until
from tests.support.inprocess import InProcessCluster, Served

M = "m"
CONSTRAINTS = json.dumps({"only-a": {"required": ["a"]}, "only-c": {"required": ["c"]}})
SETTINGS = {"type_constraints": CONSTRAINTS}
LABELS = [{"labels": ["a"]}, {}, {"labels": ["c"]}]


async def nothing(mesh: InProcessCluster) -> None:
    await mesh[0].client.register(M)


def loaded_on(index: int):
    async def arrange(mesh: InProcessCluster) -> None:
        await mesh[0].client.register(M)
        await load_on(mesh, index, M)

    return arrange


def then(first, second):
    async def arrange(mesh: InProcessCluster) -> None:
        await first(mesh)
        await second(mesh)

    return arrange


def registered(model_type: str):
    async def arrange(mesh: InProcessCluster) -> None:
        await mesh[0].client.register(M, model_type)

    return arrange


async def partition_pod_1(mesh):
    await mesh.partition(1)


async def runtime_of_pod_1_dies_unnoticed(mesh):
    await mesh[1].runtime.crash()  # the pod still believes it holds the copy


async def runtime_of_pod_1_dies(mesh):
    await mesh.crash_runtime(1)  # as the supervisor reports it: the copy leaves cache and registry


async def runtime_of_pod_1_lost_the_model(mesh):
    mesh[1].runtime.forget(M)


async def runtime_of_pod_1_rejects_the_tensor(mesh):
    mesh[1].runtime.behave(M, infer_code=grpc.StatusCode.INVALID_ARGUMENT, infer_details="bad tensor shape")


async def vmodel_v_targets_m(mesh):
    await mesh[0].client.register(M)
    await mesh[0].client.set_vmodel("v", M)
    await wait_until(lambda: all(p.pod.views.current.vmodel("v") for p in mesh.pods), what="vmodel in views")


async def registered_behind_pod_0s_view(mesh):
    """Registered through pod-1 while pod-0's registry watch is paused: pod-0's view does not have it."""
    await mesh[0].pod.registry_table.stop()
    await mesh[1].client.register(M)
    assert mesh[0].pod.views.current.model(M) is None


def infer(**kwargs) -> Callable[[InProcessCluster], Awaitable]:
    return lambda mesh: outcome(mesh[0].client.infer(**kwargs))


def ready(model_id: str) -> Callable[[InProcessCluster], Awaitable]:
    return lambda mesh: outcome(mesh[0].client.ready(model_id))


async def raw_without_id(mesh):
    payload = v2.ModelInferRequest(id="no-name").SerializeToString()
    return await outcome(mesh[0].client.raw("/inference.GRPCInferenceService/ModelInfer", payload))


@dataclass(frozen=True)
class Case:
    arrange: Callable[[InProcessCluster], Awaitable[None]]
    send: Callable[[InProcessCluster], Awaitable]
    answer: object  # Served | Failed | bool | set of allowed runtimes for Served(M, ...)
    loads: dict[int, int] = field(default_factory=dict)  # runtime loads of M per pod (unlisted: 0)
    total_loads: int | None = None  # when the pod that reloads is a free choice
    routed: dict[str, int] = field(default_factory=dict)  # pod-0's modelmesh_requests_routed_total by route


CASES = {
    "hit on the ingress pod": Case(loaded_on(0), infer(model_id=M), Served(M, "pod-0"), {0: 1}),
    "forward to the pod holding a copy": Case(
        loaded_on(1), infer(model_id=M), Served(M, "pod-1"), {1: 1}, routed={"forward": 1}
    ),
    "loaded nowhere: forward-load to the placed pod": Case(
        registered("only-c"), infer(model_id=M), Served(M, "pod-2"), {2: 1}, routed={"forward-load": 1}
    ),
    "loaded nowhere: placed here, loads here": Case(
        registered("only-a"), infer(model_id=M), Served(M, "pod-0"), {0: 1}, routed={"load": 1}
    ),
    "ModelReady of a model loaded nowhere: not ready, nothing loads": Case(nothing, ready(M), False, {}),
    "ModelReady of a model loaded on a peer": Case(loaded_on(2), ready(M), True, {2: 1}),
    "peer unreachable: retried on another copy": Case(
        then(loaded_on(1), partition_pod_1), infer(model_id=M), {"pod-0", "pod-2"}, {1: 1}, total_loads=2
    ),
    "runtime of the peer down, not yet noticed: retried elsewhere": Case(
        then(loaded_on(1), runtime_of_pod_1_dies_unnoticed),
        infer(model_id=M),
        {"pod-0", "pod-2"},
        {1: 1},
        total_loads=2,
    ),
    "runtime of the peer down, as its supervisor reports it: retried elsewhere": Case(
        then(loaded_on(1), runtime_of_pod_1_dies),
        infer(model_id=M),
        {"pod-0", "pod-2"},
        {1: 1},
        total_loads=2,
    ),
    "model gone from the runtime of the peer: retried elsewhere": Case(
        then(loaded_on(1), runtime_of_pod_1_lost_the_model),
        infer(model_id=M),
        {"pod-0", "pod-2"},
        {1: 1},
        total_loads=2,
    ),
    "INVALID_ARGUMENT from the runtime goes back unchanged, no retry": Case(
        then(loaded_on(1), runtime_of_pod_1_rejects_the_tensor),
        infer(model_id=M),
        Failed("INVALID_ARGUMENT", "bad tensor shape"),
        {1: 1},
    ),
    "unknown model: NOT_FOUND naming it": Case(
        nothing, infer(model_id="never-registered"), Failed("NOT_FOUND", "never-registered"), {}
    ),
    "registered a moment ago elsewhere: found by the strong read": Case(
        registered_behind_pod_0s_view, infer(model_id=M), {"pod-0", "pod-1", "pod-2"}, total_loads=1
    ),
    "vModel by mm-vmodel-id": Case(
        vmodel_v_targets_m, infer(vmodel="v"), {"pod-0", "pod-1", "pod-2"}, total_loads=1
    ),
    "vModel by model_name (no header)": Case(
        vmodel_v_targets_m, infer(by_name="v"), {"pod-0", "pod-1", "pod-2"}, total_loads=1
    ),
    "model by model_name (no header)": Case(
        nothing, infer(by_name=M), {"pod-0", "pod-1", "pod-2"}, total_loads=1
    ),
    "unknown vModel: NOT_FOUND": Case(
        nothing, infer(vmodel="no-such-v"), Failed("NOT_FOUND", "vmodel 'no-such-v'"), {}
    ),
    "no model id anywhere: INVALID_ARGUMENT naming the header": Case(
        nothing, raw_without_id, Failed("INVALID_ARGUMENT", "mm-model-id"), {}
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=case_ids(CASES))
async def test_router(cluster, case: Case) -> None:
    mesh = await cluster(pods=3, settings=SETTINGS, pod_settings=LABELS)
    await case.arrange(mesh)
    got = await case.send(mesh)
    if isinstance(case.answer, set):
        assert isinstance(got, Served) and got.model == M and got.runtime in case.answer, got
    else:
        assert matches(got, case.answer), got
    loads = {p.index: p.runtime.loads[M] for p in mesh.pods}
    for index, count in case.loads.items():
        assert loads[index] == count, loads
    expected_total = case.total_loads if case.total_loads is not None else sum(case.loads.values())
    assert sum(loads.values()) == expected_total, loads
    for route, count in case.routed.items():
        assert mesh[0].metric("modelmesh_requests_routed_total", route=route) == count, route


async def test_a_request_waits_for_the_load_already_running_here(cluster) -> None:
    """Two requests for a model loading on the ingress pod: the second waits for the same load."""
    mesh = await cluster(pods=3, settings=SETTINGS, pod_settings=LABELS)
    await mesh[0].client.register(M, "only-a")
    mesh[0].runtime.behave(M, hang=True)
    loader = mesh[0].pod.loader
    waiting: list[str] = []
    wait = loader.wait

    async def counted_wait(entry):
        waiting.append(entry.model_id)
        return await wait(entry)

    loader.wait = counted_wait
    first = asyncio.create_task(outcome(mesh[0].client.infer(M)))
    await wait_until(lambda: mesh[0].runtime.loads[M] == 1, what="the first request's load to start")
    second = asyncio.create_task(outcome(mesh[0].client.infer(M)))
    await wait_until(lambda: waiting == [M, M], what="both requests waiting on the load")
    assert not first.done() and not second.done()
    mesh[0].runtime.release(M)
    assert await first == Served(M, "pod-0")
    assert await second == Served(M, "pod-0")
    assert mesh[0].runtime.loads[M] == 1
    assert mesh[0].metric("modelmesh_cache_miss_milliseconds_count") == 2  # both waited on the one load


async def test_concurrent_misses_on_every_pod_end_in_one_load(cluster) -> None:
    mesh = await cluster(pods=3, settings=SETTINGS, pod_settings=LABELS)
    await mesh[0].client.register(M)
    await wait_until(lambda: all(p.pod.views.current.model(M) for p in mesh.pods), what="record in views")
    for p in mesh.pods:
        p.runtime.behave(M, load_delay_s=0.2)  # every request arrives while the load is in flight
    answers = await asyncio.gather(*(mesh[i % 3].client.infer(M) for i in range(12)))
    holders = {a.runtime for a in answers}
    assert len(holders) == 1 and {a.model for a in answers} == {M}, answers
    assert sum(p.runtime.total_loads for p in mesh.pods) == 1

    async def recorded() -> bool:  # the LOADED write follows the answer; pod-0 sees it through its watch
        return await mesh[0].client.copies(M) == sorted(holders)

    await wait_until(recorded, what=f"pod-0 to see {M} loaded on {sorted(holders)}")


async def test_not_found_comes_after_a_strong_read(cluster) -> None:
    """An id missing from the view is looked up in etcd once before the answer is NOT_FOUND."""
    mesh = await cluster(pods=1)
    registry = mesh[0].pod.registry
    reads: list[str] = []
    strong = registry.get_strong

    async def counted(model_id: str):
        reads.append(model_id)
        return await strong(model_id)

    registry.get_strong = counted
    got = await outcome(mesh[0].client.infer("ghost"))
    assert got == Failed("NOT_FOUND", "model 'ghost' not found")
    assert reads == ["ghost"]


async def test_the_paused_view_is_still_consistent_after_the_strong_read(cluster) -> None:
    """After the strong read, the ingress pod's view holds the record (later requests need no read)."""
    mesh = await cluster(pods=2)
    await registered_behind_pod_0s_view(mesh)
    served = await mesh[0].client.infer(M)
    assert served.model == M
    assert mesh[0].pod.views.current.model(M) is not None
    await mesh[0].pod.registry_table.start(mesh[0].pod.tasks)
    await wait_loaded_everywhere(mesh, M, served.runtime)
