"""Fixtures shared by the whole test suite: one real etcd per session, a unique key root per test.

- ``etcd_server`` (session): an ``EmbeddedEtcd`` on free loopback ports. Fault injection goes through it
  (``etcd_server.kill()``, ``.restart()``, ``.compact(rev)``; from async tests wrap them in
  ``asyncio.to_thread``). Tests that kill it must leave it running again (``restart`` does).
- ``kv_root`` (function): ``/mmtest/<uuid>/``, so tests never see each other's keys.
- ``kv`` (async, function): a connected ``KvClient``; on teardown it checks that the test stopped every
  ``mesh:*`` task it started, then closes the client.
On a failing test that used etcd, the tail of the etcd log is added to the report.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from mesh.devtools.etcd import EmbeddedEtcd
from mesh.kv.client import KvClient


@pytest.fixture(scope="session")
def etcd_server():
    with EmbeddedEtcd() as server:
        yield server


@pytest.fixture
def kv_root() -> str:
    return f"/mmtest/{uuid.uuid4().hex}/"


@pytest.fixture
async def kv(etcd_server: EmbeddedEtcd):
    if not etcd_server.running:  # a previous test killed it and failed before restarting
        await asyncio.to_thread(etcd_server.start)
    client = KvClient(etcd_server.endpoint, timeout=5.0)
    await client.connect()
    yield client
    leaked = [
        t.get_name()
        for t in asyncio.all_tasks()
        if t.get_name().startswith("mesh:") and not t.done() and t is not asyncio.current_task()
    ]
    await client.close()
    assert not leaked, f"test left mesh tasks running: {leaked}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("call", "setup"):
        server = getattr(item, "funcargs", {}).get("etcd_server")
        if isinstance(server, EmbeddedEtcd):
            report.sections.append(("etcd log tail", server.log_tail()))
