"""etcd for the multi-host suite: 1 or 3 members, each in its own namespace of a NetLab.

``EtcdGroup`` starts the members on their namespace's address (client port 2379, peer port 2380), kills one with
SIGKILL (a member lost with its machine) and restarts it on the same data dir, tells which member leads the etcd
cluster, and waits for a member's ``/health``. ``EtcdReader`` reads keys through etcd's JSON gateway from the
root namespace (over the bridge), so a test sees the truth in etcd even while a pod is cut off from it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from mesh.devtools.cluster import log_tail
from mesh.devtools.etcd import find_etcd_binary
from tests.multihost.common import NO_PROXY, child_env
from tests.support.netns import Host, NetLab

ETCD_CLIENT_PORT, ETCD_PEER_PORT = 2379, 2380


class EtcdReader:
    """Synchronous reads of etcd through its JSON gateway (``/v3/kv/range``), trying each member in turn."""

    def __init__(self, endpoints: list[str], timeout: float = 2.0) -> None:
        self.endpoints = endpoints
        self.timeout = timeout

    def _range(self, key: str, prefix: bool) -> tuple[list[dict], int]:
        raw = key.encode()
        body = {"key": base64.b64encode(raw).decode()}
        if prefix:
            end = bytearray(raw)
            end[-1] += 1
            body["range_end"] = base64.b64encode(bytes(end)).decode()
        last: Exception | None = None
        for ep in self.endpoints:
            req = urllib.request.Request(
                f"http://{ep}/v3/kv/range", data=json.dumps(body).encode(), method="POST"
            )
            try:
                with NO_PROXY.open(req, timeout=self.timeout) as resp:
                    data = json.loads(resp.read())
            except (OSError, ValueError) as exc:
                last = exc
                continue
            if "kvs" not in data and "header" not in data:
                last = ValueError(f"etcd {ep}: {data}")
                continue
            kvs = [
                {
                    "key": base64.b64decode(kv["key"]).decode(),
                    "value": base64.b64decode(kv.get("value", "")),
                    "mod_revision": int(kv.get("mod_revision", 0)),
                    "lease": int(kv.get("lease", 0)),
                }
                for kv in data.get("kvs", [])
            ]
            return kvs, int(data["header"]["revision"])
        raise OSError(f"no etcd member answered: {last}")

    def get(self, key: str) -> bytes | None:
        kvs, _ = self._range(key, prefix=False)
        return kvs[0]["value"] if kvs else None

    def get_prefix(self, prefix: str) -> dict[str, tuple[bytes, int]]:
        kvs, _ = self._range(prefix, prefix=True)
        return {kv["key"][len(prefix) :]: (kv["value"], kv["mod_revision"]) for kv in kvs}


@dataclass
class EtcdMember:
    name: str
    host: Host
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host.ip}:{ETCD_CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host.ip}:{ETCD_PEER_PORT}"


class EtcdGroup:
    """``size`` etcd members, each in its own namespace. Timings suit a shared 2-core box: heartbeat 50 ms,
    election timeout 1 s (a starved member must not trigger needless elections)."""

    def __init__(self, lab: NetLab, hosts: list[Host], work_dir: Path) -> None:
        self.lab = lab
        self.token = f"mmh-{uuid.uuid4().hex[:8]}"
        self.members = [
            EtcdMember(f"m{i}", h, work_dir / f"etcd-m{i}", work_dir / f"etcd-m{i}.log")
            for i, h in enumerate(hosts)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def reader(self) -> EtcdReader:
        return EtcdReader(self.endpoints)

    def _command(self, m: EtcdMember) -> list[str]:
        client = f"http://{m.host.ip}:{ETCD_CLIENT_PORT}"
        cluster = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        return [
            find_etcd_binary(),
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "50",
            "--election-timeout", "1000",
            "--unsafe-no-fsync",
            "--log-level", "warn",
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        for m in self.members:
            self.start_member(m, wait=False)
        for m in self.members:
            self.wait_healthy(m, timeout)

    def start_member(self, m: EtcdMember, *, wait: bool = True, timeout: float = 30.0) -> None:
        m.proc = self.lab.popen(m.host, self._command(m), log_path=m.log_path, env=child_env())
        if wait:
            self.wait_healthy(m, timeout)

    def kill_member(self, m: EtcdMember) -> None:
        """SIGKILL (a member lost with its machine); its data dir stays for a restart."""
        self.lab.kill_all_in(m.host)
        m.proc = None

    def _status(self, m: EtcdMember) -> dict:
        req = urllib.request.Request(f"http://{m.endpoint}/v3/maintenance/status", data=b"{}", method="POST")
        with NO_PROXY.open(req, timeout=2) as resp:
            return json.loads(resp.read())

    def raft_leader(self) -> EtcdMember | None:
        """The member that currently leads the etcd cluster (None when no running member names one)."""
        ids = {}
        leader_id = None
        for m in self.members:
            if m.proc is None:
                continue
            with contextlib.suppress(OSError, ValueError, KeyError):
                status = self._status(m)
                ids[status["header"]["member_id"]] = m
                leader_id = status.get("leader") or leader_id
        return ids.get(leader_id) if leader_id else None

    def move_leader(self, target: EtcdMember, timeout: float = 15.0) -> None:
        """Make ``target`` the etcd leader (etcd's MoveLeader, asked of the current leader) if it is not."""
        deadline = time.monotonic() + timeout
        while (leader := self.raft_leader()) is not target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd leadership did not move to {target.name} (leader: {leader})")
            if leader is not None:
                target_id = self._status(target)["header"]["member_id"]
                body = json.dumps({"targetID": target_id}).encode()
                req = urllib.request.Request(
                    f"http://{leader.endpoint}/v3/maintenance/transfer-leadership", data=body, method="POST"
                )
                with contextlib.suppress(OSError), NO_PROXY.open(req, timeout=5):
                    pass
            time.sleep(0.2)

    def healthy(self, m: EtcdMember) -> bool:
        """The member answers /health true (it is up *and* its cluster has a leader)."""
        try:
            with NO_PROXY.open(f"http://{m.endpoint}/health", timeout=1) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def wait_healthy(self, m: EtcdMember, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy(m):
            if m.proc is not None and m.proc.poll() is not None:
                raise RuntimeError(f"etcd {m.name} exited:\n{log_tail(m.log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd {m.name} not healthy after {timeout:.0f}s:\n{log_tail(m.log_path)}")
            time.sleep(0.05)
