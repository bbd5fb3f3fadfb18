"""The dev overlay's pod, run as local processes exactly as its manifests say, without Kubernetes.

The mesh and runtime containers of Deployment/modelmesh start with their manifest command lines and the
environment the kubelet would give them (ConfigMap envFrom, downward API, ``$(VAR)`` expansion). What only
a cluster provides is replaced, and nothing else: each volume mount path becomes a temporary directory (the
storage-config Secret becomes one file per key, as Kubernetes mounts it), the pod IP is 127.0.0.1, ports
are free loopback ports, etcd is the session's. Then the overlay's two Jobs run with their own command
lines (sample models written to the "PVC", then ``mesh apply`` of the ConfigMap), a model is served
through the vModel, and the probes are checked the way the kubelet would ask them: readiness drops while
the runtime container is down and while etcd is lost (past the grace), liveness never does, and the
runtime's preStop hook returns once the mesh has exited.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from mesh.client import MeshClient
from mesh.devtools.cluster import free_port
from mesh.health import LIVENESS_SERVICE, READINESS_SERVICE, check
from tests.deploy.kube import container_env, entrypoint, image_target, rendered, workload
from tests.deploy.kustomize import find
from tests.support.mesh_cluster import wait_for

pytestmark = pytest.mark.timeout(420)  # hang guard only; nothing here asserts on speed

BIN = Path(sys.executable).parent
READY_GRACE_S = "2"  # the overlay says 30 s; shortened so the etcd-loss case is quick (the rule is the same)


class LocalPod:
    """Containers of one pod template as processes, with mount paths mapped to host directories."""

    def __init__(self, objects: list[dict], root: Path, mounts: dict[str, Path], etcd: str) -> None:
        self.objects = objects
        self.root = root
        self.mounts = mounts  # container path -> host path
        self.port, self.metrics_port, self.runtime_port = free_port(), free_port(), free_port()
        self.etcd = etcd
        self.procs: dict[str, subprocess.Popen] = {}
        self.fields = {"status.podIP": "127.0.0.1", "status.hostIP": "127.0.0.1",
                       "metadata.name": f"modelmesh-{uuid.uuid4().hex[:6]}", "metadata.namespace": "modelmesh"}  # fmt: skip

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def host_path(self, value: str) -> str:
        for cpath, hpath in sorted(self.mounts.items(), key=lambda kv: -len(kv[0])):
            if value == cpath or value.startswith(cpath.rstrip("/") + "/"):
                return str(hpath) + value[len(cpath.rstrip("/")) :]
        return value

    def localise(self, value: str) -> str:
        """A container-side argument or env value with its paths and pod-local ports mapped to this host."""
        if value.startswith("--") and "=" in value:
            flag, _, v = value.partition("=")
            return f"{flag}={self.runtime_port if (flag, v) == ('--port', '8085') else self.localise(v)}"
        if value.startswith("unix:"):
            return "unix:" + self.host_path(value[len("unix:") :])
        if value.startswith("/"):
            return self.host_path(value)
        return self.address if value == "127.0.0.1:8033" else value

    def argv(self, container: dict) -> list[str]:
        cmd = container.get("command") or entrypoint(image_target(container["image"]))
        argv = [*cmd, *container.get("args", [])]
        program = str(BIN / argv[0]) if argv[0] != "python" else sys.executable
        return [program] + [self.localise(a) for a in argv[1:]]

    def env(self, container: dict, overrides: dict[str, str]) -> dict[str, str]:
        env = {k: self.localise(v) for k, v in container_env(container, self.objects, self.fields).items()}
        env.update(overrides)
        return {**os.environ, **env}

    def start(self, name: str, container: dict, overrides: dict[str, str]) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            self.argv(container), env=self.env(container, overrides), stdout=log, stderr=log, cwd=self.root
        )
        self.procs[name] = proc
        return proc

    def run(self, container: dict, overrides: dict[str, str] | None = None, timeout: float = 300):
        return subprocess.run(
            self.argv(container), env=self.env(container, overrides or {}), capture_output=True, text=True,
            cwd=self.root, timeout=timeout,
        )  # fmt: skip

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        return proc.returncode

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def probe(address: str, service: str) -> bool:
    return check(address, service=service, timeout=2)[0]


@pytest.fixture
def pod(etcd_server, tmp_path_factory):
    objects = rendered("overlays/dev")
    root = tmp_path_factory.mktemp("pod")
    mounts = {p: root / p.strip("/").replace("/", "_") for p in
              ("/models", "/var/run/mmesh", "/storage-config", "/pvc_mounts", "/tmp", "/config")}  # fmt: skip
    for d in mounts.values():
        d.mkdir()
    # Secret and ConfigMap volumes: one file per key, as Kubernetes mounts them
    for key, value in find(objects, "Secret", "storage-config")["stringData"].items():
        (mounts["/storage-config"] / key).write_text(value)
    (mounts["/config"] / "models.yaml").write_text(
        find(objects, "ConfigMap", "models")["data"]["models.yaml"]
    )
    p = LocalPod(objects, root, mounts, etcd_server.endpoint)
    try:
        yield p
    finally:
        for name in list(p.procs):
            p.stop(name, signal.SIGKILL)


def test_dev_overlay_pod_runs_as_its_manifests_say(pod: LocalPod, etcd_server) -> None:
    _, containers = workload(pod.objects, "Deployment", "modelmesh")
    _, job_samples = workload(pod.objects, "Job", "make-sample-models")
    _, job_register = workload(pod.objects, "Job", "register-models")

    # The Job that fills the PVC with sample models (its own command line).
    done = pod.run(job_samples["samples"])
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((pod.mounts["/pvc_mounts"] / "models-pvc" / "manifest.json").read_text())

    runtime_env = {"PVC_MOUNTS_DIR": str(pod.mounts["/pvc_mounts"])}  # the puller's default, mapped
    mesh_env = {
        "MM_SVC_GRPC_PORT": str(pod.port),
        "MM_METRICS_PORT": str(pod.metrics_port),
        "MM_ETCD_ENDPOINTS": pod.etcd,  # the StatefulSet's members, in the cluster
        "MM_KVSTORE_PREFIX": f"/mmtest/{uuid.uuid4().hex}/",
        "MM_ETCD_UNHEALTHY_GRACE_S": READY_GRACE_S,
        "MM_LEASE_TTL_S": "3",
    }
    pod.start("runtime", containers["runtime"], runtime_env)
    pod.start("mesh", containers["mesh"], mesh_env)
    wait_for(
        lambda: probe(pod.address, READINESS_SERVICE),
        timeout=120,
        what="readiness",
    )
    assert probe(pod.address, LIVENESS_SERVICE)

    # The Job that registers the models: `mesh apply` of the ConfigMap, with its own command line.
    reg = job_register["apply"]
    reg = {**reg, "args": [a if a != "modelmesh:8033" else pod.address for a in reg["args"]]}
    first = pod.run(reg)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "vmodel/iris created (-> iris-lr)" in first.stdout
    again = pod.run(reg)
    assert again.returncode == 0 and "0 created, 0 changed, 0 removed" in again.stdout, again.stdout

    lr = next(m for m in manifest["models"] if m["path"] == "sklearn/iris-lr")
    inp = lr["input"]

    def infer() -> None:
        with MeshClient(pod.address) as c:
            out = c.infer(
                "iris", {inp["name"]: np.asarray(inp["data"], np.float32).reshape(inp["shape"])}, vmodel=True
            )
        np.testing.assert_allclose(
            np.asarray(out["predict"]).ravel(), lr["expected"]["predict"]["data"], rtol=1e-4
        )

    infer()  # loaded from the "PVC" through the storage-config Secret's pvc entry
    with MeshClient(pod.address) as c:
        st = c.cluster_status()
    assert st["instances"][0]["address"] == pod.address  # MM_ADVERTISE_ADDRESS from $(POD_IP)
    assert st["instances"][0]["capacity_bytes"] == (1 << 30) - 402653184  # request 1Gi - MEM_BUFFER_BYTES

    # The runtime container dies (Kubernetes would restart it): not ready, still alive; ready again after.
    pod.stop("runtime", signal.SIGKILL)
    wait_for(
        lambda: not probe(pod.address, READINESS_SERVICE), timeout=30, what="NOT_SERVING without runtime"
    )
    assert probe(pod.address, LIVENESS_SERVICE)
    pod.start("runtime", containers["runtime"], runtime_env)
    wait_for(lambda: probe(pod.address, READINESS_SERVICE), timeout=60, what="SERVING with the runtime back")
    wait_for(lambda: _infers(infer), timeout=60, what="inference after the runtime restart")

    # etcd lost past the grace: not ready, still alive; ready again once etcd is back.
    etcd_server.kill()
    try:
        wait_for(
            lambda: not probe(pod.address, READINESS_SERVICE), timeout=30, what="NOT_SERVING without etcd"
        )
        assert probe(pod.address, LIVENESS_SERVICE)
        infer()  # a loaded model still serves without etcd
    finally:
        etcd_server.restart()
    wait_for(lambda: probe(pod.address, READINESS_SERVICE), timeout=60, what="SERVING with etcd back")

    # Pod deletion: SIGTERM to the mesh; the runtime's preStop hook returns once the mesh has exited.
    pre_stop = {"command": containers["runtime"]["lifecycle"]["preStop"]["exec"]["command"]}
    waiter = subprocess.Popen(pod.argv(pre_stop), stdout=subprocess.PIPE, text=True)
    assert pod.stop("mesh", signal.SIGTERM, timeout=60) == 0, pod.log("mesh")
    out, _ = waiter.communicate(timeout=30)
    assert waiter.returncode == 0 and out.strip().endswith("stopped"), out
    assert pod.stop("runtime") is not None


def _infers(fn) -> bool:
    try:
        fn()
        return True
    except Exception:
        return False
