"""A real Prometheus server for tests: Debian's ``prometheus`` binary on a free loopback port, scraping given
targets every second, with a temp config and data dir; stopped by its PID.

``ensure_prometheus()`` installs the package with ``scripts/install_prometheus.sh`` when the binary is missing
and skips the test with the installer's own error when that is impossible (no root, no package index)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from mesh.devtools.cluster import free_port
from mesh.process import with_parent_death_signal

REPO = Path(__file__).resolve().parents[2]
INSTALLER = REPO / "scripts" / "install_prometheus.sh"


def ensure_prometheus() -> str:
    found = shutil.which("prometheus")
    if found:
        return found
    done = subprocess.run([str(INSTALLER)], capture_output=True, text=True, timeout=600)
    found = shutil.which("prometheus")
    if done.returncode != 0 or not found:
        pytest.skip(f"Prometheus is not installed and {INSTALLER.name} failed ({done.returncode}): "
                    f"{(done.stderr or done.stdout).strip()[-500:]}")  # fmt: skip
    return found


class PrometheusServer:
    def __init__(self, targets: list[str], *, scrape_interval: str = "1s") -> None:
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.port = 0
        self.dir = Path(tempfile.mkdtemp(prefix="mesh-prom-"))
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        binary = ensure_prometheus()
        config = self.dir / "prometheus.yml"
        config.write_text(
            json.dumps(  # YAML is a superset of JSON
                {
                    "global": {
                        "scrape_interval": self.scrape_interval,
                        "evaluation_interval": self.scrape_interval,
                    },
                    "scrape_configs": [
                        {"job_name": "modelmesh", "static_configs": [{"targets": self.targets}]}
                    ],
                }
            )
        )
        self.port = free_port()
        cmd = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(with_parent_death_signal(cmd), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "prometheus.log").read_text(errors="replace")[-2000:]
        return ""

    def query(self, promql: str) -> list[dict]:
        """Instant query; the result vector (raises on a PromQL error, with Prometheus' message)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                doc = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"PromQL {promql!r} failed: {exc.read().decode()[:500]}") from None
        if doc.get("status") != "success":
            raise AssertionError(f"PromQL {promql!r} failed: {doc}")
        return doc["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The single value of a scalar-like query (None when the vector is empty)."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, (promql, result)
        return float(result[0]["value"][1])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        with contextlib.suppress(Exception):
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
