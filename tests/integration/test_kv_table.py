"""Table against a real etcd: CAS update loop, watch-fed cache, listeners, restart and compaction recovery."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mesh.errors import KvConflict
from mesh.kv.client import KvClient
from mesh.kv.records import ModelRecord
from mesh.kv.table import Table
from tests.support.conditions import wait_until


def _table(kv: KvClient, kv_root: str, name: str = "models") -> Table[ModelRecord]:
    return Table(kv, kv_root + "registry/", ModelRecord.from_json, name=name)


def _bump(rec: ModelRecord | None) -> ModelRecord:
    return (rec or ModelRecord(type="t")).replace(refs=(rec.refs if rec else 0) + 1)


async def _applied(table: Table, revision: int) -> None:
    async with asyncio.timeout(20):
        await table.wait_revision(revision)


async def test_concurrent_updaters_never_lose_an_increment(etcd_server, kv: KvClient, kv_root: str):
    other = KvClient(etcd_server.endpoint)
    t1, t2 = _table(kv, kv_root, "t1"), _table(other, kv_root, "t2")
    await t1.start()
    await t2.start()
    try:

        async def bump_many(table: Table[ModelRecord]) -> None:
            for _ in range(50):
                await table.update("m", _bump, max_attempts=200)

        await asyncio.gather(bump_many(t1), bump_many(t2))
        final = await t1.get_strong("m")
        assert final is not None and final.refs == 100
        await _applied(t2, final.revision)
        assert t2.get("m").refs == 100
    finally:
        await t1.stop()
        await t2.stop()
        await other.close()


async def test_update_create_noop_delete(kv: KvClient, kv_root: str):
    table = _table(kv, kv_root)
    await table.start()
    try:
        created = await table.update("m", lambda cur: cur or ModelRecord(type="sklearn"))
        assert created.revision > 0 and table.get("m") == created  # applied locally at once
        assert table.get("m").revision == created.revision
        same = await table.update("m", lambda cur: cur)
        assert same == created and same.revision == created.revision
        assert await table.update("m", lambda cur: None) is None
        assert table.get("m") is None and await table.get_strong("m") is None
        assert await table.update("m", lambda cur: None) is None  # deleting nothing is fine
    finally:
        await table.stop()


async def test_update_reapplies_fn_to_the_conflicting_value(kv: KvClient, kv_root: str):
    table = _table(kv, kv_root)
    await table.start()
    await table.stop()  # no watch: the cache stays stale on purpose
    await table.update("m", lambda cur: ModelRecord(path="a"))
    await kv.put(kv_root + "registry/m", ModelRecord(path="b", refs=7).to_json())
    seen: list[int] = []

    def fn(cur: ModelRecord | None) -> ModelRecord:
        seen.append(cur.refs)
        return cur.replace(refs=cur.refs + 1)

    written = await table.update("m", fn)
    assert seen == [0, 7] and written.refs == 8 and written.path == "b"


async def test_update_gives_up_after_max_attempts(kv: KvClient, kv_root: str):
    table = _table(kv, kv_root)
    await table.start()
    await table.stop()  # no watch: the cache stays stale
    await table.update("m", lambda cur: ModelRecord())
    await kv.put(kv_root + "registry/m", ModelRecord(refs=1).to_json())  # a rival write
    with pytest.raises(KvConflict):
        await table.update("m", _bump, max_attempts=1)


async def test_table_sees_remote_writes_and_calls_listeners(kv: KvClient, kv_root: str):
    await kv.put(kv_root + "registry/before", ModelRecord(type="x").to_json())
    table = _table(kv, kv_root)
    calls: list[tuple[str, int | None, int | None]] = []
    table.add_listener(lambda id, old, new: calls.append((id, old and old.refs, new and new.refs)))
    await table.start()
    try:
        assert calls == [("before", None, 0)]
        await wait_until(lambda: table.healthy)
        await kv.put(kv_root + "registry/m", ModelRecord(refs=1).to_json())
        rev = await kv.put(kv_root + "registry/m", ModelRecord(refs=2).to_json())
        await kv.put(kv_root + "elsewhere", b"ignored")
        await _applied(table, rev)
        assert table.get("m").refs == 2 and table.get("m").revision == rev
        rev = await kv.put(kv_root + "registry/bad", b"not json")
        await kv.delete(kv_root + "registry/before")
        rev = await kv.put(kv_root + "registry/m", ModelRecord(refs=3).to_json())
        await _applied(table, rev)
        assert set(table.items()) == {"m"}
        assert calls[1:] == [("m", None, 1), ("m", 1, 2), ("before", 0, None), ("m", 2, 3)]
    finally:
        await table.stop()


async def test_listener_errors_and_bad_values_do_not_stop_the_watch(kv: KvClient, kv_root: str, caplog):
    table = _table(kv, kv_root)

    def broken(id, old, new):
        raise RuntimeError("listener bug")

    table.add_listener(broken)
    await table.start()
    try:
        with caplog.at_level(logging.WARNING):
            await kv.put(kv_root + "registry/bad", b"[1,2]")
            await kv.put(kv_root + "registry/bad", b"{oops")
            rev = await kv.put(kv_root + "registry/good", ModelRecord(refs=5).to_json())
            await _applied(table, rev)
        assert table.get("good").refs == 5 and table.get("bad") is None
        assert sum("undecodable" in r.getMessage() for r in caplog.records) == 1  # logged once
        assert table.healthy
    finally:
        await table.stop()


async def test_watch_survives_an_etcd_restart(etcd_server, kv: KvClient, kv_root: str, caplog):
    caplog.set_level(logging.INFO, logger="mesh.kv.table")
    table = _table(kv, kv_root)
    await table.start()
    try:
        await wait_until(lambda: table.healthy)
        await table.update("m", lambda cur: ModelRecord(refs=1))
        await asyncio.to_thread(etcd_server.restart, hard=True)  # SIGKILL, same data dir and ports
        writer = KvClient(etcd_server.endpoint)
        try:
            await writer.connect()
            await writer.put(kv_root + "registry/m", ModelRecord(refs=2).to_json())
            rev = await writer.put(kv_root + "registry/n", ModelRecord(refs=3).to_json())
        finally:
            await writer.close()
        await _applied(table, rev)
        assert table.get("m").refs == 2 and table.get("n").refs == 3
        assert table.healthy
        assert any("watch lost" in r.getMessage() for r in caplog.records)
    finally:
        await table.stop()


async def test_compaction_relists_with_correct_diffs(etcd_server, kv: KvClient, kv_root: str):
    for name in ("keep", "change", "vanish"):
        await kv.put(kv_root + f"registry/{name}", ModelRecord(path=name).to_json())
    table = _table(kv, kv_root)
    await table.start()
    await table.stop()  # freeze the cache, then change the store behind it and compact the history
    await kv.put(kv_root + "registry/change", ModelRecord(path="changed").to_json())
    await kv.delete(kv_root + "registry/vanish")
    await kv.put(kv_root + "registry/new", ModelRecord(path="new").to_json())
    last = await kv.put(kv_root + "unrelated", b"x")
    await asyncio.to_thread(etcd_server.compact, last)
    calls: list[tuple[str, str | None, str | None]] = []
    table.add_listener(lambda id, old, new: calls.append((id, old and old.path, new and new.path)))
    await table.start()  # already loaded, so this only restarts the watch: it hits the compaction
    try:
        await _applied(table, last)
        assert sorted(calls) == [
            ("change", "change", "changed"),
            ("new", None, "new"),
            ("vanish", "vanish", None),
        ]
        assert {i: r.path for i, r in table.items().items()} == {
            "keep": "keep",
            "change": "changed",
            "new": "new",
        }
        rev = await kv.put(kv_root + "registry/after", ModelRecord().to_json())
        await _applied(table, rev)
        assert "after" in table.items()
    finally:
        await table.stop()


async def test_concurrent_creates_are_batched_and_exact(etcd_server, kv: KvClient, kv_root: str):
    """Many new records at once go into few transactions; a key that already exists (written by another
    client this table has not seen yet) and the same new id twice fall back to the read-modify-CAS path, so
    every increment lands exactly once."""
    other = KvClient(etcd_server.endpoint)
    t1, t2 = _table(kv, kv_root, "t1"), _table(other, kv_root, "t2")
    await t1.start()
    try:
        await t2.update("exists", _bump)  # t1 has not seen it when its batch is built
        revision_before = await kv.current_revision()
        ids = [f"new-{i}" for i in range(200)] + ["exists", "dup", "dup"]
        await asyncio.gather(*(t1.update(i, _bump) for i in ids))
        assert (await t1.get_strong("exists")).refs == 2
        assert (await t1.get_strong("dup")).refs == 2
        for i in range(200):
            assert (await t1.get_strong(f"new-{i}")).refs == 1
        # 203 writes in far fewer store revisions than keys: creates went together
        assert await kv.current_revision() - revision_before < 100
    finally:
        await t1.stop()
        await other.close()
