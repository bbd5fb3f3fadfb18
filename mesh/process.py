"""Child processes that must never outlive their parent, and the one supervisor that restarts them.

Used for the runtime a pod starts (``MM_RUNTIME_CMD``), for MLServer under the MLServer adapter, and by the
development tooling (``mesh up``'s pods, the embedded etcd).

Parent death: ``with_parent_death_signal`` prefixes a command with Linux ``setpriv --pdeathsig SIG``, so the
child gets ``SIG`` when the process that started it dies, even by SIGKILL, as two containers of one
Kubernetes pod would not outlive each other. ``setpriv`` rather than a ``preexec_fn`` calling prctl: running
Python code in a child forked from a process with gRPC threads can crash it (grpc/grpc#29044), and an exec'd
helper has no such problem. The signal fires when the *thread* that forked exits, so spawn from the event
loop's (main) thread. Where ``setpriv`` is missing (not Linux), the command runs unchanged.

Supervision: ``SupervisedProcess`` runs the child, notices its exit at once (``on_exit``), restarts it after a
backoff (1 s doubling to 30 s, reset after 60 s of healthy running), and then runs ``on_restart`` (e.g. wait
until it answers and re-attach); a child that fails ``on_restart`` is killed so the next round starts fresh.
``stop`` sends SIGTERM (to the whole process group when the child has its own), then SIGKILL after a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import shutil
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from mesh.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)


def with_parent_death_signal(argv: Sequence[str], sig: str = "TERM") -> list[str]:
    """``argv`` run under ``setpriv --pdeathsig sig`` when available (see the module docstring)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", sig, "--", *argv] if setpriv else list(argv)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now, for a child server told its port on the command line (etcd, MLServer's
    side ports, test servers). Another process may take it before the child binds: callers that can,
    bind port 0 themselves instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def signal_process(pid: int, sig: int, *, group: bool) -> None:
    """Send ``sig`` to ``pid`` (or to its whole process group); a process already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays: ``first`` doubling up to ``cap``; back to ``first`` after ``healthy_s`` of running."""

    first: float = 1.0
    cap: float = 30.0
    healthy_s: float = 60.0


class SupervisedProcess:
    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        on_exit: Callable[[int], Awaitable[None] | None] | None = None,
        on_restart: Callable[[], Awaitable[None]] | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        own_group: bool = True,
        death_signal: str = "TERM",
        backoff: Backoff = Backoff(),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.argv = list(argv)
        self.name = name
        self.on_exit = on_exit
        self.on_restart = on_restart
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.own_group = own_group
        self.death_signal = death_signal
        self.backoff = backoff
        self.clock = clock
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        proc = self.proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def start(self) -> None:
        """Spawn the child and supervise it in the background."""
        await self._spawn()
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"mesh:process:{self.name}"
        )

    async def _spawn(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *with_parent_death_signal(self.argv, self.death_signal),
            env=self.env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=self.own_group,
        )
        log.info("started %s (pid %d): %s", self.name, self.proc.pid, " ".join(self.argv[:3]))

    async def _supervise(self) -> None:
        delay = self.backoff.first
        while not self._stopping:
            proc = self.proc
            assert proc is not None
            started = self.clock.monotonic()
            code = await proc.wait()
            if self._stopping:
                return
            if self.clock.monotonic() - started > self.backoff.healthy_s:
                delay = self.backoff.first
            log.error(
                "%s (pid %d) exited with code %s; restarting in %.0fs", self.name, proc.pid, code, delay
            )
            if self.on_exit is not None:
                try:
                    result = self.on_exit(code)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("%s: exit handler failed", self.name)
            await asyncio.sleep(delay)
            delay = min(self.backoff.cap, delay * 2)
            if self._stopping:
                return
            self.restarts += 1
            try:
                await self._spawn()
                if self.on_restart is not None:
                    await self.on_restart()
            except Exception as exc:
                log.error("%s: restart %d failed: %s", self.name, self.restarts, exc)
                if self.pid is not None:  # not ready: kill it, the next round starts a fresh one
                    signal_process(self.pid, signal.SIGKILL, group=self.own_group)

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            signal_process(proc.pid, signal.SIGTERM, group=self.own_group)
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                signal_process(proc.pid, signal.SIGKILL, group=self.own_group)
                await proc.wait()
        if self.own_group:
            signal_process(proc.pid, signal.SIGKILL, group=True)  # anything left in the group
