"""The built-in runtime inside the pod process (the mesh's ``MM_RUNTIME_INPROCESS=runtime_adapters.builtin.inprocess``).

``start_inprocess(argv)`` builds what ``python -m runtime_adapters.builtin`` builds from the same flags (the
puller, the adapter, the SPI servicer and the V2 inference handlers) but starts no server: it returns the
generic handlers, which the pod calls directly (``mesh.inprocess.InProcessChannel``), and a coroutine
function that closes everything. See ``mesh/inprocess.py`` for what the mode gives up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import grpc

from puller.pull import Puller
from runtime_adapters.builtin.__main__ import build_runtime, build_settings, parse_args


async def start_inprocess(
    argv: Sequence[str],
) -> tuple[list[grpc.GenericRpcHandler], Callable[[], Awaitable[None]]]:
    settings, puller_settings = build_settings(parse_args(list(argv)))
    puller_settings.model_dir.mkdir(parents=True, exist_ok=True)
    puller = Puller(puller_settings)
    adapter, servicer = build_runtime(settings, puller_settings, puller)

    async def close() -> None:
        servicer.close()
        await adapter.close()
        await puller.close()

    return [servicer.generic_handler(), *adapter.serving_handlers()], close
