"""How the multi-host tests look at a scenario from outside, and what they keep of it.

- ``Traffic``: client threads in the root namespace sending ModelInfer to chosen pods with a deadline, recording
  every outcome (time, model, ingress pod, status code, latency), bounded in count and time; ``summarize``.
- ``Sampler``: a thread that samples, every ``interval_s``, the ``leader`` key in etcd and every pod's own view of
  the leader (``ClusterStatus``), bounded in count.
- ``over_max_copies``: models with more copies than their ``maxCopies``, in etcd or in the pods' own caches.
- ``Observed`` and ``write_summary``: the facts and figures of a scenario, kept as JSON under ``var/multihost/``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mesh.client import MeshClient, MeshClientError
from mesh.devtools.cluster import log_tail
from tests.multihost.common import RESULTS_DIR
from tests.multihost.mesh_hosts import MultiHostMesh, check_output, sample_input


@dataclass
class Outcome:
    t: float  # seconds since the traffic started
    model_id: str
    ingress: int
    code: str  # "OK" or the gRPC status name
    latency_s: float
    message: str = ""


@dataclass
class Traffic:
    """Client threads (root namespace) sending ModelInfer for ``targets`` (model sample, ingress pod index)
    pairs round-robin, each call with ``deadline_s``. At most ``max_requests`` in total; stop() ends it."""

    mesh: MultiHostMesh
    targets: list[tuple[dict, int]]
    threads: int = 3
    deadline_s: float = 10.0
    pause_s: float = 0.02
    max_requests: int = 20_000
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._t0 = 0.0
        self._sent = 0
        self._route: dict[int, int] | None = None  # pod index -> pod index (ingress rerouting)

    def start(self) -> Traffic:
        self._t0 = time.monotonic()
        for w in range(self.threads):
            t = threading.Thread(target=self._run, args=(w,), daemon=True, name=f"traffic-{w}")
            t.start()
            self._workers.append(t)
        return self

    def now(self) -> float:
        return time.monotonic() - self._t0

    def avoid(self, index: int | None, instead: int | None = None) -> None:
        """Stop sending to pod ``index`` (as a Service drops a terminating pod): its targets go to ``instead``
        (None: back to normal)."""
        with self._lock:
            self._route = None if index is None else {index: instead if instead is not None else index}

    def set_targets(self, targets: list[tuple[dict, int]]) -> None:
        """Send to these (model sample, ingress pod) pairs from now on."""
        with self._lock:
            self.targets = list(targets)

    def _pick(self, n: int) -> tuple[dict, int]:
        targets = self.targets
        sample, ingress = targets[n % len(targets)]
        route = self._route
        if route and ingress in route:
            ingress = route[ingress]
        return sample, ingress

    def _run(self, worker: int) -> None:
        clients: dict[int, MeshClient] = {}
        n = worker
        try:
            while not self._stop.is_set():
                with self._lock:
                    if self._sent >= self.max_requests:
                        return
                    self._sent += 1
                sample, ingress = self._pick(n)
                n += self.threads
                client = clients.get(ingress)
                if client is None:
                    client = clients[ingress] = self.mesh.client(ingress, timeout=self.deadline_s)
                started = time.monotonic()
                code, message = "OK", ""
                try:
                    check_output(sample, client.infer(sample["id"], sample_input(sample)))
                except MeshClientError as exc:
                    code, message = exc.code, exc.message[:200]
                except AssertionError as exc:
                    code, message = "WRONG_ANSWER", str(exc)[:200]
                done = time.monotonic()
                with self._lock:
                    self.outcomes.append(
                        Outcome(started - self._t0, sample["id"], ingress, code, done - started, message)
                    )
                self._stop.wait(self.pause_s)
        finally:
            for c in clients.values():
                c.close()

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=self.deadline_s + 5)

    def __enter__(self) -> Traffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- reading the record

    def between(self, start: float, end: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.t < end]

    def count_ok(self, model_ids: Iterable[str] | None = None, since: float = 0.0) -> int:
        ids = set(model_ids) if model_ids is not None else None
        with self._lock:
            return sum(
                1
                for o in self.outcomes
                if o.code == "OK" and o.t >= since and (ids is None or o.model_id in ids)
            )

    def failures(self, model_ids: Iterable[str] | None = None) -> list[Outcome]:
        ids = set(model_ids) if model_ids is not None else None
        with self._lock:
            return [o for o in self.outcomes if o.code != "OK" and (ids is None or o.model_id in ids)]


def summarize(outcomes: list[Outcome]) -> dict:
    """Requests by status code, and latency percentiles of the successful ones (ms)."""
    by_code: dict[str, int] = {}
    for o in outcomes:
        by_code[o.code] = by_code.get(o.code, 0) + 1
    ok = sorted(o.latency_s for o in outcomes if o.code == "OK")
    failed = sorted(o.latency_s for o in outcomes if o.code != "OK")

    def pct(values: list[float], q: float) -> float | None:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else None

    return {
        "requests": len(outcomes),
        "by_code": by_code,
        "ok_p50_ms": pct(ok, 0.5),
        "ok_p99_ms": pct(ok, 0.99),
        "ok_max_ms": pct(ok, 1.0),
        "failed_max_ms": pct(failed, 1.0),
    }


@dataclass
class LeaderSample:
    t: float
    etcd_leader: str | None  # the value of the leader key ('' when absent, None when etcd did not answer)
    views: dict[str, str | None]  # pod -> the leader it names ('' none, None unreachable)

    @property
    def self_declared(self) -> list[str]:
        """Pods that name themselves as leader in this sample."""
        return sorted(p for p, v in self.views.items() if v == p)


class Sampler:
    """Samples the leader key and every pod's view of the leader every ``interval_s`` (at most
    ``max_samples``), from the root namespace."""

    def __init__(self, mesh: MultiHostMesh, interval_s: float = 0.25, max_samples: int = 2000) -> None:
        self.mesh = mesh
        self.interval_s = interval_s
        self.max_samples = max_samples
        self.samples: list[LeaderSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="leader-sampler")
        self._t0 = 0.0

    def start(self, t0: float | None = None) -> Sampler:
        self._t0 = t0 if t0 is not None else time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < self.max_samples:
            t = time.monotonic() - self._t0
            try:
                leader = self.mesh.leader() or ""
            except OSError:
                leader = None
            views = {
                p.instance_id: self.mesh.view_leader(p.index, timeout=0.5) for p in self.mesh.pods if p.proc
            }
            self.samples.append(LeaderSample(t, leader, views))
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def summary(self) -> dict:
        return {
            "samples": len(self.samples),
            "max_self_declared_leaders": max((len(s.self_declared) for s in self.samples), default=0),
            "samples_with_two_or_more": sum(1 for s in self.samples if len(s.self_declared) > 1),
            "two_leaders_s": round(
                sum(
                    b.t - a.t
                    for a, b in zip(self.samples, self.samples[1:], strict=False)
                    if len(a.self_declared) > 1
                ),
                2,
            ),
            "samples_without_leader_key": sum(1 for s in self.samples if s.etcd_leader == ""),
            "leader_key_holders": sorted({s.etcd_leader for s in self.samples if s.etcd_leader}),
            "timeline": _leader_timeline(self.samples),
        }


def _leader_timeline(samples: list[LeaderSample]) -> list[dict]:
    """Runs of identical (leader key, self-declared leaders) states: when each began and how long it lasted."""
    runs: list[dict] = []
    for s in samples:
        state = (s.etcd_leader, tuple(s.self_declared))
        if runs and runs[-1]["_state"] == state:
            runs[-1]["until_s"] = round(s.t, 2)
            continue
        runs.append(
            {"_state": state, "from_s": round(s.t, 2), "until_s": round(s.t, 2), "leader_key": s.etcd_leader,
             "self_declared": list(s.self_declared)}
        )  # fmt: skip
    for r in runs:
        r.pop("_state")
    return runs


def write_summary(name: str, data: dict) -> Path:
    """Write the figures of one scenario to ``var/multihost/<name>.json`` (with when and on what load)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    data = {
        "scenario": name,
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_avg_1m": os.getloadavg()[0],
        **data,
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def over_max_copies(mesh: MultiHostMesh, policy: dict[str, int]) -> dict[str, dict]:
    """Models (id -> maxCopies in ``policy``) with more copies than allowed, counted both in etcd (live
    holders listed in the record) and in the pods' own caches (a copy the registry does not list still holds
    memory and serves requests)."""
    records, alive = mesh.records(), set(mesh.instances())
    held = mesh.held_copies(policy)
    out = {}
    for mid, max_copies in policy.items():
        listed = sorted(i for i in records[mid].instances if i in alive)
        if len(listed) > max_copies or len(held[mid]) > max_copies:
            out[mid] = {"max": max_copies, "registry": listed, "held": sorted(held[mid])}
    return out


class Observed(dict):
    """What a scenario saw (JSON-able figures and facts), plus its log tails for the report of a failing test."""

    def __init__(self) -> None:
        super().__init__()
        self.logs: dict[str, str] = {}

    def keep_logs(self, mesh: MultiHostMesh, lines: int = 60) -> None:
        """Keep the log tails for the report (the whole logs are kept by ``MultiHostMesh.close``)."""
        for pod in mesh.pods:
            self.logs[pod.instance_id] = log_tail(pod.log_path, lines)
        if mesh.etcd is not None:
            for m in mesh.etcd.members:
                self.logs[f"etcd {m.name}"] = log_tail(m.log_path, 20)
