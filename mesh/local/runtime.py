"""LocalRuntime: this pod's model runtime — its process (when the pod starts it), its SPI client and its
inference link — and what happens when it dies and comes back.

Three ways to have a runtime: an address the pod only talks to (a runtime container beside it); a command
the pod starts and supervises (``MM_RUNTIME_CMD``); or a runtime module run *inside* the pod process
(``MM_RUNTIME_INPROCESS``, ``mesh.inprocess``): the module is imported by name (the mesh never imports a
runtime package statically) and must provide ``async start_inprocess(argv) -> (handlers, close)``, its gRPC
generic handlers and a coroutine function that stops it.

When ``MM_RUNTIME_CMD`` is set the runtime runs as a ``mesh.process.SupervisedProcess``. When it exits, the
pod learns at once: the inference link goes (requests fail over with RuntimeUnavailable) and every
``on_lost`` callback runs (the loader drops every local copy and the registry forgets them). The restarted
runtime is waited for (runtimeStatus READY, which also purges leftovers), a new link is made from its new
method table, and every ``on_back`` callback gets the new ``RuntimeInfo``.
"""

from __future__ import annotations

import importlib
import logging
import shlex
from collections.abc import Awaitable, Callable, Mapping

from mesh.channels import TlsFiles
from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.dataplane.runtime_link import RuntimeLink
from mesh.inprocess import InProcessChannel
from mesh.local.runtime_client import RuntimeClient, RuntimeInfo
from mesh.process import SupervisedProcess

log = logging.getLogger(__name__)


class LocalRuntime:
    def __init__(
        self,
        *,
        spi_address: str,
        serving_address: str,
        command: list[str] | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout_s: float = 180.0,
        max_message_bytes: int = 16 << 20,
        tls: TlsFiles | None = None,
        on_restart: Callable[[], None] = lambda: None,
        clock: Clock = SYSTEM_CLOCK,
        inprocess: str = "",
    ) -> None:
        self.inprocess = shlex.split(inprocess)  # [module, *argv] of an in-process runtime
        self.clock = clock
        self.spi_address = spi_address
        self.channel: InProcessChannel | None = None
        self.client = RuntimeClient(spi_address, tls=tls, clock=clock)
        self.serving_address = serving_address
        self.startup_timeout_s = startup_timeout_s
        self.max_message_bytes = max_message_bytes
        self.tls = tls
        self._on_restart = on_restart
        self.link: RuntimeLink | None = None
        self.info: RuntimeInfo | None = None
        self._lost: list[Callable[[], Awaitable[None]]] = []
        self._back: list[Callable[[RuntimeInfo], None]] = []
        self.process = (
            SupervisedProcess(
                command,
                name="runtime",
                on_exit=self._exited,
                on_restart=self._restarted,
                env=env,
                clock=clock,
            )
            if command
            else None
        )

    def on_lost(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._lost.append(fn)

    def on_back(self, fn: Callable[[RuntimeInfo], None]) -> None:
        self._back.append(fn)

    async def start(self) -> RuntimeInfo:
        """Start the process (if this pod runs it) and wait until the runtime is READY."""
        if self.inprocess:
            await self._start_inprocess()
        if self.process is not None:
            await self.process.start()
        return await self._ready()

    async def _start_inprocess(self) -> None:
        module, *argv = self.inprocess
        handlers, close = await importlib.import_module(module).start_inprocess(argv)
        self.channel = InProcessChannel(handlers, on_close=close)
        await self.client.close()
        self.client = RuntimeClient(f"inprocess:{module}", clock=self.clock, channel=self.channel)
        log.info("runtime %s runs inside this pod (in-process mode)", module)

    async def _ready(self) -> RuntimeInfo:
        info = await self.client.wait_ready(self.startup_timeout_s)
        old, self.link = self.link, self._make_link(info)
        if old is not None:
            await old.close()
        self.info = info
        return info

    def _make_link(self, info: RuntimeInfo) -> RuntimeLink:
        return RuntimeLink(
            self.client.address if self.channel is not None else self.serving_address,
            method_infos=info.method_infos,
            allow_any_method=info.allow_any_method,
            tls=self.tls,
            max_message_bytes=self.max_message_bytes,
            channel=self.channel,
        )

    async def _exited(self, code: int) -> None:
        self._on_restart()
        link, self.link = self.link, None
        if link is not None:
            await link.close()
        for fn in self._lost:
            await fn()

    async def _restarted(self) -> None:
        info = await self._ready()
        for fn in self._back:
            fn(info)
        log.info("runtime is back (restart %d)", self.process.restarts if self.process else 0)

    async def stop(self) -> None:
        if self.process is not None:
            await self.process.stop()
        if self.link is not None:
            await self.link.close()
            self.link = None
        await self.client.close()  # an in-process runtime stops here (its channel's close)
