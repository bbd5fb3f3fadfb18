"""Mesh pods for the multi-host suite: real ``mesh serve`` processes, one per namespace of a NetLab.

``MultiHostMesh`` builds the lab (bridge + namespaces), its etcd (``EtcdGroup``) and ``pods`` pods. Every pod uses
the same ports (8033 external, 8085 runtime on the namespace's own loopback, 2112 metrics) since hosts share
nothing; each binds and advertises its namespace's address and gets the etcd members' addresses as a
comma-separated ``--etcd`` list. It starts, stops (any signal) and restarts pods, reads their metrics and their
own view of the cluster, and reads the truth from etcd (records, instances, leader). On close every process is
killed by PID, every namespace, veth and the bridge are deleted, and the logs are kept under
``var/multihost/logs/<scenario>/``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mesh.client import MeshClient, MeshClientError
from mesh.devtools.cluster import health_serving, log_tail
from mesh.kv.keys import Keys
from mesh.kv.records import InstanceRecord, ModelRecord
from tests.multihost.common import NO_PROXY, REPO, RESULTS_DIR, child_env, wait_for
from tests.multihost.etcd_hosts import EtcdGroup, EtcdMember
from tests.support.mesh_cluster import FAST_POD_ARGS
from tests.support.netns import Host, NetLab

POD_PORT, RUNTIME_PORT, METRICS_PORT = 8033, 8085, 2112


@dataclass
class NetPod:
    index: int
    host: Host
    log_path: Path
    proc: subprocess.Popen | None = None
    starts: int = 0

    @property
    def instance_id(self) -> str:
        return f"pod-{self.index}"

    @property
    def address(self) -> str:
        return f"{self.host.ip}:{POD_PORT}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host.ip}:{METRICS_PORT}/metrics"


class MultiHostMesh:
    """A NetLab with etcd member(s) and ``pods`` mesh pods, one namespace each. A context manager: on exit
    (or ``close``) every process is killed by PID and every namespace, veth and the bridge are deleted."""

    def __init__(
        self,
        scenario: str,
        *,
        samples_dir: Path,
        pods: int = 3,
        etcd_members: int = 1,
        capacity: int = 2_000_000,
        pod_args: Iterable[str] = (),
        pod_extra: dict[int, list[str]] | None = None,
        leader_first: bool = False,
        startup_timeout: float = 120.0,
    ) -> None:
        self.scenario = scenario  # names var/multihost/logs/<scenario>/, where the logs are kept on close
        self.samples_dir = Path(samples_dir).resolve()
        self.pod_count = pods
        self.etcd_count = etcd_members
        self.capacity = capacity
        self.pod_args = [*FAST_POD_ARGS, *pod_args]
        self.pod_extra = pod_extra or {}  # pod index -> flags for that pod only (e.g. its labels)
        self.leader_first = leader_first  # start pod-0 alone first, so that it is the leader
        self.startup_timeout = startup_timeout
        self.kv_root = f"/mmh/{uuid.uuid4().hex}/"
        self.keys = Keys.for_root(self.kv_root)
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.work_dir = Path(tempfile.mkdtemp(prefix="mesh-multihost-", dir=base))
        self.lab = NetLab()
        self.pods: list[NetPod] = []
        self.etcd: EtcdGroup | None = None
        self.etcd_order: list[EtcdMember] = []

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> MultiHostMesh:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.lab.start()
        etcd_hosts = [self.lab.add_host(f"etcd{i}") for i in range(self.etcd_count)]
        self.etcd = EtcdGroup(self.lab, etcd_hosts, self.work_dir)
        self.etcd.start()
        self.reader = self.etcd.reader()
        # the pods' --etcd list: followers first, the etcd leader last, so that losing the pods' member does
        # not also cost an etcd leader election (a scenario chooses which member it kills)
        leader = wait_for(self.etcd.raft_leader, timeout=30, what="an etcd leader")
        self.etcd_order = [m for m in self.etcd.members if m is not leader] + [leader]
        for i in range(self.pod_count):
            host = self.lab.add_host(f"pod{i}")
            (self.work_dir / f"pod-{i}" / "models").mkdir(parents=True)
            self.pods.append(NetPod(i, host, self.work_dir / f"pod-{i}.log"))
        if self.leader_first:
            self.spawn(self.pods[0])
            self.wait_serving(self.pods[0])
            wait_for(lambda: self.leader() == "pod-0", timeout=30, what="pod-0 to lead")
        for pod in self.pods:
            if pod.proc is None:
                self.spawn(pod)
        for pod in self.pods:
            self.wait_serving(pod)

    def close(self) -> None:
        self.lab.close()
        keep = RESULTS_DIR / "logs" / self.scenario
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True, exist_ok=True)
        for path in self.work_dir.glob("*.log"):
            with contextlib.suppress(OSError):
                shutil.copyfile(path, keep / path.name)
        shutil.rmtree(self.work_dir, ignore_errors=True)

    # --- pods ---------------------------------------------------------------------------------

    def runtime_cmd(self, pod: NetPod) -> list[str]:
        return [
            sys.executable, "-m", "runtime_adapters.builtin",
            "--host", "127.0.0.1",  # the pod's own loopback: the runtime sits beside its mesh, as in a k8s pod
            "--port", str(RUNTIME_PORT),
            "--capacity", str(self.capacity),
            "--model-dir", str(self.work_dir / f"pod-{pod.index}" / "models"),
            "--local-root", str(self.samples_dir),
        ]  # fmt: skip

    def pod_cmd(self, pod: NetPod) -> list[str]:
        assert self.etcd is not None
        return [
            sys.executable, "-m", "mesh", "serve",
            "--host", pod.host.ip,
            "--port", str(POD_PORT),
            "--advertise-address", pod.address,
            "--etcd", ",".join(m.endpoint for m in self.etcd_order),
            "--kv-root", self.kv_root,
            "--instance-id", pod.instance_id,
            "--metrics-port", str(METRICS_PORT),
            "--runtime-address", f"127.0.0.1:{RUNTIME_PORT}",
            "--runtime-cmd", shlex.join(self.runtime_cmd(pod)),
            *self.pod_args,
            *self.pod_extra.get(pod.index, ()),
        ]  # fmt: skip

    def spawn(self, pod: NetPod) -> None:
        pod.proc = self.lab.popen(
            pod.host, self.pod_cmd(pod), log_path=pod.log_path, env=child_env(), cwd=str(REPO)
        )
        pod.starts += 1

    def wait_serving(self, pod: NetPod, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while not health_serving(pod.address, timeout=0.5):
            if pod.proc is None or pod.proc.poll() is not None:
                raise RuntimeError(f"{pod.instance_id} exited during start-up:\n{self.log(pod.index, 60)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{pod.instance_id} not SERVING in time:\n{self.log(pod.index, 60)}")
            time.sleep(0.1)

    def stop_pod(self, index: int, sig: int = signal.SIGKILL, timeout: float = 60.0) -> float:
        """Send ``sig`` to pod ``index``, wait for it to exit (then kill what is left in its namespace, e.g. a
        runtime still stopping). Returns the seconds the pod took to exit."""
        pod = self.pods[index]
        started = time.monotonic()
        if pod.proc is not None and pod.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                pod.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                pod.proc.wait(timeout=timeout)
        took = time.monotonic() - started
        self.lab.kill_all_in(pod.host)
        pod.proc = None
        return took

    def restart_pod(self, index: int) -> None:
        pod = self.pods[index]
        self.spawn(pod)
        self.wait_serving(pod)

    def index_of(self, instance_id: str) -> int:
        return int(instance_id.rsplit("-", 1)[1])

    def client(self, index: int, timeout: float = 30.0) -> MeshClient:
        return MeshClient(self.pods[index].address, timeout=timeout)

    def log(self, index: int, lines: int = 200) -> str:
        return log_tail(self.pods[index].log_path, lines)

    def full_log(self, index: int) -> str:
        try:
            return self.pods[index].log_path.read_text(errors="replace")
        except OSError:
            return ""

    def metric(self, index: int, name: str, labels: str = "") -> float:
        """Sum of the samples of ``name`` on pod ``index`` (optionally only lines containing ``labels``). A name
        the pod does not export at all is an error, not 0: a renamed metric must fail the test that reads it."""
        with NO_PROXY.open(self.pods[index].metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        family = name.removesuffix("_count").removesuffix("_sum").removesuffix("_total")
        if f"# TYPE {family} " not in text and f"# TYPE {family}_total " not in text:
            raise AssertionError(f"pod {index} exports no metric family {family!r} (asked for {name!r})")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {" and labels in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    # --- etcd truth ---------------------------------------------------------------------------

    def records(self) -> dict[str, ModelRecord]:
        raw = self.reader.get_prefix(self.keys.registry_prefix)
        return {mid: ModelRecord.from_json(v, rev) for mid, (v, rev) in raw.items()}

    def instances(self) -> dict[str, InstanceRecord]:
        raw = self.reader.get_prefix(self.keys.instances_prefix)
        return {iid: InstanceRecord.from_json(v, rev) for iid, (v, rev) in raw.items()}

    def leader(self) -> str | None:
        value = self.reader.get(self.keys.leader)
        return value.decode() if value is not None else None

    def loaded_on(self, model_id: str) -> list[str]:
        rec = self.records().get(model_id)
        return sorted(rec.loaded) if rec else []

    def live_copies(self, model_id: str) -> list[str]:
        """Pods that the registry lists as holding ``model_id`` (loading or loaded) and that are alive."""
        rec = self.records().get(model_id)
        alive = set(self.instances())
        return sorted(i for i in rec.instances if i in alive) if rec else []

    def local_models(self, index: int, timeout: float = 5.0) -> set[str]:
        """Models pod ``index`` holds in its own cache (loaded or loading), whatever the registry says: a pod's
        ClusterStatus lists itself for every local copy, recorded or not."""
        pod = self.pods[index]
        with self.client(index, timeout=timeout) as c:
            status = c.cluster_status(include_models=True)
        return {
            m["model_id"] for m in status["models"] if pod.instance_id in (*m["loaded_on"], *m["loading_on"])
        }

    def held_copies(self, model_ids: Iterable[str]) -> dict[str, list[str]]:
        """Model id -> the running pods that really hold it (from each pod's own cache)."""
        held: dict[str, list[str]] = {m: [] for m in model_ids}
        for pod in self.pods:
            if pod.proc is None:
                continue
            for mid in self.local_models(pod.index) & held.keys():
                held[mid].append(pod.instance_id)
        return held

    def view_leader(self, index: int, timeout: float = 1.0) -> str | None:
        """Who pod ``index`` believes leads (its ClusterStatus), '' when it names none; None if unreachable."""
        try:
            with self.client(index, timeout=timeout) as c:
                status = c.cluster_status(include_models=False)
        except MeshClientError:
            return None
        leaders = [i["instance_id"] for i in status["instances"] if i["leader"]]
        return leaders[0] if leaders else ""


def sample_input(sample: dict) -> dict:
    inp = sample["input"]
    return {inp["name"]: np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])}


def check_output(sample: dict, out: dict) -> None:
    want = sample["expected"]["predict"]["data"]
    np.testing.assert_allclose(np.asarray(out["predict"]).ravel(), want, rtol=1e-4, atol=1e-5)


def infer(mesh: MultiHostMesh, index: int, sample: dict, timeout: float = 30.0) -> None:
    with mesh.client(index, timeout=timeout) as c:
        check_output(sample, c.infer(sample["id"], sample_input(sample)))
