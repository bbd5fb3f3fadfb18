"""Process plumbing shared by the MLServer and Triton adapter processes (their ``__main__`` modules).

Owns the flags every repository adapter takes (the SPI port, capacity, model dir, local roots, storage
config, loading concurrency/timeout, default size), turning them into ``RuntimeSettings`` (flags > env >
cgroup > defaults) and ``PullerSettings``, and the serve loop: start the SPI server, run until
SIGTERM/SIGINT, stop with a grace period, then run the adapter's own shutdown (e.g. stop MLServer).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from mesh.redact import install_log_redaction
from puller.pull import Puller
from puller.settings import PullerSettings
from runtime_adapters.repository_adapter import RepositoryAdapter
from runtime_adapters.server import ModelRuntimeServicer, start_server
from runtime_adapters.settings import RuntimeSettings

log = logging.getLogger("runtime_adapters.repository")

_SETTINGS_FLAGS = ("host", "port", "socket_path", "capacity_bytes", "model_dir", "storage_config",
                   "loading_concurrency", "load_timeout_ms", "default_model_size")  # fmt: skip


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=None, help="SPI bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="SPI gRPC port (default 8085, env ADAPTER_PORT)")
    p.add_argument("--socket", dest="socket_path", default=None, help="also listen on this unix socket")
    p.add_argument("--capacity", dest="capacity_bytes", type=int, default=None,
                   help="model memory in bytes (default: CONTAINER_MEM_REQ_BYTES or cgroup limit minus "
                        "MEM_BUFFER_BYTES)")  # fmt: skip
    p.add_argument("--model-dir", type=Path, default=None, help="where pulled models go (env ROOT_MODEL_DIR)")
    p.add_argument("--repo", type=Path, default=None,
                   help="the model server's repository dir (default: <model-dir>/../<server>-repo)")  # fmt: skip
    p.add_argument("--local-root", dest="local_roots", type=Path, action="append", default=None,
                   help="root that local model paths must stay inside (repeatable)")  # fmt: skip
    p.add_argument("--storage-config", type=Path, default=None, help="storage config JSON file or dir")
    p.add_argument("--loading-concurrency", type=int, default=None, help="parallel loads (default 1)")
    p.add_argument("--load-timeout-ms", type=int, default=None, help="pull+load deadline (default 90000)")
    p.add_argument("--default-model-size", type=int, default=None, help="bytes (default 1000000)")
    p.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))


def build_settings(args: argparse.Namespace) -> tuple[RuntimeSettings, PullerSettings]:
    flags = {k: getattr(args, k) for k in _SETTINGS_FLAGS}
    if args.local_roots:
        flags["local_roots"] = tuple(args.local_roots)
    settings = RuntimeSettings.from_env(**flags)
    puller_overrides: dict = {}
    if settings.model_dir is not None:
        puller_overrides["model_dir"] = settings.model_dir
    if settings.local_roots:
        puller_overrides["local_roots"] = tuple(p.resolve() for p in settings.local_roots)
    if settings.storage_config is not None:
        puller_overrides["storage_config"] = settings.storage_config
    return settings, PullerSettings.from_env(**puller_overrides)


def repo_dir(args: argparse.Namespace, puller_settings: PullerSettings, server: str) -> Path:
    """The server's repository: never inside the puller's model dir (the puller owns every folder there)."""
    if args.repo is not None:
        return Path(args.repo).resolve()
    model_dir = Path(puller_settings.model_dir).resolve()
    return model_dir.parent / f"{model_dir.name}-{server}-repo"


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    install_log_redaction()  # no credential in any line, a library's own included


async def serve(
    settings: RuntimeSettings,
    puller_settings: PullerSettings,
    adapter: RepositoryAdapter,
    *,
    start_backend: Callable[[], Awaitable[None]],
    stop_backend: Callable[[], Awaitable[None]],
) -> None:
    """Start the backend (the model server or its health poller), then the SPI; serve until a signal."""
    puller_settings.model_dir.mkdir(parents=True, exist_ok=True)
    puller = Puller(puller_settings)
    servicer = ModelRuntimeServicer(adapter, puller, settings, local_roots=puller_settings.local_roots)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = None
    try:
        await start_backend()
        server, port = await start_server(settings, servicer, adapter)
        log.info(
            "%s adapter serving mmesh.ModelRuntime on %s:%d (capacity %d bytes, model dir %s, repo %s)",
            adapter.server_name, settings.host, port, settings.capacity_bytes, puller_settings.model_dir,
            adapter.repo_dir,
        )  # fmt: skip
        await stop.wait()
        log.info("stopping (grace %.1fs)", settings.grace_s)
    finally:
        if server is not None:
            await server.stop(settings.grace_s)
        await stop_backend()
        servicer.close()
        await adapter.close()
        await puller.close()
    log.info("stopped")
