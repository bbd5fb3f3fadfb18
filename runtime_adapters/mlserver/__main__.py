"""``python -m runtime_adapters.mlserver``: the MLServer adapter process (mmesh.ModelRuntime SPI).

Composition root. With ``--start-mlserver`` it starts MLServer from its own venv (``--mlserver-bin``,
default ``.venv-mlserver/bin/mlserver``) on ``--mlserver-grpc`` and supervises it; without, it connects to
an MLServer already listening there and polls its readiness. The mesh pod must send inference to the same
address (``mesh serve --serving-address``): MLServer serves V2 inference itself; this process serves only
the SPI.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from runtime_adapters.mlserver.adapter import MLServerAdapter
from runtime_adapters.mlserver.process import MLServerProcess
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
from runtime_adapters.v2_repository import ProcessTreeMeter, V2RepositoryClient

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO_ROOT / ".venv-mlserver" / "bin" / "mlserver"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m runtime_adapters.mlserver", description=__doc__.splitlines()[0]
    )
    add_common_args(p)
    p.add_argument(
        "--mlserver-grpc",
        required=True,
        type=host_port,
        metavar="HOST:PORT",
        help="MLServer's V2 gRPC address",
    )
    p.add_argument("--start-mlserver", action="store_true", help="start and supervise MLServer")
    p.add_argument("--mlserver-bin", default=str(DEFAULT_BIN), help="mlserver executable (own venv)")
    p.add_argument("--mlserver-pid", type=int, default=None,
                   help="PID of an MLServer not started here, to measure its memory")  # fmt: skip
    p.add_argument("--mlserver-ready-timeout", type=float, default=120.0, help="seconds (default 120)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings, puller_settings = settings_or_usage_error(args, build_settings)
    host, _, port = args.mlserver_grpc.rpartition(":")
    grpc_port = int(port)  # checked by host_port
    if args.start_mlserver and not Path(args.mlserver_bin).exists():
        print(f"error: {args.mlserver_bin} not found (run scripts/mlserver_venv.sh)", file=sys.stderr)
        return 2
    asyncio.run(_run(args, settings, puller_settings, host or "127.0.0.1", grpc_port))
    return 0


async def _run(args, settings, puller_settings, host: str, grpc_port: int) -> None:
    client = V2RepositoryClient(f"{host}:{grpc_port}", max_message_bytes=settings.max_message_bytes)
    process: MLServerProcess | None = None

    def pid() -> int | None:
        return process.pid if process is not None else args.mlserver_pid

    adapter = MLServerAdapter(
        client=client,
        repo_dir=repo_dir(args, puller_settings, "mlserver"),
        capacity_bytes=settings.capacity_bytes,
        sizes=SizeModel(
            default_size=settings.default_model_size, override_multiplier=settings.size_multiplier
        ),
        meter=ProcessTreeMeter(pid),
        runtime_version=settings.runtime_version,
        load_rpc_timeout_s=settings.load_timeout_ms / 1000,
        measure_wait_s=settings.load_timeout_ms / 1000,
    )
    poller: asyncio.Task | None = None
    if args.start_mlserver:
        process = MLServerProcess(
            binary=args.mlserver_bin,
            repo_dir=adapter.repo_dir,
            host=host,
            grpc_port=grpc_port,
            client=client,
            on_down=adapter.server_down,
            on_up=adapter.server_up,
            max_message_bytes=settings.max_message_bytes,
            ready_timeout_s=args.mlserver_ready_timeout,
        )

    async def start() -> None:
        nonlocal poller
        if process is not None:
            await process.start()
        else:
            poller = asyncio.create_task(poll_health(adapter), name="rt:mlserver-health")

    async def stop() -> None:
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        if process is not None:
            await process.stop()

    await serve(settings, puller_settings, adapter, start_backend=start, stop_backend=stop)


if __name__ == "__main__":
    sys.exit(main())
