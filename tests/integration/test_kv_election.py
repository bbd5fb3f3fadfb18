"""Election against a real etcd: failover when the leader stops, following a lost lease, resign."""

from __future__ import annotations

from mesh.kv.client import KvClient
from mesh.kv.election import Election
from mesh.kv.session import Session
from tests.support.conditions import wait_until


async def test_election_fails_over_when_the_leader_session_stops(etcd_server, kv: KvClient, kv_root: str):
    other = KvClient(etcd_server.endpoint)
    s1, s2 = Session(kv, ttl=2, name="a"), Session(other, ttl=2, name="b")
    await s1.start()
    await s2.start()
    e1 = Election(kv, kv_root + "leader", "pod-a", s1, name="a")
    e2 = Election(other, kv_root + "leader", "pod-b", s2, name="b")
    seen: list[str | None] = []
    e2.on_change(seen.append)
    try:
        await e1.start()
        await e2.start()
        assert e1.is_leader and not e2.is_leader
        assert e1.leader_id == e2.leader_id == "pod-a"
        await e1.resign()
        await s1.stop()  # resign, then the lease goes too
        await wait_until(lambda: e2.is_leader)
        assert e2.leader_id == "pod-b" and seen[-1] == "pod-b"
        assert (await kv.get(kv_root + "leader")).value == b"pod-b"
    finally:
        await e1.resign()
        await e2.resign()
        await s1.stop()
        await s2.stop()
        await other.close()


async def test_election_follows_a_lost_lease(etcd_server, kv: KvClient, kv_root: str):
    other = KvClient(etcd_server.endpoint)
    s1, s2 = Session(kv, ttl=2, name="a"), Session(other, ttl=2, name="b")
    await s1.start()
    await s2.start()
    e1 = Election(kv, kv_root + "leader", "pod-a", s1, name="a")
    e2 = Election(other, kv_root + "leader", "pod-b", s2, name="b")
    try:
        await e1.start()
        await e2.start()
        assert e1.is_leader
        await kv.lease_revoke(s1.lease_id)  # the leader's lease dies: its key goes, pod-b takes over
        await wait_until(lambda: e2.is_leader and e1.leader_id == "pod-b")
        assert not e1.is_leader
        await e2.resign()  # and pod-a, on its new lease, takes it back
        await wait_until(lambda: e1.is_leader)
    finally:
        await e1.resign()
        await e2.resign()
        await s1.stop()
        await s2.stop()
        await other.close()
