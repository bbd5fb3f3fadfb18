"""Fixtures and process helpers for the MLServer/Triton adapter tests: real processes, stopped by PID.

- ``mlserver_bin`` (session): ``.venv-mlserver/bin/mlserver``; the test is skipped with a clear reason only
  when that venv is missing (``make test`` creates it through ``scripts/mlserver_venv.sh``).
- ``runtime_samples`` (session): the sample models (``runtime_adapters.builtin.samples``) in var/test-models,
  as ``(dir, {id: entry})`` with entries from ``mesh.devtools.demo.sample_entries``.
- ``AdapterProcess``: ``python -m runtime_adapters.<name> ...`` as a subprocess (its own process group, so
  stopping it also stops the MLServer it started), with an SPI stub and ``child_pids()`` (MLServer's PID).
- ``MeshPod``: one ``python -m mesh serve`` against the session etcd with any ``--runtime-cmd``.
Import fixtures into a test module: ``from tests.support.mlserver import mlserver_bin, runtime_samples``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import psutil
import pytest

from mesh.devtools.demo import sample_entries
from mesh.process import free_port
from protos.inference import grpc_predict_v2_pb2 as v2
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from protos.mmesh import model_runtime_pb2 as rt
from protos.mmesh import model_runtime_pb2_grpc as rt_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
MLSERVER_BIN = REPO_ROOT / ".venv-mlserver" / "bin" / "mlserver"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    return env


@pytest.fixture(scope="session")
def mlserver_bin() -> Path:
    if not MLSERVER_BIN.exists():
        pytest.skip(
            f"{MLSERVER_BIN} missing: run scripts/mlserver_venv.sh (make test does) to install MLServer"
        )
    return MLSERVER_BIN


@pytest.fixture(scope="session")
def runtime_samples() -> tuple[Path, dict[str, dict]]:
    """The session's sample models (var/test-models, generated once per machine), default group by id."""
    from tests.support.samples import SAMPLES_DIR, ensure_samples

    return SAMPLES_DIR, {e["id"]: e for e in sample_entries(ensure_samples())}


def log_tail(path: Path, lines: int = 60) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


class AdapterProcess:
    """A runtime adapter process serving the SPI on ``port``."""

    def __init__(self, module: str, args: Sequence[str], *, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.cmd = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        self._channel = grpc.insecure_channel(self.address)
        self.spi = rt_grpc.ModelRuntimeStub(self._channel)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"adapter exited with {self.proc.returncode}:\n{log_tail(self.log_path)}")
            with contextlib.suppress(grpc.RpcError):
                if (
                    self.spi.runtimeStatus(rt.RuntimeStatusRequest(), timeout=2).status
                    == rt.RuntimeStatusResponse.READY
                ):
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"adapter not READY within {timeout}s:\n{log_tail(self.log_path)}")

    def child_pids(self) -> list[int]:
        assert self.proc is not None
        with contextlib.suppress(psutil.Error):
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        return []

    def stop(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self.proc is None:
            return
        stop_group(self.proc)

    def __enter__(self) -> AdapterProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_group(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process, wait, then SIGKILL its process group (it was started in its own session)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group (e.g. a model server)


def mlserver_pids(root_pid: int) -> list[int]:
    """PIDs of MLServer processes (run from .venv-mlserver) below ``root_pid``."""
    venv = str(MLSERVER_BIN.parent.parent)
    pids = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(root_pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any(part.startswith(venv) for part in child.cmdline()[:2]):
                    pids.append(child.pid)
    return pids


def repository_index(address: str) -> dict[str, str]:
    """RepositoryIndex of a V2 server as {name: state} (MLServer's "State.READY" normalised to "READY")."""
    with grpc.insecure_channel(address) as ch:
        resp = v2_grpc.GRPCInferenceServiceStub(ch).RepositoryIndex(v2.RepositoryIndexRequest(), timeout=10)
    return {m.name: m.state.rsplit(".", 1)[-1] for m in resp.models}


class MeshPod:
    """``python -m mesh serve`` on a free port against ``etcd`` with the given runtime command."""

    def __init__(self, *, etcd: str, kv_root: str, runtime_cmd: Sequence[str], runtime_port: int,
                 serving_address: str, log_path: Path, extra: Sequence[str] = ()) -> None:  # fmt: skip
        self.port = free_port()
        self.log_path = log_path
        self.cmd = [
            sys.executable, "-m", "mesh", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--etcd", etcd, "--kv-root", kv_root, "--instance-id", f"pod-{self.port}", "--metrics-port", "0", "--rest-port", "0",
            "--runtime-address", f"127.0.0.1:{runtime_port}", "--serving-address", serving_address,
            "--runtime-cmd", shlex.join(runtime_cmd), *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> None:
        from mesh.devtools.cluster import health_serving

        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO_ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while not health_serving(self.address, timeout=0.5):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mesh pod did not come up:\n{log_tail(self.log_path)}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        descendants = []
        with contextlib.suppress(psutil.Error):
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        stop_group(self.proc, timeout=20)
        for child in descendants:  # the runtime runs in its own session
            with contextlib.suppress(psutil.Error):
                child.kill()

    def __enter__(self) -> MeshPod:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
