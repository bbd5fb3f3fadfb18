"""The multi-host harness: etcd members and mesh pods, each in its own network namespace of a NetLab.

Owns the processes of one scenario and the ways the tests look at them from outside:
- ``EtcdGroup``: 1 or 3 etcd members (one namespace each), started, killed (SIGKILL) and restarted on the same
  data dir; ``EtcdReader`` reads keys through etcd's JSON gateway from the root namespace (over the bridge), so
  a test sees the truth in etcd even while a pod is cut off from it.
- ``MultiHostMesh``: real ``mesh serve`` processes, one per namespace, all on the same ports (8033 external, 8085
  runtime on the namespace's own loopback, 2112 metrics) since nothing is shared between hosts; each pod binds and
  advertises its namespace's address and gets the etcd members' addresses as a comma-separated ``--etcd`` list.
- ``Traffic``: client threads in the root namespace sending ModelInfer to chosen pods with a deadline, recording
  every outcome (time, model, ingress pod, status code, latency), bounded in count and time.
- ``Sampler``: a thread that samples, every ``interval_s``, the ``leader`` key in etcd and every pod's own view of
  the leader (``ClusterStatus``), bounded in count.
- ``write_summary``: the JSON figures of a scenario under ``var/multihost/``.
Nothing here sleeps to wait for an outcome: waits are ``wait_for`` on a condition read from etcd or a pod.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from mesh.client import MeshClient, MeshClientError
from mesh.devtools.cluster import health_serving, log_tail
from mesh.devtools.etcd import find_etcd_binary
from mesh.kv.keys import Keys
from mesh.kv.records import InstanceRecord, ModelRecord
from tests.support.mesh_cluster import FAST_POD_ARGS
from tests.support.netns import Host, NetLab

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "var" / "multihost"
POD_PORT, RUNTIME_PORT, METRICS_PORT = 8033, 8085, 2112
ETCD_CLIENT_PORT, ETCD_PEER_PORT = 2379, 2380
# No proxy for anything in the lab, whatever the environment says: traffic must stay on the bridge.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PROXY_VARS = ("http_proxy", "https_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY", "GRPC_PROXY")


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env["GRPC_ENABLE_FORK_SUPPORT"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until truthy (returned) or ``timeout`` s pass (AssertionError naming ``what``)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (MeshClientError, OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


# ---------------------------------------------------------------------------------------------- etcd


class EtcdReader:
    """Synchronous reads of etcd through its JSON gateway (``/v3/kv/range``), trying each member in turn."""

    def __init__(self, endpoints: list[str], timeout: float = 2.0) -> None:
        self.endpoints = endpoints
        self.timeout = timeout

    def _range(self, key: str, prefix: bool) -> tuple[list[dict], int]:
        raw = key.encode()
        body = {"key": base64.b64encode(raw).decode()}
        if prefix:
            end = bytearray(raw)
            end[-1] += 1
            body["range_end"] = base64.b64encode(bytes(end)).decode()
        last: Exception | None = None
        for ep in self.endpoints:
            req = urllib.request.Request(
                f"http://{ep}/v3/kv/range", data=json.dumps(body).encode(), method="POST"
            )
            try:
                with _NO_PROXY.open(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read())
            except (OSError, ValueError) as exc:
                last = exc
                continue
            if "kvs" not in data and "header" not in data:
                last = ValueError(f"etcd {ep}: {data}")
                continue
            kvs = [
                {
                    "key": base64.b64decode(kv["key"]).decode(),
                    "value": base64.b64decode(kv.get("value", "")),
                    "mod_revision": int(kv.get("mod_revision", 0)),
                    "lease": int(kv.get("lease", 0)),
                }
                for kv in data.get("kvs", [])
            ]
            return kvs, int(data["header"]["revision"])
        raise OSError(f"no etcd member answered: {last}")

    def get(self, key: str) -> bytes | None:
        kvs, _ = self._range(key, prefix=False)
        return kvs[0]["value"] if kvs else None

    def get_prefix(self, prefix: str) -> dict[str, tuple[bytes, int]]:
        kvs, _ = self._range(prefix, prefix=True)
        return {kv["key"][len(prefix) :]: (kv["value"], kv["mod_revision"]) for kv in kvs}


@dataclass
class EtcdMember:
    name: str
    host: Host
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host.ip}:{ETCD_CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host.ip}:{ETCD_PEER_PORT}"


class EtcdGroup:
    """``size`` etcd members, each in its own namespace. Timings suit a shared 2-core box: heartbeat 50 ms,
    election timeout 1 s (a starved member must not trigger needless elections)."""

    def __init__(self, lab: NetLab, hosts: list[Host], work_dir: Path) -> None:
        self.lab = lab
        self.token = f"mmh-{uuid.uuid4().hex[:8]}"
        self.members = [
            EtcdMember(f"m{i}", h, work_dir / f"etcd-m{i}", work_dir / f"etcd-m{i}.log")
            for i, h in enumerate(hosts)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def reader(self) -> EtcdReader:
        return EtcdReader(self.endpoints)

    def _command(self, m: EtcdMember) -> list[str]:
        client = f"http://{m.host.ip}:{ETCD_CLIENT_PORT}"
        cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        return [
            find_etcd_binary(),
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "50",
            "--election-timeout", "1000",
            "--unsafe-no-fsync",
            "--log-level", "warn",
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        for m in self.members:
            self.start_member(m, wait=False)
        for m in self.members:
            self.wait_healthy(m, timeout)

    def start_member(self, m: EtcdMember, *, wait: bool = True, timeout: float = 30.0) -> None:
        m.proc = self.lab.popen(m.host, self._command(m), log_path=m.log_path, env=child_env())
        if wait:
            self.wait_healthy(m, timeout)

    def kill_member(self, m: EtcdMember) -> None:
        """SIGKILL (a member lost with its machine); its data dir stays for a restart."""
        self.lab.kill_all_in(m.host)
        m.proc = None

    def _status(self, m: EtcdMember) -> dict:
        req = urllib.request.Request(f"http://{m.endpoint}/v3/maintenance/status", data=b"{}", method="POST")
        with _NO_PROXY.open(req, timeout=2) as resp:
            return json.loads(resp.read())

    def raft_leader(self) -> EtcdMember | None:
        """The member that currently leads the etcd cluster (None when no running member names one)."""
        ids = {}
        leader_id = None
        for m in self.members:
            if m.proc is None:
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                status = self._status(m)
                ids[status["header"]["member_id"]] = m
                leader_id = status.get("leader") or leader_id
        return ids.get(leader_id) if leader_id else None

    def healthy(self, m: EtcdMember) -> bool:
        """The member answers /health true (it is up *and* its cluster has a leader)."""
        try:
            with _NO_PROXY.open(f"http://{m.endpoint}/health", timeout=1) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def wait_healthy(self, m: EtcdMember, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy(m):
            if m.proc is not None and m.proc.poll() is not None:
                raise RuntimeError(f"etcd {m.name} exited:\n{log_tail(m.log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd {m.name} not healthy after {timeout:.0f}s:\n{log_tail(m.log_path)}")
            time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- pods


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
        """Sum of the samples of ``name`` on pod ``index`` (optionally only lines containing ``labels``)."""
        with _NO_PROXY.open(self.pods[index].metrics_url, timeout=5) as resp:
            text = resp.read().decode()
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


# ---------------------------------------------------------------------------------------------- traffic


def sample_input(sample: dict) -> dict:
    inp = sample["input"]
    return {inp["name"]: np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])}


def check_output(sample: dict, out: dict) -> None:
    want = sample["expected"]["predict"]["data"]
    np.testing.assert_allclose(np.asarray(out["predict"]).ravel(), want, rtol=1e-4, atol=1e-5)


def infer(mesh: MultiHostMesh, index: int, sample: dict, timeout: float = 30.0) -> None:
    with mesh.client(index, timeout=timeout) as c:
        check_output(sample, c.infer(sample["id"], sample_input(sample)))


@dataclass
class Outcome:
    t: float  # seconds since the traffic started
    model_id: str
    ingress: int
    code: str  # "OK" or the gRPC status name
    latency_s: float
    message: str = ""


@dataclass
class Traffic:
    """Client threads (root namespace) sending ModelInfer for ``targets`` (model sample, ingress pod index)
    pairs round-robin, each call with ``deadline_s``. At most ``max_requests`` in total; stop() ends it."""

    mesh: MultiHostMesh
    targets: list[tuple[dict, int]]
    threads: int = 3
    deadline_s: float = 10.0
    pause_s: float = 0.02
    max_requests: int = 20_000
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._t0 = 0.0
        self._sent = 0
        self._route: dict[int, int] | None = None  # pod index -> pod index (ingress rerouting)

    def start(self) -> Traffic:
        self._t0 = time.monotonic()
        for w in range(self.threads):
            t = threading.Thread(target=self._run, args=(w,), daemon=True, name=f"traffic-{w}")
            t.start()
            self._workers.append(t)
        return self

    def now(self) -> float:
        return time.monotonic() - self._t0

    def avoid(self, index: int | None, instead: int | None = None) -> None:
        """Stop sending to pod ``index`` (as a Service drops a terminating pod): its targets go to ``instead``
        (None: back to normal)."""
        with self._lock:
            self._route = None if index is None else {index: instead if instead is not None else index}

    def set_targets(self, targets: list[tuple[dict, int]]) -> None:
        """Send to these (model sample, ingress pod) pairs from now on."""
        with self._lock:
            self.targets = list(targets)

    def _pick(self, n: int) -> tuple[dict, int]:
        targets = self.targets
        sample, ingress = targets[n % len(targets)]
        route = self._route
        if route and ingress in route:
            ingress = route[ingress]
        return sample, ingress

    def _run(self, worker: int) -> None:
        clients: dict[int, MeshClient] = {}
        n = worker
        try:
            while not self._stop.is_set():
                with self._lock:
                    if self._sent >= self.max_requests:
                        return
                    self._sent += 1
                sample, ingress = self._pick(n)
                n += self.threads
                client = clients.get(ingress)
                if client is None:
                    client = clients[ingress] = self.mesh.client(ingress, timeout=self.deadline_s)
                started = time.monotonic()
                code, message = "OK", ""
                try:
                    check_output(sample, client.infer(sample["id"], sample_input(sample)))
                except MeshClientError as exc:
                    code, message = exc.code, exc.message[:200]
                except AssertionError as exc:
                    code, message = "WRONG_ANSWER", str(exc)[:200]
                done = time.monotonic()
                with self._lock:
                    self.outcomes.append(
                        Outcome(started - self._t0, sample["id"], ingress, code, done - started, message)
                    )
                self._stop.wait(self.pause_s)
        finally:
            for c in clients.values():
                c.close()

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=self.deadline_s + 5)

    def __enter__(self) -> Traffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- reading the record

    def between(self, start: float, end: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.t < end]

    def count_ok(self, model_ids: Iterable[str] | None = None, since: float = 0.0) -> int:
        ids = set(model_ids) if model_ids is not None else None
        with self._lock:
            return sum(
                1
                for o in self.outcomes
                if o.code == "OK" and o.t >= since and (ids is None or o.model_id in ids)
            )

    def failures(self, model_ids: Iterable[str] | None = None) -> list[Outcome]:
        ids = set(model_ids) if model_ids is not None else None
        with self._lock:
            return [o for o in self.outcomes if o.code != "OK" and (ids is None or o.model_id in ids)]


def summarize(outcomes: list[Outcome]) -> dict:
    """Requests by status code, and latency percentiles of the successful ones (ms)."""
    by_code: dict[str, int] = {}
    for o in outcomes:
        by_code[o.code] = by_code.get(o.code, 0) + 1
    ok = sorted(o.latency_s for o in outcomes if o.code == "OK")
    failed = sorted(o.latency_s for o in outcomes if o.code != "OK")

    def pct(values: list[float], q: float) -> float | None:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else None

    return {
        "requests": len(outcomes),
        "by_code": by_code,
        "ok_p50_ms": pct(ok, 0.5),
        "ok_p99_ms": pct(ok, 0.99),
        "ok_max_ms": pct(ok, 1.0),
        "failed_max_ms": pct(failed, 1.0),
    }


# ---------------------------------------------------------------------------------------------- leader sampling


@dataclass
class LeaderSample:
    t: float
    etcd_leader: str | None  # the value of the leader key ('' when absent, None when etcd did not answer)
    views: dict[str, str | None]  # pod -> the leader it names ('' none, None unreachable)

    @property
    def self_declared(self) -> list[str]:
        """Pods that name themselves as leader in this sample."""
        return sorted(p for p, v in self.views.items() if v == p)


class Sampler:
    """Samples the leader key and every pod's view of the leader every ``interval_s`` (at most
    ``max_samples``), from the root namespace."""

    def __init__(self, mesh: MultiHostMesh, interval_s: float = 0.25, max_samples: int = 2000) -> None:
        self.mesh = mesh
        self.interval_s = interval_s
        self.max_samples = max_samples
        self.samples: list[LeaderSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="leader-sampler")
        self._t0 = 0.0

    def start(self, t0: float | None = None) -> Sampler:
        self._t0 = t0 if t0 is not None else time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < self.max_samples:
            t = time.monotonic() - self._t0
            try:
                leader = self.mesh.leader() or ""
            except OSError:
                leader = None
            views = {
                p.instance_id: self.mesh.view_leader(p.index, timeout=0.5) for p in self.mesh.pods if p.proc
            }
            self.samples.append(LeaderSample(t, leader, views))
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict:
        return {
            "samples": len(self.samples),
            "max_self_declared_leaders": max((len(s.self_declared) for s in self.samples), default=0),
            "samples_with_two_or_more": sum(1 for s in self.samples if len(s.self_declared) > 1),
            "samples_without_leader_key": sum(1 for s in self.samples if s.etcd_leader == ""),
            "leader_key_holders": sorted({s.etcd_leader for s in self.samples if s.etcd_leader}),
            "timeline": _leader_timeline(self.samples),
        }


def _leader_timeline(samples: list[LeaderSample]) -> list[dict]:
    """Runs of identical (leader key, self-declared leaders) states: when each began and how long it lasted."""
    runs: list[dict] = []
    for s in samples:
        state = (s.etcd_leader, tuple(s.self_declared))
        if runs and runs[-1]["_state"] == state:
            runs[-1]["until_s"] = round(s.t, 2)
            continue
        runs.append(
            {"_state": state, "from_s": round(s.t, 2), "until_s": round(s.t, 2), "leader_key": s.etcd_leader,
             "self_declared": list(s.self_declared)}
        )  # fmt: skip
    for r in runs:
        r.pop("_state")
    return runs


# ---------------------------------------------------------------------------------------------- results


def write_summary(name: str, data: dict) -> Path:
    """Write the figures of one scenario to ``var/multihost/<name>.json`` (with when and on what load)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    data = {
        "scenario": name,
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_avg_1m": os.getloadavg()[0],
        **data,
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def copies_over_max(mesh: MultiHostMesh, model_ids: Iterable[str]) -> dict[str, tuple[int, int]]:
    """Models (among ``model_ids``) with more live copies in etcd than their ``maxCopies``: id -> (copies, max)."""
    records, alive = mesh.records(), set(mesh.instances())
    out = {}
    for mid in model_ids:
        rec = records.get(mid)
        if rec is None or not rec.max_copies:
            continue
        live = [i for i in rec.instances if i in alive]
        if len(live) > rec.max_copies:
            out[mid] = (len(live), rec.max_copies)
    return out


def grpc_code(exc: BaseException) -> str:
    if isinstance(exc, MeshClientError):
        return exc.code
    if isinstance(exc, grpc.RpcError):
        return exc.code().name
    return type(exc).__name__


class Observed(dict):
    """What a scenario saw (JSON-able figures and facts), plus its log tails for the report of a failing test."""

    def __init__(self) -> None:
        super().__init__()
        self.logs: dict[str, str] = {}

    def keep_logs(self, mesh: MultiHostMesh, lines: int = 60) -> None:
        """Keep the log tails for the report (the whole logs are kept by ``MultiHostMesh.close``)."""
        for pod in mesh.pods:
            self.logs[pod.instance_id] = log_tail(pod.log_path, lines)
        if mesh.etcd is not None:
            for m in mesh.etcd.members:
                self.logs[f"etcd {m.name}"] = log_tail(m.log_path, 20)
