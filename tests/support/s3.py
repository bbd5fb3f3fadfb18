"""A real S3-compatible server for tests: ``moto_server`` run as a subprocess on a free loopback port.

Owns starting and stopping it: the process is started from the venv's ``moto_server`` console script,
waited on through its health URL (``GET /moto-api/``) and stopped by its recorded PID (never by name).
Fixtures are session-scoped (one server for all puller tests; tests use unique bucket names):

- ``moto_server``: no authentication (moto accepts any credentials).
- ``moto_auth_server``: IAM authentication on (``INITIAL_NO_AUTH_ACTION_COUNT``), with one IAM user
  whose keys are in ``.access_key_id`` / ``.secret_access_key``, for wrong-credential tests.

Import the fixtures into a test module: ``from tests.support.s3 import moto_server  # noqa: F401``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.process import free_port

MOTO_BIN = Path(sys.executable).parent / "moto_server"


class MotoServer:
    """One ``moto_server`` process. ``url`` is its endpoint; ``stop()`` ends it by PID."""

    def __init__(self, *, env: dict[str, str] | None = None, tls: tuple[str, str, str] | None = None) -> None:
        """``tls`` = (certificate, key, CA file): serve https with that certificate, verified with the CA."""
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.access_key_id = "testing"
        self.secret_access_key = "testing-secret"
        self._env = {**os.environ, **(env or {})}
        self._log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> MotoServer:
        self.proc = subprocess.Popen(
            [str(MOTO_BIN), "-H", "127.0.0.1", "-p", str(self.port),
             *(["-s", "-c", self.tls[0], "-k", self.tls[1]] if self.tls else [])],
            stdout=self._log, stderr=subprocess.STDOUT, env=self._env, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError):
                ctx = ssl.create_default_context(cafile=self.tls[2]) if self.tls else None
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1, context=ctx) as r:
                    if r.status == 200:
                        return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.url} within {timeout_s}s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return Path(self._log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def client(self, *, access_key_id: str | None = None, secret_access_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.url, region_name="us-east-1",
            aws_access_key_id=access_key_id or self.access_key_id,
            aws_secret_access_key=secret_access_key or self.secret_access_key,
            config=Config(s3={"addressing_style": "path"}),
            verify=self.tls[2] if self.tls else None,
        )  # fmt: skip

    def new_bucket(self, client=None) -> str:
        name = f"b-{uuid.uuid4().hex[:20]}"
        (client or self.client()).create_bucket(Bucket=name)
        return name

    def entry(self, **extra) -> dict:
        """A storage config entry for this server."""
        return {
            "type": "s3", "endpoint_url": self.url, "region": "us-east-1",
            "access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key, **extra,
        }  # fmt: skip


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_auth_server() -> Iterator[MotoServer]:
    """moto with IAM auth: the first 3 actions (create user, access key, policy) run unauthenticated."""
    import boto3

    server = MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}).start()
    try:
        iam = boto3.client(
            "iam", endpoint_url=server.url, region_name="us-east-1",
            aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap",
        )  # fmt: skip
        iam.create_user(UserName="puller")
        key = iam.create_access_key(UserName="puller")["AccessKey"]
        iam.put_user_policy(
            UserName="puller", PolicyName="all",
            PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}',
        )  # fmt: skip
        server.access_key_id = key["AccessKeyId"]
        server.secret_access_key = key["SecretAccessKey"]
        yield server
    finally:
        server.stop()
