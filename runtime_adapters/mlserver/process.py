"""MLServerProcess: starts MLServer beside the adapter and supervises it through ``mesh.process``.

MLServer runs from its own virtualenv (``scripts/mlserver_venv.sh``: it pins protobuf<7, the mesh runs
protobuf 7) as ``<mlserver-bin> start <repo>``, configured by ``<repo>/settings.json``: loopback ports,
``parallel_workers: 0`` (workers cost latency on small machines and crash-loop with uvloop>=0.22,
deps.md §4), ``load_models_at_startup: false`` (the mesh decides what is loaded) and the gRPC message
limit. The gRPC port is fixed for the adapter's life, because the mesh sends inference there; the HTTP
and metrics ports are picked free once.

It shares the adapter's process group (so the mesh stopping the adapter's group stops MLServer too) and
gets SIGTERM if the adapter dies. Restarts (backoff, parent-death signal, stop) are ``SupervisedProcess``'s,
the same supervisor the pod uses for its runtime: on an unexpected exit ``on_down`` runs at once, and
``on_up`` once the restarted MLServer answers ServerReady again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from mesh.process import SupervisedProcess, free_port
from runtime_adapters.v2_repository import V2RepositoryClient

log = logging.getLogger("runtime_adapters.mlserver.process")


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
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # the mesh's PYTHONPATH (protobuf 7 protos) must not leak into MLServer
        self._process = SupervisedProcess(
            [binary, "start", str(repo_dir)],
            name="MLServer",
            on_exit=lambda code: self.on_down(f"MLServer exited with code {code}"),
            on_restart=self._ready_again,
            env=env,
            cwd=str(repo_dir),
            own_group=False,
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def restarts(self) -> int:
        return self._process.restarts

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
        """Spawn MLServer, wait until it is ready, then leave it supervised in the background."""
        self.repo_dir.mkdir(parents=True, exist_ok=True)
        (self.repo_dir / "settings.json").write_text(json.dumps(self.settings(), indent=1))
        await self._process.start()
        await self._wait_ready()
        await self.on_up()

    async def _ready_again(self) -> None:
        await self._wait_ready()
        await self.on_up()

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout_s
        while loop.time() < deadline:
            proc = self._process.proc
            if proc is not None and proc.returncode is not None:
                raise RuntimeError(f"MLServer exited with code {proc.returncode} during start-up")
            if await self.client.ready(timeout=1.0):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"MLServer not ready within {self.ready_timeout_s:.0f}s")

    async def stop(self, timeout: float = 10.0) -> None:
        await self._process.stop(timeout)
