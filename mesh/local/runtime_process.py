"""RuntimeProcess: starts and supervises the runtime process beside this pod (when ``MM_RUNTIME_CMD`` is set).

The child runs in its own process group so stopping it also stops anything it spawned. When it exits
unexpectedly, ``on_exit`` is called at once (the pod drops every local copy and marks the runtime down) and the
process is restarted with exponential backoff (1 s doubling to 30 s, reset after 60 s of healthy running).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class RuntimeProcess:
    def __init__(
        self,
        cmd: str,
        *,
        on_exit: Callable[[int], Awaitable[None]],
        on_start: Callable[[], Awaitable[None]],
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = shlex.split(cmd)
        # extra environment for the runtime (e.g. STORAGE_CONFIG), on top of this process's own
        self.env = {**os.environ, **env} if env else None
        self.on_exit = on_exit
        self.on_start = on_start
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.create_task(self._supervise(), name="mesh:runtime-supervisor")

    async def _spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *_with_parent_death_signal(self.argv), start_new_session=True, env=self.env
        )
        log.info("started runtime (pid %d): %s", self.proc.pid, " ".join(self.argv[:3]))

    async def _supervise(self) -> None:
        backoff = 1.0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            assert self.proc is not None
            started = loop.time()
            code = await self.proc.wait()
            if self._stopping:
                return
            log.error("runtime exited with code %s; restarting in %.0fs", code, backoff)
            with contextlib.suppress(Exception):
                await self.on_exit(code)
            if loop.time() - started > 60:
                backoff = 1.0
            await asyncio.sleep(backoff)
            backoff = min(30.0, backoff * 2)
            if self._stopping:
                return
            self.restarts += 1
            await self._spawn()
            try:
                await self.on_start()
            except Exception as exc:
                log.error("runtime did not come back ready: %s", exc)

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        _signal_group(proc.pid, signal.SIGKILL)  # anything left in the group


def _with_parent_death_signal(argv: list[str]) -> list[str]:
    """Make the runtime get SIGTERM when the mesh process dies, even by SIGKILL (Linux ``setpriv``), so a
    runtime never outlives its pod, as two containers of one Kubernetes pod would not. ``setpriv`` is used
    rather than a ``preexec_fn``: running Python in a child forked from a process with gRPC threads crashes."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", *argv] if setpriv else argv


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
