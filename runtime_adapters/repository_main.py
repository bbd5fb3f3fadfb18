"""Process plumbing shared by the MLServer and Triton adapter processes (their ``__main__`` modules).

Owns the flags every repository adapter takes (the runtime settings' own, from
``runtime_adapters.settings.add_arguments``, plus ``--repo``), turning them into ``RuntimeSettings`` (flags >
env > cgroup > defaults) and ``PullerSettings``, and the serve loop: start the SPI server, run until
SIGTERM/SIGINT, stop with a grace period, then run the adapter's own shutdown (e.g. stop MLServer).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from puller.pull import Puller
from puller.settings import PullerSettings
from puller.settings import add_arguments as add_puller_arguments
from runtime_adapters.repository_adapter import RepositoryAdapter
from runtime_adapters.server import ModelRuntimeServicer, start_server
from runtime_adapters.settings import RuntimeSettings, add_arguments, puller_settings_for

log = logging.getLogger("runtime_adapters.repository")


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The runtime settings' flags (one per ``RuntimeSettings`` field, but the built-in's predict threads)
    and ``--repo``."""
    add_arguments(p, exclude=("predict_threads",))
    add_puller_arguments(p)
    p.add_argument("--repo", type=Path, default=None,
                   help="the model server's repository dir (default: <model-dir>/../<server>-repo)")  # fmt: skip


def host_port(text: str) -> str:
    """argparse type of the model server's ``HOST:PORT`` flag: a bad one exits 2 with the flag named."""
    _, sep, port = text.rpartition(":")
    if not (sep and port.isdigit() and 0 < int(port) < 65536):
        raise argparse.ArgumentTypeError(f"'{text}' is not HOST:PORT")
    return text


def build_settings(args: argparse.Namespace) -> tuple[RuntimeSettings, PullerSettings]:
    settings = RuntimeSettings.from_args(args)
    return settings, puller_settings_for(settings, args)


def repo_dir(args: argparse.Namespace, puller_settings: PullerSettings, server: str) -> Path:
    """The server's repository: never inside the puller's model dir (the puller owns every folder there)."""
    if args.repo is not None:
        return Path(args.repo).resolve()
    model_dir = Path(puller_settings.model_dir).resolve()
    return model_dir.parent / f"{model_dir.name}-{server}-repo"


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
