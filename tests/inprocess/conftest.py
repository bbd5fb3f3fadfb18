"""Shared pieces of the in-process table tests: a cluster factory fixture and small helpers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from mesh.client import MeshClientError
from tests.support.inprocess import InProcessCluster, Served


@dataclass(frozen=True)
class Failed:
    """A request answered with an error status ``code`` whose message contains ``text``."""

    code: str
    text: str = ""


async def outcome(request) -> Served | Failed | bool:
    """Await one client call; an error becomes ``Failed(code, message)`` so a table can expect it."""
    try:
        return await request
    except MeshClientError as exc:
        return Failed(exc.code, exc.message)


def matches(got, want) -> bool:
    if isinstance(want, Failed):
        return isinstance(got, Failed) and got.code == want.code and want.text in got.text
    return got == want


async def load_on(mesh: InProcessCluster, index: int, model_id: str, *, copy: bool = False) -> None:
    """Load ``model_id`` on pod ``index`` exactly (as a peer's ``mm-internal: load``, or ``copy`` for one more
    copy, would), and wait until every pod's view shows the copy."""
    pod = mesh[index].pod
    await pod.availability.ensure_loaded(model_id, last_used=pod.clock.now_ms(), local_only=True, copy=copy)
    await wait_loaded_everywhere(mesh, model_id, mesh[index].id)


async def wait_loaded_everywhere(mesh: InProcessCluster, model_id: str, holder: str) -> None:
    from tests.support.conditions import wait_until

    def seen() -> bool:
        for p in mesh.live:
            rec = p.pod.views.current.model(model_id)
            if rec is None or holder not in rec.loaded:
                return False
        return True

    await wait_until(seen, what=f"every pod to see {model_id} loaded on {holder}")


def running(prefix: str) -> list[str]:
    """Names of the unfinished tasks (of every in-process pod: they share the loop) starting with ``prefix``."""
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(prefix) and not t.done()]


async def registry_writes_done() -> None:
    """Until no load or release task of any pod is running: a load wakes its waiters (and returns to its caller)
    before it records LOADED, and an unloaded copy is released from its record afterwards."""
    from tests.support.conditions import wait_until

    await wait_until(
        lambda: not running("mesh:load:") and not running("mesh:release:"),
        what="the pods' registry writes of loaded and released copies",
    )


@pytest.fixture
async def cluster(etcd_server):
    """``await cluster(pods=..., **kwargs)`` starts an InProcessCluster; all are stopped at teardown."""
    started: list[InProcessCluster] = []

    async def make(pods: int = 1, **kwargs) -> InProcessCluster:
        mesh = InProcessCluster(etcd_server.endpoint, pods=pods, **kwargs)
        started.append(mesh)
        await mesh.start()
        return mesh

    yield make
    for mesh in reversed(started):
        await mesh.stop()


def case_ids(cases: dict) -> list[str]:
    """Test ids from a table's case names: words joined by dashes (usable with ``-k``)."""
    return ["-".join("".join(c if c.isalnum() else " " for c in name).split()) for name in cases]
