"""KvClient against a real etcd: CAS semantics, create-if-absent, multi-key txns, leases, watches."""

from __future__ import annotations

import asyncio

import pytest

from mesh.errors import KvCompacted, KvUnavailable
from mesh.kv.client import KvClient, LeaseNotFound, retry


async def test_put_get_delete(kv: KvClient, kv_root: str):
    rev = await kv.put(kv_root + "a", b"1")
    entry = await kv.get(kv_root + "a")
    assert entry is not None and entry.value == b"1" and entry.mod_revision == rev
    assert await kv.delete(kv_root + "a") is True
    assert await kv.delete(kv_root + "a") is False
    assert await kv.get(kv_root + "a") is None


async def test_get_prefix_returns_only_the_prefix(kv: KvClient, kv_root: str):
    await kv.put(kv_root + "p/1", b"x")
    await kv.put(kv_root + "p/2", b"y")
    last = await kv.put(kv_root + "q", b"z")
    entries, header = await kv.get_prefix(kv_root + "p/")
    assert [e.key for e in entries] == [kv_root + "p/1", kv_root + "p/2"]
    assert header >= last


async def test_create_if_absent(kv: KvClient, kv_root: str):
    ok, entry = await kv.cas_put(kv_root + "k", b"first", 0)
    assert (
        ok and entry is not None and entry.value == b"first" and entry.create_revision == entry.mod_revision
    )
    ok, current = await kv.cas_put(kv_root + "k", b"second", 0)
    assert not ok and current is not None and current.value == b"first"


async def test_cas_put_and_delete_compare_mod_revision(kv: KvClient, kv_root: str):
    key = kv_root + "k"
    rev = await kv.put(key, b"v1")
    ok, entry = await kv.cas_put(key, b"v2", rev)
    assert ok and entry is not None and entry.mod_revision > rev
    ok, current = await kv.cas_put(key, b"v3", rev)  # stale
    assert not ok and current == entry
    ok, current = await kv.cas_delete(key, rev)  # stale
    assert not ok and current == entry
    ok, current = await kv.cas_delete(key, entry.mod_revision)
    assert ok and current is None
    ok, current = await kv.cas_put(key, b"v4", entry.mod_revision)  # gone now
    assert not ok and current is None


async def test_txn_cas_is_all_or_nothing(kv: KvClient, kv_root: str):
    a, b = kv_root + "a", kv_root + "b"
    rev_a = await kv.put(a, b"1")
    assert not await kv.txn_cas([(a, b"2", rev_a), (b, b"x", 12345)])
    assert (await kv.get(a)).value == b"1" and await kv.get(b) is None
    assert await kv.txn_cas([(a, None, rev_a), (b, b"x", 0)])
    assert await kv.get(a) is None and (await kv.get(b)).value == b"x"


async def test_leases(kv: KvClient, kv_root: str):
    lease = await kv.lease_grant(5)
    await kv.put(kv_root + "leased", b"", lease=lease)
    assert 0 < await kv.lease_keepalive_once(lease) <= 5
    assert (await kv.get(kv_root + "leased")).lease == lease
    await kv.lease_revoke(lease)
    await kv.lease_revoke(lease)  # unknown lease: already revoked
    assert await kv.get(kv_root + "leased") is None
    assert await kv.lease_keepalive_once(lease) <= 0
    with pytest.raises(LeaseNotFound):
        await kv.put(kv_root + "leased", b"", lease=lease)


async def test_watch_delivers_batches_in_order(kv: KvClient, kv_root: str):
    start = await kv.put(kv_root + "w/a", b"1")
    await kv.txn_cas([(kv_root + "w/b", b"2", 0), (kv_root + "w/c", b"3", 0)])
    await kv.delete(kv_root + "w/a")
    watch = kv.watch_prefix(kv_root + "w/", start)
    try:
        assert await anext(watch) == []  # established
        events = []
        while len(events) < 4:
            events += await anext(watch)
    finally:
        await watch.aclose()
    assert [(e.kind, e.key[len(kv_root) :]) for e in events] == [
        ("put", "w/a"),
        ("put", "w/b"),
        ("put", "w/c"),
        ("delete", "w/a"),
    ]
    assert events[1].mod_revision == events[2].mod_revision  # one txn, one revision


async def test_watch_from_compacted_revision_raises(kv: KvClient, kv_root: str):
    first = await kv.put(kv_root + "c", b"1")
    last = await kv.put(kv_root + "c", b"2")
    await kv.compact(last)
    watch = kv.watch_prefix(kv_root, first)
    with pytest.raises(KvCompacted) as info:
        async for _ in watch:
            pass
    assert info.value.compact_revision >= last


async def test_unreachable_endpoint_is_unavailable():
    client = KvClient("127.0.0.1:1", timeout=1.0)
    with pytest.raises(KvUnavailable):
        await client.connect()
    await client.close()


async def test_first_reachable_endpoint_is_used(etcd_server, kv_root: str):
    client = KvClient(["127.0.0.1:1", etcd_server.endpoint], timeout=2.0)
    try:
        await client.connect()
        assert client.endpoint == etcd_server.endpoint
        await client.put(kv_root + "x", b"1")
    finally:
        await client.close()


async def test_calls_fail_fast_while_etcd_is_down_and_recover(etcd_server, kv: KvClient, kv_root: str):
    await kv.put(kv_root + "x", b"1")
    await asyncio.to_thread(etcd_server.kill)
    try:
        with pytest.raises(KvUnavailable):
            await kv.get(kv_root + "x")
    finally:
        await asyncio.to_thread(etcd_server.start)
    entry = await retry(lambda: kv.get(kv_root + "x"), deadline=10)
    assert entry is not None and entry.value == b"1"
