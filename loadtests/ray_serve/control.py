"""Starting, commanding and stopping the private Ray instance of the peer comparison (mesh-venv side).

``RayHost`` runs ``loadtests.ray_serve.host`` with the Ray venv's interpreter in a new session (so every
process Ray starts for it, raylet, GCS, agents, actors, shares that session id and nothing else does), talks
to it one JSON line at a time, and on ``stop`` asks it to shut Serve and Ray down, then ends by pid whatever
of *that session* is left (SIGTERM, then SIGKILL). It never runs ``ray stop`` and never touches processes of
another session, so other Ray instances on the machine are safe. Ray's logs stay under its temp dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

MARK = "@@ "
# Ray puts unix sockets at <temp dir>/session_<date>_<pid>/sockets/plasma_store: AF_UNIX paths end at 107
# bytes, and the session part takes about 62 of them.
MAX_TEMP_DIR_CHARS = 44


class RayHostError(RuntimeError):
    """The Ray host failed to start, to answer, or reported an error."""


class RayHost:
    def __init__(
        self,
        python: Path,
        repo_root: Path,
        temp_dir: Path,
        *,
        grpc_port: int,
        http_port: int,
        log_path: Path,
        start_timeout: float = 240.0,
    ) -> None:
        if len(str(temp_dir)) > MAX_TEMP_DIR_CHARS:
            raise RayHostError(
                f"Ray temp dir {temp_dir} is {len(str(temp_dir))} characters; Ray's unix socket paths under it "
                f"would pass the 107-byte limit (keep it under {MAX_TEMP_DIR_CHARS}: pass --ray-temp-dir)"
            )
        self.python = python
        self.repo_root = repo_root
        self.temp_dir = temp_dir
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.versions: dict[str, str] = {}
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._log = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> None:
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a")  # closed in stop()
        env = dict(os.environ)
        # Ray's workers inherit this: they import loadtests.ray_serve.app/codec from the checkout.
        env["PYTHONPATH"] = str(self.repo_root)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        self.proc = subprocess.Popen(
            [
                str(self.python),
                "-m",
                "loadtests.ray_serve.host",
                "--temp-dir",
                str(self.temp_dir),
                "--grpc-port",
                str(self.grpc_port),
                "--http-port",
                str(self.http_port),
            ],
            cwd=self.repo_root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, name="ray-host-stdout", daemon=True).start()
        try:
            ready = self._reply(self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.versions = ready.get("versions", {})

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(MARK):
                self._lines.put(line[len(MARK) :])
            elif self._log is not None:
                self._log.write(line)
        self._lines.put(None)

    def _reply(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RayHostError(
                f"no answer from the Ray host in {timeout:.0f}s (log {self.log_path})"
            ) from None
        if line is None:
            code = self.proc.wait(10) if self.proc else None
            raise RayHostError(f"the Ray host exited (status {code}); log {self.log_path}")
        reply = json.loads(line)
        if reply.get("ok") is False:
            raise RayHostError(f"Ray host: {reply.get('error')}\n{reply.get('trace', '')}")
        return reply

    def command(self, op: str, timeout: float = 180.0, **fields: Any) -> dict[str, Any]:
        if self.proc is None or self.proc.stdin is None:
            raise RayHostError("the Ray host is not running")
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()
        return self._reply(timeout)

    def deploy(self, files: dict[str, str], *, replicas: int, max_models: int, max_ongoing: int) -> float:
        reply = self.command(
            "deploy", files=files, replicas=replicas, max_models=max_models, max_ongoing=max_ongoing
        )
        return float(reply.get("seconds", 0.0))

    def session_processes(self) -> list[psutil.Process]:
        """Every live process of the host's session (the host, Ray's daemons and workers)."""
        if self.proc is None:
            return []
        sid = self.proc.pid  # start_new_session: the host leads its own session
        out = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(p.pid) == sid:
                    out.append(p)
        return out

    def stop(self, timeout: float = 90.0) -> list[str]:
        """Shut Serve and Ray down through the host, then end what is left of its session. Returns a
        description of every process that had to be killed (empty when the shutdown was clean)."""
        if self.proc is None:
            return []
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError, RayHostError):
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        deadline = time.monotonic() + 10.0
        killed: list[str] = []
        leftovers = self.session_processes()
        # Ray's daemons exit a moment after ray.shutdown returns: give them a few seconds before ending them.
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.5)
            leftovers = self.session_processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in leftovers:
                with contextlib.suppress(psutil.Error):
                    if sig == signal.SIGTERM:
                        killed.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
                    p.send_signal(sig)
            if leftovers:
                psutil.wait_procs(leftovers, timeout=5)
            leftovers = [p for p in leftovers if p.is_running()]
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return killed
