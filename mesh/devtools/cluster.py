"""LocalCluster: a whole mesh on one machine (etcd + N pods, each supervising a built-in runtime).

Owns the lifecycle of the processes behind ``mesh up``, the demo, the CLI integration tests and the load
tests: it starts an embedded etcd (unless an endpoint is given), then N ``python -m mesh serve`` processes on
consecutive external ports, each told to start and supervise its own runtime (``--runtime-cmd``). It waits
until every pod answers gRPC health SERVING, and on ``stop()`` ends everything it started, by PID: SIGTERM to
each pod (which stops its runtime), a bounded wait, then SIGKILL to the pod's process group and to every
descendant recorded while it ran, so a stray runtime never outlives the cluster. etcd goes last.

Each pod runs in its own session/process group and logs to ``<data_dir>/pod-<i>.log``; a pod that fails to
start raises ``ClusterStartError`` with the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.process import free_port, with_parent_death_signal

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASE_PORT = 8033
DEFAULT_CAPACITY = 512 * 1024 * 1024
DEFAULT_KV_ROOT = "/mm/local/"
# mlserver: runtime_adapters.mlserver starting MLServer (.venv-mlserver); inprocess: the built-in runtime inside
# each pod process (MM_RUNTIME_INPROCESS); builtin-uds: the built-in runtime reached over a unix socket
RUNTIMES = ("builtin", "mlserver", "inprocess", "builtin-uds")
GRPC_FORK_ENV = "GRPC_ENABLE_FORK_SUPPORT"


def disable_grpc_fork_handlers() -> None:
    """For processes that fork only to exec (``mesh up``, the demo): call before gRPC starts."""
    os.environ.setdefault(GRPC_FORK_ENV, "0")


class ClusterStartError(RuntimeError):
    """A pod (or etcd) did not come up; the message carries the tail of its log."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``port`` (connections in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def pick_base_port(preferred: int, count: int) -> int:
    """``preferred`` when ports preferred..preferred+count-1 are all free, else a free consecutive run."""
    if preferred and all(port_is_free(preferred + i) for i in range(count)):
        return preferred
    for _ in range(200):
        base = free_port()
        if base + count < 65535 and all(port_is_free(base + i) for i in range(count)):
            return base
    raise ClusterStartError(f"no {count} consecutive free ports found")


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def health_serving(
    address: str, timeout: float = 1.0, tls_ca: str | None = None, tls_client: tuple[str, str] | None = None
) -> bool:
    """True when the pod at ``address`` answers gRPC health (overall service "") with SERVING; over TLS
    (verified with the CA file ``tls_ca``) when the pods serve TLS."""
    if tls_ca:
        cert, key = tls_client or (None, None)
        creds = grpc.ssl_channel_credentials(
            root_certificates=Path(tls_ca).read_bytes(),
            private_key=Path(key).read_bytes() if key else None,
            certificate_chain=Path(cert).read_bytes() if cert else None,
        )
        channel = grpc.secure_channel(address, creds)
    else:
        channel = grpc.insecure_channel(address)
    with channel as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class PodProcess:
    index: int
    instance_id: str
    address: str
    runtime_port: int
    metrics_port: int
    log_path: Path
    proc: subprocess.Popen
    started_at: float = 0.0
    rest_port: int = 0  # the pod's V2 REST listener (0: off)
    descendants: dict[int, psutil.Process] = field(default_factory=dict)
    groups: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def remember_descendants(self) -> None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children(recursive=True):
                self.descendants.setdefault(child.pid, child)
                with contextlib.suppress(OSError):
                    self.groups.add(os.getpgid(child.pid))  # e.g. a runtime started in its own session


class LocalCluster:
    """etcd + ``pods`` mesh pods on 127.0.0.1, external ports ``base_port``, ``base_port + 1``, ….

    ``models_dir`` is the root that local model paths (``--path``) are relative to. ``dataplane_processes``:
    processes serving each pod's port (``MM_DATAPLANE_PROCESSES``; the pod starts the extra ones). ``etcd`` is an existing
    ``host:port``; when None an EmbeddedEtcd is started. ``data_dir`` holds per-pod runtime model dirs and
    logs (a temp dir, removed on stop, when None). ``pod_args`` are extra ``mesh serve`` flags for every pod.
    """

    def __init__(
        self,
        pods: int = 1,
        base_port: int = DEFAULT_BASE_PORT,
        capacity: int = DEFAULT_CAPACITY,
        models_dir: str | os.PathLike = "var/models",
        etcd: str | None = None,
        *,
        data_dir: str | os.PathLike | None = None,
        runtime: str = "builtin",
        storage_config: str | None = None,
        kv_root: str = DEFAULT_KV_ROOT,
        pod_args: Sequence[str] = (),
        python: str = sys.executable,
        startup_timeout: float = 120.0,
        stop_timeout: float = 20.0,
        env: dict[str, str] | None = None,
        tls_ca: str | None = None,
        tls_client: tuple[str, str] | None = None,
        per_pod_args: dict[int, Sequence[str]] | None = None,
        on_event: Callable[[str, Any], None] | None = None,
        dataplane_processes: int = 1,
    ) -> None:
        if pods < 1:
            raise ValueError("pods must be >= 1")
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r} (one of {', '.join(RUNTIMES)})")
        self.runtime = runtime
        self._serving_ports: dict[int, int] = {}  # pod index -> MLServer's gRPC port (runtime "mlserver")
        self.pod_count = pods
        self.base_port = base_port
        self.capacity = capacity
        self.models_dir = Path(models_dir).resolve()
        self.etcd_endpoint = etcd
        self.storage_config = str(Path(storage_config).resolve()) if storage_config else None
        self.kv_root = kv_root
        self.pod_args = list(pod_args)
        self.per_pod_args = {i: list(a) for i, a in (per_pod_args or {}).items()}  # extra flags of pod i
        self.dataplane_processes = (
            dataplane_processes  # processes serving each pod's port (MM_DATAPLANE_PROCESSES)
        )
        self.python = python
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.extra_env = env or {}
        # pods serve TLS (their --tls-* flags are in pod_args): health checks verify with the CA, and present
        # ``tls_client`` (cert, key) when the pods require client certificates
        self.tls_ca = tls_ca
        self.tls_client = tls_client
        self._own_data_dir = data_dir is None
        self.data_dir = Path(data_dir).resolve() if data_dir else Path(tempfile.mkdtemp(prefix="mesh-local-"))
        self._etcd: Any = None
        self.pods: list[PodProcess] = []
        # Progress of start(): ("etcd", endpoint), ("pod-started", PodProcess), ("pod-serving", PodProcess)
        self._on_event = on_event or (lambda what, detail: None)

    # --- public surface

    @property
    def addresses(self) -> list[str]:
        return [p.address for p in self.pods]

    @property
    def runtime_addresses(self) -> list[str]:
        return [f"127.0.0.1:{p.runtime_port}" for p in self.pods]

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start etcd (if needed) and every pod, then wait until all pods are SERVING."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if self.etcd_endpoint is None:
                self._start_etcd()
            self._on_event("etcd", self.etcd_endpoint)
            if self.base_port == 0:
                self.base_port = pick_base_port(0, self.pod_count)
            for i in range(self.pod_count):
                self.pods.append(self._spawn_pod(i))
                self._on_event("pod-started", self.pods[-1])
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        pending = list(self.pods)
        while pending:
            for pod in list(pending):
                if pod.proc.poll() is not None:
                    raise ClusterStartError(
                        f"pod-{pod.index} exited with {pod.proc.returncode} during start-up; "
                        f"log {pod.log_path}:\n{log_tail(pod.log_path)}"
                    )
                pod.remember_descendants()
                if health_serving(pod.address, timeout=0.5, tls_ca=self.tls_ca, tls_client=self.tls_client):
                    pending.remove(pod)
                    self._on_event("pod-serving", pod)
            if pending and time.monotonic() > deadline:
                pod = pending[0]
                raise ClusterStartError(
                    f"pod-{pod.index} ({pod.address}) not SERVING after {self.startup_timeout:.0f}s; "
                    f"log {pod.log_path}:\n{log_tail(pod.log_path)}"
                )
            if pending:
                time.sleep(0.1)
        for pod in self.pods:
            pod.remember_descendants()

    def dead_pods(self) -> list[PodProcess]:
        """Pods whose process has exited (for ``mesh up`` to report while in the foreground)."""
        for pod in self.pods:
            if pod.proc.poll() is None:
                pod.remember_descendants()
        return [p for p in self.pods if p.proc.poll() is not None]

    def stop(self) -> None:
        """Stop pods (SIGTERM, wait, SIGKILL by PID and process group), then etcd. Idempotent, and safe to
        call again if interrupted: nothing is forgotten until it has been stopped."""
        pods = list(self.pods)
        for pod in pods:
            pod.remember_descendants()
            if pod.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    pod.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for pod in pods:
            with contextlib.suppress(subprocess.TimeoutExpired):
                pod.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for pod in pods:
            self._kill_leftovers(pod)
        self.pods = []
        if self._etcd is not None:
            with contextlib.suppress(Exception):
                self._etcd.close()
            self._etcd = None
        if self._own_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # --- internals

    def _start_etcd(self) -> None:
        from mesh.devtools.etcd import EmbeddedEtcd  # only needed when no --etcd is given

        self._etcd = EmbeddedEtcd()
        self._etcd.start()
        self.etcd_endpoint = self._etcd.endpoint

    def serving_port(self, index: int) -> int | None:
        """Where pod ``index`` sends inference when it is not the runtime port (MLServer's own gRPC port)."""
        if self.runtime != "mlserver":
            return None
        return self._serving_ports.setdefault(index, free_port())

    def runtime_socket(self, index: int) -> Path:
        return self.data_dir / f"pod-{index}" / "runtime.sock"

    def runtime_cmd(self, index: int, runtime_port: int) -> list[str]:
        package = "mlserver" if self.runtime == "mlserver" else "builtin"
        cmd = [
            self.python,
            "-m",
            f"runtime_adapters.{package}",
            "--host",
            "127.0.0.1",
            "--port",
            str(runtime_port),
            "--capacity",
            str(self.capacity),
            "--model-dir",
            str(self.data_dir / f"pod-{index}" / "models"),
            "--local-root",
            str(self.models_dir),
        ]
        if self.storage_config:
            cmd += ["--storage-config", self.storage_config]
        if self.runtime == "mlserver":
            cmd += ["--start-mlserver", "--mlserver-grpc", f"127.0.0.1:{self.serving_port(index)}"]
        if self.runtime == "builtin-uds":
            cmd += ["--socket", str(self.runtime_socket(index))]
        return cmd

    def _runtime_flags(self, index: int, runtime_port: int) -> list[str]:
        """How pod ``index`` gets its runtime: it starts a process (TCP, or a unix socket), or runs it inside."""
        if self.runtime == "inprocess":
            argv = self.runtime_cmd(index, runtime_port)[3:]  # the builtin's flags, without python -m module
            return ["--runtime-inprocess", shlex.join(["runtime_adapters.builtin.inprocess", *argv])]
        address = (
            f"unix:{self.runtime_socket(index)}"
            if self.runtime == "builtin-uds"
            else f"127.0.0.1:{runtime_port}"
        )
        return [
            "--runtime-address",
            address,
            "--runtime-cmd",
            shlex.join(self.runtime_cmd(index, runtime_port)),
        ]

    def pod_cmd(
        self, index: int, port: int, runtime_port: int, metrics_port: int, rest_port: int = 0
    ) -> list[str]:
        return [
            self.python,
            "-m",
            "mesh",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--etcd",
            str(self.etcd_endpoint),
            "--kv-root",
            self.kv_root,
            "--instance-id",
            f"pod-{index}",
            "--metrics-port",
            str(metrics_port),
            "--rest-port",
            str(rest_port),
            *self._runtime_flags(index, runtime_port),
            *(
                ["--serving-address", f"127.0.0.1:{self.serving_port(index)}"]
                if self.serving_port(index)
                else []
            ),
            *(
                ["--dataplane-processes", str(self.dataplane_processes)]
                if self.dataplane_processes > 1
                else []
            ),
            *self.pod_args,
            *self.per_pod_args.get(index, ()),
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        # Pods only fork to exec their runtime. gRPC's fork handlers are then useless and unsafe: with other
        # threads inside gRPC they are skipped or crash the child (seen: runtime exits with SIGSEGV right
        # after "skipping fork() handlers"; grpc/grpc#29044, #22624). Disabling them is gRPC's advice.
        env.setdefault(GRPC_FORK_ENV, "0")
        paths = [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env.update(self.extra_env)
        return env

    def _spawn_pod(self, index: int) -> PodProcess:
        port = self.base_port + index
        if not port_is_free(port):
            raise ClusterStartError(f"port {port} for pod-{index} is already in use (try --port)")
        runtime_port, metrics_port, rest_port = free_port(), free_port(), free_port()
        (self.data_dir / f"pod-{index}" / "models").mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / f"pod-{index}.log"
        cmd = self.pod_cmd(index, port, runtime_port, metrics_port, rest_port)
        # The parent-death signal fires when the *thread* that forked exits: only arm it from the main thread
        # (mesh up, the demo, tests), where that means the process.
        if _on_main_thread():
            cmd = with_parent_death_signal(cmd)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                cwd=str(REPO_ROOT),
                start_new_session=True,  # own process group: a stray runtime is killed with it
            )
        pod = PodProcess(
            index,
            f"pod-{index}",
            f"127.0.0.1:{port}",
            runtime_port,
            metrics_port,
            log_path,
            proc,
            rest_port=rest_port,
        )
        with contextlib.suppress(psutil.Error):
            pod.started_at = psutil.Process(proc.pid).create_time()
        return pod

    @staticmethod
    def _kill_leftovers(pod: PodProcess) -> None:
        if pod.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                pod.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                pod.proc.wait(timeout=5)
        # The pod's process group outlives the pod while any member (e.g. its runtime) is alive. Members
        # are matched by group id AND start time, so a reused PID is never hit; psutil.Process objects
        # recorded earlier refuse to signal a reused PID themselves.
        leftovers = list(pod.descendants.values())
        groups = {pod.pid} | pod.groups
        groups.discard(os.getpgid(0))  # never our own group
        for proc in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(proc.pid) in groups and proc.create_time() >= pod.started_at:
                    leftovers.append(proc)
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.wait(timeout=5)
