"""``python -m runtime_adapters.builtin``: the built-in runtime process (SPI + V2 inference on one port).

Composition root: parses flags into ``RuntimeSettings`` (flags > env > cgroup > defaults; one flag per
setting, from ``runtime_adapters.settings.add_arguments``) and
``PullerSettings``, builds the puller, the adapter and the servicer, serves until SIGTERM/SIGINT, then
stops with a grace period and closes everything. Logs go to stderr; per-request logs only at DEBUG.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from importlib import metadata

from mesh.tracing import TRACING
from puller.pull import Puller
from puller.settings import PullerSettings
from puller.settings import add_arguments as add_puller_arguments
from runtime_adapters.builtin.adapter import BuiltinAdapter
from runtime_adapters.server import ModelRuntimeServicer, start_server
from runtime_adapters.settings import (
    RuntimeSettings,
    add_arguments,
    puller_settings_for,
    settings_or_usage_error,
)
from runtime_adapters.sizing import SizeModel

log = logging.getLogger("runtime_adapters.builtin")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m runtime_adapters.builtin", description=__doc__.splitlines()[0]
    )
    add_arguments(p)  # one flag per RuntimeSettings field (docs/configuration.md)
    add_puller_arguments(p)  # and per PullerSettings field (--puller-*)
    return p.parse_args(argv)


def build_settings(args: argparse.Namespace) -> tuple[RuntimeSettings, PullerSettings]:
    settings = RuntimeSettings.from_args(args)
    if not settings.runtime_version:
        settings.runtime_version = _package_version()
    if not settings.predict_threads:
        settings.predict_threads = min(4, os.cpu_count() or 1)
    return settings, puller_settings_for(settings, args)


def _package_version() -> str:
    try:
        return f"builtin-{metadata.version('modelmesh-py')}"
    except metadata.PackageNotFoundError:
        return "builtin-dev"


def build_runtime(
    settings: RuntimeSettings, puller_settings: PullerSettings, puller: Puller
) -> tuple[BuiltinAdapter, ModelRuntimeServicer]:
    """The adapter and the SPI servicer (shared by the process and the in-process mode)."""
    adapter = BuiltinAdapter(
        capacity_bytes=settings.capacity_bytes,
        runtime_version=settings.runtime_version,
        sizes=SizeModel(
            default_size=settings.default_model_size, override_multiplier=settings.size_multiplier
        ),
        load_threads=settings.loading_concurrency + 2,
        predict_threads=settings.predict_threads,
        measure_wait_s=settings.load_timeout_ms / 1000,
    )
    servicer = ModelRuntimeServicer(adapter, puller, settings, local_roots=puller_settings.local_roots)
    return adapter, servicer


async def serve(settings: RuntimeSettings, puller_settings: PullerSettings) -> None:
    puller_settings.model_dir.mkdir(parents=True, exist_ok=True)
    puller = Puller(puller_settings)
    adapter, servicer = build_runtime(settings, puller_settings, puller)
    server, port = await start_server(settings, servicer, adapter)
    log.info(
        "builtin runtime %s serving mmesh.ModelRuntime + V2 inference on %s:%d%s (capacity %d bytes, "
        "model dir %s)", settings.runtime_version, settings.host, port, " over TLS" if settings.tls_cert else "",
        settings.capacity_bytes, puller_settings.model_dir,
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("stopping (grace %.1fs)", settings.grace_s)
        await server.stop(settings.grace_s)
    finally:
        servicer.close()
        await adapter.close()
        await puller.close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    settings, puller_settings = settings_or_usage_error(parse_args(argv), build_settings)
    try:
        asyncio.run(serve(settings, puller_settings))
    finally:
        TRACING.shutdown()  # flush spans still buffered
    return 0


if __name__ == "__main__":
    sys.exit(main())
