"""etcd outage: loaded models keep serving, management fails fast with UNAVAILABLE, and the cluster converges
without restarts once etcd is back (leases re-granted, instance records re-published, watches resumed).

Two in-process pods on an etcd of their own (this test stops it), under traffic from both pods for the whole
outage (10 s, over three lease TTLs).
"""

from __future__ import annotations

import asyncio

from mesh.devtools.etcd import EmbeddedEtcd
from tests.inprocess.conftest import Failed, outcome
from tests.support.conditions import wait_until
from tests.support.inprocess import InProcessCluster, Served

OUTAGE_S = 10.0


async def test_etcd_outage_keeps_serving_and_converges() -> None:
    etcd = EmbeddedEtcd()
    await asyncio.to_thread(etcd.start)
    try:
        async with InProcessCluster(etcd.endpoint, pods=2) as mesh:
            await _outage(mesh, etcd)
    finally:
        await asyncio.to_thread(etcd.stop)


async def _outage(mesh: InProcessCluster, etcd: EmbeddedEtcd) -> None:
    c0, c1 = mesh[0].client, mesh[1].client
    for m in ("a", "b", "later"):
        await c0.register(m)
    await c0.infer("a")
    await c1.infer("b")
    stop = asyncio.Event()
    errors: list[object] = []
    served = [0]

    async def drive(index: int) -> None:
        while not stop.is_set():
            for m in ("a", "b"):
                got = await outcome(mesh[index].client.infer(m))
                if isinstance(got, Served) and got.model == m:
                    served[0] += 1
                else:
                    errors.append(got)
            await asyncio.sleep(0.02)  # a request rate, not a synchronisation

    drivers = [asyncio.create_task(drive(i)) for i in (0, 1)]
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(etcd.stop)
    down_at = loop.time()
    try:
        # management fails fast with UNAVAILABLE while etcd is down
        await wait_until(
            lambda: _unavailable(c0.register("during-outage")), timeout=15, what="UNAVAILABLE from register"
        )
        got = await outcome(c1.unregister("a"))
        assert isinstance(got, Failed) and got.code == "UNAVAILABLE", got
        served_during = served[0]
        await wait_until(
            lambda: loop.time() - down_at >= OUTAGE_S and served[0] > served_during + 50,
            timeout=OUTAGE_S + 30,
            what=f"inference to go on through a {OUTAGE_S:.0f}s outage",
        )
    finally:
        await asyncio.to_thread(etcd.restart)
    # converge: management works again, both pods are back in the view, new models load and serve
    await wait_until(lambda: _works(c0.register("during-outage")), what="management back")
    await wait_until(lambda: _instances(c1, 2), what="both pods re-published")
    assert (await c1.infer("later")).model == "later"
    # the holder records LOADED after answering; pod-0 sees it through its watch
    await wait_until(lambda: _status_is(c0, "later", "LOADED"), what="pod-0 to see 'later' loaded")
    stop.set()
    await asyncio.gather(*drivers)
    assert not errors, errors[:3]
    for m in ("a", "b"):  # the loaded models were never lost from the registry
        assert (await c0.status(m))["status"] == "LOADED"


async def _unavailable(call) -> bool:
    got = await outcome(call)
    return isinstance(got, Failed) and got.code == "UNAVAILABLE"


async def _works(call) -> bool:
    return not isinstance(await outcome(call), Failed)


async def _instances(client, n: int) -> bool:
    return len((await client.cluster_status())["instances"]) == n


async def _status_is(client, model_id: str, status: str) -> bool:
    return (await client.status(model_id))["status"] == status
