"""A pod serving its port from two processes (MM_DATAPLANE_PROCESSES=2): the owner and one data-plane worker.

Real processes throughout: etcd (session fixture), a `mesh serve` pod that starts its worker and the built-in
runtime. Client connections are spread by the kernel (SO_REUSEPORT), so each test opens connections of their
own (a local subchannel pool: gRPC would otherwise share one connection between channels) and finds out which
process each one reached from the pod's per-process request counter (``modelmesh_dataplane_requests_total``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import signal
import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.client import MeshClient, build_infer_request, decode_outputs
from mesh.cluster.peer_secret import peer_secret
from mesh.kv.client import KvClient
from mesh.kv.keys import Keys
from protos.inference import grpc_predict_v2_pb2 as v2
from protos.meshadmin import admin_pb2 as admin
from protos.mmesh import model_mesh_pb2 as mm
from protos.mmesh import model_runtime_pb2 as rt
from protos.mmesh import model_runtime_pb2_grpc as rt_grpc
from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.pki import make_pki
from tests.support.samples import samples  # noqa: F401  (fixture)

INFER = "/inference.GRPCInferenceService/ModelInfer"
READY = "/inference.GRPCInferenceService/ModelReady"
PROCESSES = ("owner", "worker-1")


@pytest.fixture(scope="module")
def pod(etcd_server, samples):  # noqa: F811
    cluster = make_cluster(
        etcd_server.endpoint, samples, dataplane_processes=2, extra=("--stats-tick-s", "1")
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


class Conn:
    """One client connection of its own."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.channel = (
            grpc.secure_channel(address, credentials, options=options)
            if credentials is not None
            else grpc.insecure_channel(address, options=options)
        )

    def close(self) -> None:
        self.channel.close()

    def raw(self, method: str, payload: bytes, metadata=(), *, with_call: bool = False):
        call = self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        if with_call:
            return call.with_call(payload, metadata=list(metadata), timeout=60)
        return call(payload, metadata=list(metadata), timeout=60)

    def infer(self, sample, model_id: str, *, header: str = "mm-model-id", name: str = "", metadata=()):
        inp = sample["input"]
        data = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
        request = build_infer_request(name, {inp["name"]: data})
        md = [(header, model_id)] if header else []
        out = self.raw(INFER, request.SerializeToString(), [*md, *metadata])
        return v2.ModelInferResponse.FromString(out)

    def ready(self, model_id: str) -> bool:
        out = self.raw(READY, v2.ModelReadyRequest(name=model_id).SerializeToString())
        return v2.ModelReadyResponse.FromString(out).ready


def check(sample, response: v2.ModelInferResponse) -> None:
    outputs = decode_outputs(response)
    for name, want in sample["expected"].items():
        got = np.asarray(outputs[name]).ravel()
        np.testing.assert_allclose(
            got, np.asarray(want["data"], dtype=got.dtype).ravel(), rtol=1e-4, atol=1e-5
        )


def per_process(cluster) -> dict[str, float]:
    return {p: cluster.metric(0, "modelmesh_dataplane_requests_total", f'process="{p}"') for p in PROCESSES}


def relayed(cluster) -> float:
    """Requests the worker passed to the owner, once every report is in."""
    quiet(cluster)
    return cluster.metric(0, "modelmesh_requests_routed_total", 'route="worker-relay"')


def settled(cluster, expected_total: float) -> dict[str, float]:
    """Per-process counts once every request sent so far is counted (workers report every 100 ms)."""

    def counted():
        counts = per_process(cluster)
        return counts if sum(counts.values()) >= expected_total else None

    return wait_for(counted, timeout=15, what=f"{expected_total} requests counted")


def quiet(cluster) -> dict[str, float]:
    """Per-process counts once no report is on its way (the same over 0.3 s: workers report every 0.1 s)."""
    last = per_process(cluster)
    while True:
        time.sleep(0.3)
        now = per_process(cluster)
        if now == last:
            return now
        last = now


def connections(
    cluster, per_process_wanted: int = 2, tries: int = 24, credentials=None
) -> dict[str, list[Conn]]:
    """Open connections until each process has ``per_process_wanted`` of them; which process a connection
    reached is read from the per-process counter after one probe request on it."""
    found: dict[str, list[Conn]] = {p: [] for p in PROCESSES}
    before = quiet(cluster)
    for _ in range(tries):
        conn = Conn(cluster.addresses[0], credentials)
        with pytest.raises(grpc.RpcError) as err:
            conn.ready(f"probe-{uuid.uuid4().hex[:8]}")  # not registered: NOT_FOUND, counted where it landed
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        after = settled(cluster, sum(before.values()) + 1)
        moved = [p for p in PROCESSES if after[p] > before[p]]
        assert len(moved) == 1, (before, after)
        found[moved[0]].append(conn)
        before = after
        if all(len(c) >= per_process_wanted for c in found.values()):
            return found
    raise AssertionError(
        f"{tries} connections did not reach both processes: { {k: len(v) for k, v in found.items()} }"
    )


def register(cluster, sample, model_id: str, **kw) -> None:
    cluster.client().register(model_id, sample["type"], sample["path"], **kw)


def test_connections_spread_over_both_processes_and_the_worker_serves_hits(pod, samples):  # noqa: F811
    sample = samples["by_id"]["sklearn-iris-lr"]
    model_id = "w-spread"
    register(pod, sample, model_id)
    conns = [Conn(pod.addresses[0]) for _ in range(16)]
    start = sum(quiet(pod).values())
    with cf.ThreadPoolExecutor(16) as ex:  # 16 connections, 10 requests each, all at once
        responses = list(ex.map(lambda c: [c.infer(sample, model_id) for _ in range(10)], conns))
    for batch in responses:
        for r in batch:
            check(sample, r)
    counts = settled(pod, start + 160)
    assert sum(counts.values()) == start + 160  # each request counted once, by the process it reached
    assert pod.metric(0, "modelmesh_loadmodel_milliseconds_count") == 1

    by_process = connections(pod)
    # a hit through the worker is served by the worker itself: nothing passed on to the owner
    before_relayed, before = relayed(pod), per_process(pod)
    sent = 0
    for conn in by_process["worker-1"]:
        for _ in range(50):
            check(sample, conn.infer(sample, model_id))
            sent += 1
    after = settled(pod, sum(before.values()) + sent)
    assert after["worker-1"] - before["worker-1"] == sent
    assert relayed(pod) == before_relayed
    # the worker's usage reaches the owner: its request rate shows in the pod's published record
    wait_for(
        lambda: pod.client().cluster_status(include_models=False)["instances"][0]["rpm"] > 0,
        timeout=20,
        what="the pod's rpm to include the worker's requests",
    )
    for c in conns + [c for cs in by_process.values() for c in cs]:
        c.close()


def test_a_miss_through_the_worker_loads_exactly_once(pod, samples):  # noqa: F811
    sample = samples["by_id"]["sklearn-iris-rf-small"]
    model_id = "w-miss"
    register(pod, sample, model_id)
    by_process = connections(pod, per_process_wanted=2)
    loads = pod.metric(0, "modelmesh_loadmodel_milliseconds_count")
    conns = [c for cs in by_process.values() for c in cs]
    with cf.ThreadPoolExecutor(16) as ex:
        results = list(ex.map(lambda i: conns[i % len(conns)].infer(sample, model_id), range(32)))
    for r in results:
        check(sample, r)
    assert pod.metric(0, "modelmesh_loadmodel_milliseconds_count") == loads + 1
    status = pod.client().status(model_id)
    assert status["status"] == "LOADED" and len(status["copies"]) == 1
    for c in conns:
        c.close()


def test_vmodels_through_the_worker(pod, samples):  # noqa: F811
    first, second = samples["by_id"]["sklearn-iris-lr"], samples["by_id"]["sklearn-cancer-lr"]
    register(pod, first, "w-v1")
    register(pod, second, "w-v2")
    client = pod.client()
    client.set_vmodel("w-vm", "w-v1")
    wait_for(lambda: client.vmodel_status("w-vm")["active_model_id"] == "w-v1", what="vmodel active")
    worker = connections(pod)["worker-1"][0]
    check(first, worker.infer(first, "w-vm", header="mm-vmodel-id"))  # loads w-v1 (through the owner)
    before = relayed(pod)
    check(first, worker.infer(first, "w-vm", header="mm-vmodel-id"))
    check(first, worker.infer(first, "", header="", name="w-vm"))  # a vModel named in model_name
    assert relayed(pod) == before  # both served by the worker
    client.set_vmodel("w-vm", "w-v2", load_now=True, sync=True)
    wait_for(
        lambda: client.vmodel_status("w-vm")["active_model_id"] == "w-v2", timeout=60, what="vmodel moved"
    )
    check(second, worker.infer(second, "w-vm", header="mm-vmodel-id"))
    check(second, worker.infer(second, "", header="", name="w-vm"))
    worker.close()


def test_a_model_unloaded_behind_the_workers_back_still_answers(pod, samples):  # noqa: F811
    """The runtime drops a model the worker's table still shows ACTIVE (as an eviction racing a request
    would): the worker's request gets NOT_FOUND from the runtime, goes to the owner, which reloads it."""
    sample = samples["by_id"]["sklearn-iris-lr"]
    model_id = "w-gone"
    register(pod, sample, model_id)
    worker = connections(pod)["worker-1"][0]
    check(sample, worker.infer(sample, model_id))
    loads = pod.metric(0, "modelmesh_loadmodel_milliseconds_count")
    before = relayed(pod)
    with grpc.insecure_channel(pod.runtime_addresses[0]) as ch:
        rt_grpc.ModelRuntimeStub(ch).unloadModel(rt.UnloadModelRequest(modelId=model_id), timeout=10)
    assert not pod.runtime_ready(0, model_id)
    check(sample, worker.infer(sample, model_id))  # no error: passed to the owner, reloaded
    assert relayed(pod) == before + 1
    assert pod.metric(0, "modelmesh_loadmodel_milliseconds_count") == loads + 1
    assert pod.runtime_ready(0, model_id)
    worker.close()


def test_evictions_through_the_worker_answer_every_request(etcd_server, samples):  # noqa: F811
    """Room for one model: alternating between two through the worker evicts on every request."""
    a, b = samples["by_id"]["sklearn-iris-lr"], samples["by_id"]["sklearn-cancer-lr"]
    with make_cluster(etcd_server.endpoint, samples, capacity=30_000, dataplane_processes=2) as small:
        register(small, a, "w-a")
        register(small, b, "w-b")
        worker = connections(small, per_process_wanted=1)["worker-1"][0]
        for _ in range(4):
            check(a, worker.infer(a, "w-a"))
            check(b, worker.infer(b, "w-b"))
        assert small.metric(0, "modelmesh_age_at_eviction_milliseconds_count") >= 6
        worker.close()


def _outcome(fn):
    try:
        response, call = fn()
        return "OK", response, dict(call.trailing_metadata() or ())
    except grpc.RpcError as exc:
        return exc.code(), exc.details(), {k: v for k, v in exc.trailing_metadata() or () if k == "mm-error"}


def test_every_answer_through_the_worker_is_the_owners(pod, samples, etcd_server):  # noqa: F811
    """Management, admin, health, the pod's own V2 methods and every kind of error: the same answer
    (code, details, mm-error trailer) whichever process the connection reached."""
    sample = samples["by_id"]["sklearn-iris-lr"]
    register(pod, sample, "w-same")
    by_process = connections(pod, per_process_wanted=1)
    owner, worker = by_process["owner"][0], by_process["worker-1"][0]
    check(sample, owner.infer(sample, "w-same"))
    token = asyncio.run(_peer_token(etcd_server.endpoint, pod.kv_root))
    payload = build_infer_request(
        "", {sample["input"]["name"]: np.zeros((1, 4), np.float32)}
    ).SerializeToString()
    cases = [
        ("/mmesh.ModelMesh/getModelStatus", mm.GetStatusRequest(modelId="w-same").SerializeToString(), ()),
        ("/mmesh.ModelMesh/getModelStatus", mm.GetStatusRequest(modelId="nope").SerializeToString(), ()),
        ("/mmesh.ModelMesh/registerModel", mm.RegisterModelRequest(modelId="bad/id").SerializeToString(), ()),
        ("/mmesh.ModelMesh/noSuchMethod", b"", ()),
        ("/meshadmin.MeshAdmin/ClusterStatus", admin.ClusterStatusRequest().SerializeToString(), ()),
        ("/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest().SerializeToString(), ()),
        ("/inference.GRPCInferenceService/ServerReady", b"", ()),
        ("/inference.GRPCInferenceService/ServerMetadata", b"", ()),
        ("/inference.GRPCInferenceService/RepositoryIndex", b"", ()),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", b"", ()),
        (INFER, payload, ()),  # no model id at all
        (INFER, payload, (("mm-model-id", "never-registered"),)),
        (INFER, payload, (("mm-vmodel-id", "no-such-vmodel"),)),
        (INFER, payload, (("mm-model-id-bin", b"a/b"),)),
        (INFER, b"\xff\xff\xff", (("mm-model-id", "w-same"),)),  # malformed bytes: the runtime's verdict
        (INFER, payload, (("mm-model-id", "w-same"), ("mm-internal", "hit"))),  # internal header, no token
        (INFER, payload, (("mm-model-id", "w-same"), ("mm-hop", "1"), ("mm-peer-token", "wrong"))),
        (INFER, payload, (("mm-model-id", "w-v-none"), ("mm-internal", "hit"), ("mm-peer-token", token))),
        (READY, v2.ModelReadyRequest(name="w-same").SerializeToString(), ()),
    ]
    for method, body, md in cases:
        seen = [
            _outcome(lambda c=c, m=method, b=body, md=md: c.raw(m, b, md, with_call=True))
            for c in (owner, worker)
        ]
        if method.endswith("ClusterStatus"):  # answers hold times that move: compare the shape only
            assert seen[0][0] == seen[1][0] == "OK"
            continue
        assert seen[0] == seen[1], (method, md, seen)
    # a peer's "hit" with the right token is served by the worker itself
    before = relayed(pod)
    peer_md = (("mm-model-id", "w-same"), ("mm-internal", "hit"), ("mm-peer-token", token))
    hit = worker.raw(INFER, sample_request(sample), peer_md)
    check(sample, v2.ModelInferResponse.FromString(hit))
    assert relayed(pod) == before
    # health Watch streams through the worker too
    stream = health_pb2_grpc.HealthStub(worker.channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
    assert next(iter(stream)).status == health_pb2.HealthCheckResponse.SERVING
    stream.cancel()
    owner.close()
    worker.close()


def sample_request(sample) -> bytes:
    inp = sample["input"]
    data = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
    return build_infer_request("", {inp["name"]: data}).SerializeToString()


async def _peer_token(endpoint: str, root: str) -> str:
    kv = KvClient(endpoint, timeout=5.0)
    await kv.connect()
    try:
        return await peer_secret(kv, Keys.for_root(root))
    finally:
        await kv.close()


def _worker_pids(cluster) -> list[int]:
    out = []
    for child in psutil.Process(cluster.pods[0].pid).children(recursive=True):
        try:
            if "mesh.dataplane.worker" in " ".join(child.cmdline()):
                out.append(child.pid)
        except psutil.Error:
            continue
    return out


def test_a_killed_worker_is_restarted_and_a_new_connection_is_served(etcd_server, samples):  # noqa: F811
    """SIGKILL of the worker under load: a client sees at most UNAVAILABLE on a connection the worker held,
    and the same request retried on a new connection succeeds (a new connection made in the instant the worker
    dies may be reset as well: at most 3 tries); the worker is restarted and serves again."""
    sample = samples["by_id"]["sklearn-iris-lr"]
    with make_cluster(etcd_server.endpoint, samples, dataplane_processes=2) as cluster:
        register(cluster, sample, "w-kill")
        by_process = connections(cluster, per_process_wanted=2)
        conns = [c for cs in by_process.values() for c in cs]
        check(sample, conns[0].infer(sample, "w-kill"))
        [pid] = _worker_pids(cluster)
        counted = per_process(cluster)["worker-1"]
        stop = threading.Event()
        outcome = {"ok": 0, "retried": 0}
        unexpected: list[str] = []

        def client(conn: Conn) -> None:
            while not stop.is_set():
                try:
                    check(sample, conn.infer(sample, "w-kill"))
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        unexpected.append(f"first try: {exc.code().name} {exc.details()}")
                    # the retry, on a new connection; one made in the instant the worker dies can be reset too
                    # (the kernel resets connections queued on a closing SO_REUSEPORT listener), so up to 3
                    for attempt in range(3):
                        fresh = Conn(cluster.addresses[0])
                        try:
                            check(sample, fresh.infer(sample, "w-kill"))
                            break
                        except grpc.RpcError as again:
                            if again.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2:
                                unexpected.append(f"retry: {again.code().name} {again.details()}")
                            outcome["reset"] = outcome.get("reset", 0) + 1
                        finally:
                            fresh.close()
                    outcome["retried"] += 1
                outcome["ok"] += 1

        with cf.ThreadPoolExecutor(len(conns)) as ex:
            running = [ex.submit(client, c) for c in conns]
            time.sleep(1.0)
            psutil.Process(pid).kill()
            time.sleep(2.0)
            stop.set()
            for f in running:
                f.result()  # re-raises a client's failed assertion
        assert not unexpected, (unexpected, outcome, cluster.log(0)[-3000:])
        assert outcome["ok"] > 0
        [new] = wait_for(
            lambda: [p for p in _worker_pids(cluster) if p != pid], timeout=30, what="worker restarted"
        )
        assert f"dataplane-worker-1 (pid {pid}) exited" in cluster.log(0)
        wait_for(lambda: f"worker 1 (pid {new}) serving on" in cluster.log(0), timeout=30, what="it serves")
        # the new worker serves connections again, and the pod's counters never went backwards
        again = connections(cluster, per_process_wanted=1)["worker-1"][0]
        check(sample, again.infer(sample, "w-kill"))
        assert per_process(cluster)["worker-1"] >= counted
        for c in [again, *conns]:
            c.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_worker_ends_with_the_pod(etcd_server, samples, sig):  # noqa: F811
    with make_cluster(etcd_server.endpoint, samples, dataplane_processes=2) as cluster:
        [pid] = _worker_pids(cluster)
        worker = psutil.Process(pid)
        pod = cluster.pods[0].proc
        pod.send_signal(sig)
        code = pod.wait(timeout=40)
        if sig == signal.SIGTERM:
            assert code == 0, cluster.log(0)
        worker.wait(timeout=20)  # gone: stopped by the pod, or by the parent-death signal
        assert not worker.is_running()


def test_the_worker_serves_the_pods_tls_with_client_certificates_required(etcd_server, samples, tmp_path):  # noqa: F811
    """The worker binds the port with the owner's TLS settings: with MM_TLS_CLIENT_AUTH=require a client with a
    certificate from the CA is served by either process, one without is refused by both."""
    pki = make_pki(tmp_path)
    cert, key = pki["server"]
    client_cert, client_key = pki["client"]
    tls = ("--tls-cert", cert, "--tls-key", key, "--tls-ca", pki["ca"], "--tls-client-auth", "require")
    sample = samples["by_id"]["sklearn-iris-lr"]
    read = lambda path: Path(path).read_bytes()  # noqa: E731
    with_cert = grpc.ssl_channel_credentials(read(pki["ca"]), read(client_key), read(client_cert))
    without = grpc.ssl_channel_credentials(read(pki["ca"]))
    with make_cluster(
        etcd_server.endpoint,
        samples,
        dataplane_processes=2,
        extra=tls,
        tls_ca=pki["ca"],
        tls_client=(client_cert, client_key),
    ) as cluster:
        MeshClient(cluster.addresses[0], tls_ca=pki["ca"], tls_cert=client_cert, tls_key=client_key).register(
            "w-tls", sample["type"], sample["path"]
        )
        by_process = connections(cluster, per_process_wanted=1, credentials=with_cert)
        for conn in (by_process["owner"][0], by_process["worker-1"][0]):
            check(sample, conn.infer(sample, "w-tls"))
        refused = 0
        for _ in range(8):  # whichever process a connection reaches
            conn = Conn(cluster.addresses[0], without)
            with pytest.raises(grpc.RpcError) as err:
                conn.infer(sample, "w-tls")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            refused += 1
            conn.close()
        assert refused == 8
        counts = quiet(cluster)
        for cs in by_process.values():
            for c in cs:
                c.close()
        assert counts["owner"] >= 2 and counts["worker-1"] >= 2
