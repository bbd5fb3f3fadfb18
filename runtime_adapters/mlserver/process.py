"""MLServerProcess: starts MLServer beside the adapter and supervises it (restart with backoff).

MLServer runs from its own virtualenv (``scripts/mlserver_venv.sh``: it pins protobuf<7, the mesh runs
protobuf 7) as ``<mlserver-bin> start <repo>``, configured by ``<repo>/settings.json``: loopback ports,
``parallel_workers: 0`` (workers cost latency on small machines and crash-loop with uvloop>=0.22,
deps.md §4), ``load_models_at_startup: false`` (the mesh decides what is loaded) and the gRPC message
limit. The gRPC port is fixed for the adapter's life, because the mesh sends inference there; the HTTP
and metrics ports are picked free once.

It shares the adapter's process group (so the mesh stopping the adapter's group stops MLServer too) and
gets SIGTERM if the adapter dies (Linux parent-death signal). When it exits unexpectedly, ``on_down`` runs
at once, then it is restarted after 1 s doubling to 30 s (reset after 60 s of healthy running), and
``on_up`` runs when it answers ServerReady again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from runtime_adapters.v2_repository import V2RepositoryClient

log = logging.getLogger("runtime_adapters.mlserver.process")

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_RESET_S = 60.0


def _libc() -> ctypes.CDLL | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def _die_with_parent() -> None:
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MLServerProcess:
    def __init__(
        self,
        *,
        binary: str,
        repo_dir: Path,
        host: str,
        grpc_port: int,
        client: V2RepositoryClient,
        on_down: Callable[[str], object],
        on_up: Callable[[], Awaitable[None]],
        max_message_bytes: int = 16 << 20,
        http_port: int = 0,
        metrics_port: int = 0,
        ready_timeout_s: float = 120.0,
    ) -> None:
        self.binary = binary
        self.repo_dir = repo_dir
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.client = client
        self.on_down = on_down
        self.on_up = on_up
        self.max_message_bytes = max_message_bytes
        self.ready_timeout_s = ready_timeout_s
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._task: asyncio.Task | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        proc = self.proc
        return proc.pid if proc is not None and proc.returncode is None else None

    def settings(self) -> dict:
        return {
            "host": self.host,
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            "load_models_at_startup": False,
            "parallel_workers": 0,
            "grpc_max_message_length": self.max_message_bytes,
            "debug": False,
        }

    async def start(self) -> None:
        """Spawn MLServer, wait until it is ready, then supervise it in the background."""
        await self._spawn()
        await self._wait_ready()
        await self.on_up()
        self._task = asyncio.create_task(self._supervise(), name="rt:mlserver-supervisor")

    async def _spawn(self) -> None:
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        (self.repo_dir / "settings.json").write_text(json.dumps(self.settings(), indent=1))
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # the mesh's PYTHONPATH (protobuf 7 protos) must not leak into MLServer
        self.proc = await asyncio.create_subprocess_exec(
            self.binary,
            "start",
            str(self.repo_dir),
            cwd=str(self.repo_dir),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=_die_with_parent if _LIBC is not None else None,
        )
        log.info("started MLServer (pid %d) on %s:%d (repo %s)", self.proc.pid, self.host, self.grpc_port,
                 self.repo_dir)  # fmt: skip

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout_s
        assert self.proc is not None
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"MLServer exited with code {self.proc.returncode} during start-up")
            if await self.client.ready(timeout=1.0):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"MLServer not ready within {self.ready_timeout_s:.0f}s")

    async def _supervise(self) -> None:
        backoff = BACKOFF_START_S
        loop = asyncio.get_running_loop()
        while not self._stopping:
            assert self.proc is not None
            started = loop.time()
            code = await self.proc.wait()
            if self._stopping:
                return
            if loop.time() - started > HEALTHY_RESET_S:
                backoff = BACKOFF_START_S
            self.on_down(f"MLServer exited with code {code}")
            log.error(
                "MLServer (pid %d) exited with code %s; restarting in %.0fs", self.proc.pid, code, backoff
            )
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)
            if self._stopping:
                return
            self.restarts += 1
            try:
                await self._spawn()
                await self._wait_ready()
                await self.on_up()
            except (OSError, RuntimeError) as exc:
                log.error("MLServer restart %d failed: %s", self.restarts, exc)
                if self.proc is not None and self.proc.returncode is None:
                    self._signal(signal.SIGKILL)  # not ready in time: the next round starts a fresh one

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            self._signal(signal.SIGKILL)
            await proc.wait()
