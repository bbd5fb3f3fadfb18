"""Subprocess harness for the mesh tests that need real processes: a LocalCluster on the session's etcd with a
unique key root, plus fault injection (SIGKILL or SIGTERM one pod, restart it on the same port and id) and
helpers to read a pod's Prometheus metrics and call its runtime directly. For everything else, use the
in-process harness (``tests.support.inprocess``): it starts in a fraction of the time."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import grpc

from mesh.client import MeshClient
from mesh.devtools.cluster import LocalCluster, free_port, log_tail
from protos.inference import grpc_predict_v2_pb2 as v2
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.support.conditions import wait_for

FAST_POD_ARGS = (
    "--lease-ttl-s", "3",
    "--publish-interval-s", "1",
    "--janitor-interval-s", "2",
    "--default-model-size", "20000",
)  # fmt: skip


class MeshTestCluster(LocalCluster):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("base_port", 0)
        kwargs.setdefault("startup_timeout", 90.0)
        super().__init__(*args, **kwargs)

    def client(self, index: int = 0) -> MeshClient:
        return MeshClient(self.pods[index].address)

    def metric(self, index: int, name: str, labels: str = "") -> float:
        """Sum of samples of ``name`` (optionally filtered by a label substring) on pod ``index``. A name the pod
        does not export at all is an error, not 0: a renamed metric must fail the test that reads it."""
        url = f"http://127.0.0.1:{self.pods[index].metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        family = (
            name.removesuffix("_count").removesuffix("_sum").removesuffix("_bucket").removesuffix("_total")
        )
        if f"# TYPE {family} " not in text and f"# TYPE {family}_total " not in text:
            raise AssertionError(f"pod {index} exports no metric family {family!r} (asked for {name!r})")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {") and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def runtime_ready(self, index: int, model_id: str) -> bool:
        """Ask pod ``index``'s runtime directly whether it holds ``model_id``."""
        with grpc.insecure_channel(self.runtime_addresses[index]) as ch:
            stub = v2_grpc.GRPCInferenceServiceStub(ch)
            return stub.ModelReady(v2.ModelReadyRequest(name=model_id), timeout=5).ready

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        pod = self.pods[index]
        pod.remember_descendants()
        with contextlib.suppress(ProcessLookupError):
            pod.proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            pod.proc.wait(timeout=40)
        self._kill_leftovers(pod)

    def restart(self, index: int) -> None:
        """Start pod ``index`` again with the same id and port (after kill())."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.pods[index] = self._spawn_pod(index)
                break
            except Exception:
                time.sleep(0.2)
        self.wait_ready()

    def log(self, index: int) -> str:
        return log_tail(Path(self.pods[index].log_path), 200)


def make_cluster(etcd: str, samples: dict, *, pods: int = 1, capacity: int = 2_000_000, extra=(), **kwargs):
    """A MeshTestCluster on ``etcd`` serving the sample models, under a fresh key root, with the fast test
    timings plus ``extra`` pod flags (not started: use it as a context manager or call start())."""
    return MeshTestCluster(
        pods=pods,
        capacity=capacity,
        models_dir=samples["dir"],
        etcd=etcd,
        kv_root=f"/mmtest/{uuid.uuid4().hex}/",
        pod_args=(*FAST_POD_ARGS, *extra),
        **kwargs,
    )


__all__ = ["FAST_POD_ARGS", "MeshTestCluster", "free_port", "make_cluster", "wait_for"]
