"""Health that tells the truth, end to end: a real pod whose runtime is SIGKILLed (and restarted by the pod), and
pods whose private etcd is stopped and restarted. Readiness (gRPC grpc.health.v1 and REST /v2/health/ready) goes
NOT_SERVING and comes back; liveness (health service "liveness", REST /v2/health/live) stays up throughout.
The event-loop watchdog, which defines "wedged", is tested on a real loop that a handler blocks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.devtools.etcd import EmbeddedEtcd
from mesh.health import LoopWatchdog
from mesh.metrics import MeshMetrics
from tests.support.mesh_cluster import FAST_POD_ARGS, MeshTestCluster, make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as ch:
        return (
            health_pb2_grpc.HealthStub(ch)
            .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            .status
        )


def rest(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class Watcher:
    """Every status the pod's health Watch stream reports for ``service``, in order (a real gRPC stream)."""

    def __init__(self, address: str, service: str = "") -> None:
        self.statuses: list[int] = []
        self._channel = grpc.insecure_channel(address)
        self._stream = health_pb2_grpc.HealthStub(self._channel).Watch(
            health_pb2.HealthCheckRequest(service=service)
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for resp in self._stream:
                self.statuses.append(resp.status)
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self._stream.cancel()
        self._channel.close()
        self._thread.join(5)


def runtime_pid(pod_pid: int) -> int:
    for child in psutil.Process(pod_pid).children(recursive=True):
        if "runtime_adapters" in " ".join(child.cmdline()):
            return child.pid
    raise AssertionError("no runtime process under the pod")


def test_runtime_death_makes_the_pod_not_ready_until_it_is_back(etcd_server, samples):  # noqa: F811
    sample = samples["by_id"]["sklearn-iris-lr"]
    with make_cluster(etcd_server.endpoint, samples) as cluster:
        pod = cluster.pods[0]
        client = cluster.client(0)
        client.register(sample["id"], sample["type"], sample["path"], load_now=True, sync=True)
        watch = Watcher(pod.address)
        try:
            wait_for(lambda: watch.statuses == [SERVING], timeout=10, what="initial SERVING")
            old = runtime_pid(pod.pid)
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: NOT_SERVING in watch.statuses, timeout=10, what="NOT_SERVING after the kill")
            # while it is down or restarting: REST readiness says why; liveness is not affected
            status, doc = rest(pod.rest_port, "/v2/health/ready")
            if status == 400:  # unless the runtime is already back
                assert doc == {"ready": False, "reason": "model runtime is down or restarting"}
            assert check(pod.address, "liveness") == SERVING
            assert rest(pod.rest_port, "/v2/health/live") == (200, {"live": True})
            wait_for(
                lambda: watch.statuses[-1] == SERVING, timeout=60, what="SERVING once the runtime is back"
            )
            assert watch.statuses == [SERVING, NOT_SERVING, SERVING]
            assert runtime_pid(pod.pid) != old
            assert rest(pod.rest_port, "/v2/health/ready") == (200, {"ready": True})
            assert cluster.metric(0, "modelmesh_ready") == 1
            # and it serves again (the model reloads on demand)
            assert client.status(sample["id"])["status"] in ("NOT_LOADED", "LOADED")
        finally:
            watch.close()


def test_etcd_outage_beyond_the_grace_makes_pods_not_ready_and_back(samples):  # noqa: F811
    with (
        EmbeddedEtcd() as etcd,
        MeshTestCluster(
            pods=2,
            capacity=2_000_000,
            models_dir=samples["dir"],
            etcd=etcd.endpoint,
            kv_root=f"/mmtest/{uuid.uuid4().hex}/",
            pod_args=(*FAST_POD_ARGS, "--etcd-unhealthy-grace-s", "2", "--etcd-timeout-s", "1"),
        ) as cluster,
    ):
        watches = [Watcher(p.address) for p in cluster.pods]
        try:
            wait_for(lambda: all(w.statuses == [SERVING] for w in watches), timeout=10, what="SERVING")
            etcd.stop()
            stopped = time.monotonic()
            try:
                wait_for(lambda: all(NOT_SERVING in w.statuses for w in watches), timeout=30,
                         what="NOT_SERVING once etcd is gone past the grace")  # fmt: skip
                assert time.monotonic() - stopped >= 2  # not before the grace period
                for i, p in enumerate(cluster.pods):
                    status, doc = rest(p.rest_port, "/v2/health/ready")
                    assert status == 400 and doc["reason"].startswith("etcd unreachable for"), doc
                    assert check(p.address, "liveness") == SERVING
                    assert rest(p.rest_port, "/v2/health/live")[0] == 200
                    assert cluster.metric(i, "modelmesh_ready") == 0
            finally:
                etcd.restart()
            wait_for(lambda: all(w.statuses[-1] == SERVING for w in watches), timeout=60,
                     what="SERVING after etcd is back")  # fmt: skip
            for w in watches:
                assert w.statuses == [SERVING, NOT_SERVING, SERVING]
        finally:
            for w in watches:
                w.close()


def test_the_watchdog_reports_a_wedged_loop_with_its_stack(caplog):
    """A handler that blocks the event loop: the liveness check (answered by the loop) gets no answer while it
    lasts, and the watchdog logs what the loop is running and counts the stall; once the loop runs, it is live."""
    metrics = MeshMetrics()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict = {}

    def run_loop() -> None:
        asyncio.set_event_loop(loop)
        box["dog"] = LoopWatchdog(loop, stall_s=0.3, metrics=metrics)
        box["dog"].start()
        ready.set()
        loop.run_forever()

    def stuck_handler() -> None:
        time.sleep(1.5)  # a synchronous call on the loop: the process is wedged while it lasts

    thread = threading.Thread(target=run_loop, daemon=True)
    thread.start()
    ready.wait(5)
    dog = box["dog"]
    try:
        with caplog.at_level(logging.WARNING, logger="mesh.health"):
            fut = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop)
            fut.result(2)  # live: the loop answers
            loop.call_soon_threadsafe(stuck_handler)
            time.sleep(0.05)
            probe = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop)
            try:
                probe.result(0.8)  # a liveness probe with a timeout shorter than the stall
                answered = True
            except TimeoutError:
                answered = False
            assert not answered, "the loop answered while wedged"
            wait_for(lambda: dog.stalls == 1, timeout=5, interval=0.05, what="the stall to be reported")
            probe.result(5)  # the loop runs again and answers
            wait_for(
                lambda: "event loop runs again" in caplog.text, timeout=5, interval=0.05, what="recovery log"
            )
        assert "stuck_handler" in caplog.text  # the stack names what blocked the loop
        assert metrics.event_loop_stalls._value.get() == 1
    finally:
        dog.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
