"""Session against a real etcd: keepalive, re-grant after a lost lease, health while etcd is down."""

from __future__ import annotations

import asyncio

from mesh.kv.client import KvClient
from mesh.kv.session import Session
from tests.support.conditions import wait_until


async def test_keepalive_keeps_leased_keys_past_the_ttl(kv: KvClient, kv_root: str):
    session = Session(kv, ttl=1)
    lease = await session.start()
    try:
        await kv.put(kv_root + "me", b"x", lease=lease)
        await asyncio.sleep(2.2)  # over two TTLs: only the keepalive keeps it
        assert (await kv.get(kv_root + "me")).lease == lease
        assert session.healthy
    finally:
        await session.stop()
    assert await kv.get(kv_root + "me") is None  # revoked on stop


async def test_lost_lease_is_regranted_and_owner_reputs(kv: KvClient, kv_root: str):
    key = kv_root + "instances/me"
    leases: list[int] = []

    async def on_lease(lease_id: int) -> None:
        leases.append(lease_id)
        await kv.put(key, b"record", lease=lease_id)

    # TTL 5 s (keepalive every ~1.7 s): a loaded 2-core CI box must not starve the keepalive past the TTL,
    # which would cause a second, unrelated re-grant
    session = Session(kv, ttl=5, on_lease=on_lease)
    first = await session.start()
    await kv.put(key, b"record", lease=first)
    try:
        await kv.lease_revoke(first)  # behind the session's back
        # the key bound to the revoked lease is gone (the session may already have re-put it on a new one)
        gone = await kv.get(key)
        assert gone is None or gone.lease != first
        await wait_until(lambda: leases, what="the lease listener")
        assert leases == [session.lease_id] and session.lease_id != first

        async def reput() -> bool:  # the listener was called; its put may still be on its way
            entry = await kv.get(key)
            return entry is not None and entry.lease == session.lease_id

        await wait_until(reput, what="the record re-put on the new lease")
    finally:
        await session.stop()


async def test_session_reports_unhealthy_while_etcd_is_down(etcd_server, kv: KvClient):
    session = Session(kv, ttl=1)
    await session.start()
    try:
        await asyncio.to_thread(etcd_server.kill)
        try:
            await wait_until(lambda: not session.healthy)
        finally:
            await asyncio.to_thread(etcd_server.start)
        await wait_until(lambda: session.healthy)
        assert await kv.lease_keepalive_once(session.lease_id) > 0
    finally:
        await session.stop()
