"""Fixtures of the multi-host suite (``-m multihost``; ``make test-multihost``).

``netlab_ready`` (session) skips the suite with the reason when network namespaces cannot be made here (not root,
no iproute2, a kernel or container that refuses them), removes what a killed earlier run left behind, and at the
end of the session fails loudly (after removing them) if any namespace or link of this run is still there. Each
module builds its own ``MultiHostMesh`` (its own bridge, namespaces and processes) in a module fixture that runs
the scenario once and records what it saw; the tests of the module then each assert one property of that record.
A scenario's pod and etcd log tails are attached to the report of a failing test.
"""

from __future__ import annotations

import os

import pytest

from tests.support import netns
from tests.support.samples import samples  # noqa: F401  (fixture)


@pytest.fixture(scope="session")
def netlab_ready():
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(f"multi-host tests need Linux network namespaces: {reason}")
    netns.sweep_stale()
    yield
    left = netns.owned_by(os.getpid())
    if left:
        netns.close_all()
        netns.remove(left)  # a name outlives its lab only if close() failed: remove it by name
        pytest.fail(f"the multi-host suite left network objects behind: {left}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("call", "setup"):
        for value in getattr(item, "funcargs", {}).values():
            logs = getattr(value, "logs", None)
            if isinstance(logs, dict):
                for name, text in logs.items():
                    report.sections.append((f"log tail: {name}", text))
