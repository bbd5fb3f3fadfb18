"""What every module of the multi-host harness shares: where results go, the environment of the processes it
starts (no proxy variables: traffic must stay on the lab's bridge), and ``wait_for``, the one way to wait for an
outcome (a condition polled with a bound, never a sleep)."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

from mesh.client import MeshClientError

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "var" / "multihost"
# No proxy for anything in the lab, whatever the environment says: traffic must stay on the bridge.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PROXY_VARS = ("http_proxy", "https_proxy", "grpc_proxy", "HTTP_PROXY", "HTTPS_PROXY", "GRPC_PROXY")


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env["GRPC_ENABLE_FORK_SUPPORT"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until truthy (returned) or ``timeout`` s pass (AssertionError naming ``what``)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (MeshClientError, OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
