"""``python -m runtime_adapters.triton``: the Triton adapter process (mmesh.ModelRuntime SPI).

Connects to a Triton started beside it with ``--model-control-mode=explicit --model-repository=<repo>``
(the same directory as this process's ``--repo``) and polls its readiness (three failed polls mark it
down: its models are dropped here and loads fail UNAVAILABLE until it answers again). The mesh pod sends
inference straight to Triton (``mesh serve --serving-address`` = ``--triton-grpc``). ``--triton-pid``
lets the adapter measure Triton's memory around each load; without it sizes are disk x multiplier.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from runtime_adapters.repository_adapter import poll_health
from runtime_adapters.repository_main import (
    add_common_args,
    build_settings,
    host_port,
    repo_dir,
    serve,
)
from runtime_adapters.settings import settings_or_usage_error
from runtime_adapters.sizing import SizeModel
from runtime_adapters.triton.adapter import TritonAdapter
from runtime_adapters.v2_repository import ProcessTreeMeter, V2RepositoryClient


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m runtime_adapters.triton", description=__doc__.splitlines()[0])
    add_common_args(p)
    p.add_argument(
        "--triton-grpc", required=True, type=host_port, metavar="HOST:PORT", help="Triton's V2 gRPC address"
    )
    p.add_argument("--triton-pid", type=int, default=None, help="Triton's PID, to measure its memory")
    p.add_argument("--health-interval", type=float, default=1.0, help="seconds between readiness polls")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings, puller_settings = settings_or_usage_error(args, build_settings)
    asyncio.run(_run(args, settings, puller_settings))
    return 0


async def _run(args, settings, puller_settings) -> None:
    client = V2RepositoryClient(args.triton_grpc, max_message_bytes=settings.max_message_bytes)
    adapter = TritonAdapter(
        client=client,
        repo_dir=repo_dir(args, puller_settings, "triton"),
        capacity_bytes=settings.capacity_bytes,
        sizes=SizeModel(
            default_size=settings.default_model_size, override_multiplier=settings.size_multiplier
        ),
        meter=ProcessTreeMeter(lambda: args.triton_pid) if args.triton_pid else None,
        runtime_version=settings.runtime_version,
        load_rpc_timeout_s=settings.load_timeout_ms / 1000,
        measure_wait_s=settings.load_timeout_ms / 1000,
        method_names=("ModelInfer", "ModelMetadata", "ModelReady"),
    )
    poller: asyncio.Task | None = None

    async def start() -> None:
        nonlocal poller
        if await client.ready(timeout=2.0):
            await adapter.server_up()
        poller = asyncio.create_task(
            poll_health(adapter, interval_s=args.health_interval), name="rt:triton-health"
        )

    async def stop() -> None:
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)

    await serve(settings, puller_settings, adapter, start_backend=start, stop_backend=stop)


if __name__ == "__main__":
    sys.exit(main())
