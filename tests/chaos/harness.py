"""What the chaos scenarios share: a bounded Zipf client load, the cluster's convergence checks, and the figures.

``ZipfLoad`` plays the clients and the load balancer in front of the pods: a few threads, each with one
request in flight, send ModelInfer (raw bytes, the model id in ``mm-model-id``, a per-request deadline) to the
live pods in turn, the model drawn from a seeded Zipf distribution (``loadtests.cluster_zipf.ZipfSampler``)
over sample models. Every answer is checked against the model's expected output and recorded with its send
and completion times, so a scenario can ask which requests failed, with what code, and when. A scenario takes
a pod out of rotation (``mark_down``) before it kills it, as a Service drops an endpoint; a request already in
flight on a pod that is then killed is counted apart (``ingress_lost``): no mesh can answer it. The load is
bounded in requests and in time, and ``stop()`` always joins its threads.

``HealthWatch`` records when each pod's readiness changes. ``registry_claims`` reads the model records straight from etcd (the claims, ``instanceIds``, which the
status API hides for dead pods), and ``check_converged`` compares them with the live pods and what their
runtimes really hold. ``Figures`` writes one JSON file per scenario under ``var/chaos/``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import random
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from loadtests.cluster_zipf import ZipfSampler
from mesh.client import MODEL_ID_HEADER, build_infer_request, decode_outputs
from mesh.devtools.cluster import health_serving
from mesh.kv.client import KvClient
from mesh.kv.keys import Keys
from mesh.kv.records import ModelRecord
from protos.inference import grpc_predict_v2_pb2 as v2

REPO = Path(__file__).resolve().parents[2]
FIGURES_DIR = REPO / "var" / "chaos"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
OK = "OK"
WRONG_OUTPUT = "WRONG_OUTPUT"


@dataclass(frozen=True)
class Sample:
    id: str
    type: str
    path: str
    payload: bytes
    expected: np.ndarray

    @classmethod
    def of(cls, m: dict, model_id: str | None = None) -> Sample:
        inp = m["input"]
        data = np.asarray(inp["data"], np.float32).reshape(inp["shape"])
        req = build_infer_request(model_id or m["id"], {inp["name"]: data}, raw=True, datatype="FP32")
        want = np.asarray(m["expected"]["predict"]["data"], np.float64)
        return cls(model_id or m["id"], m["type"], m["path"], req.SerializeToString(), want)

    def matches(self, response: bytes) -> bool:
        try:
            got = decode_outputs(v2.ModelInferResponse.FromString(response))["predict"]
        except Exception:
            return False
        return bool(np.allclose(np.asarray(got, np.float64).ravel(), self.expected, rtol=1e-4, atol=1e-5))


def many_samples(samples: dict) -> list[Sample]:
    return [Sample.of(m) for m in samples["models"] if m["group"] == "many"]


@dataclass(frozen=True)
class Outcome:
    model: str
    pod: int
    sent: float  # time.monotonic()
    done: float
    code: str  # OK, a gRPC status name, or WRONG_OUTPUT
    details: str
    ingress_lost: bool  # the ingress pod was taken down (killed) while this request was in flight


class ZipfLoad:
    """Closed-loop Zipf load over ``models`` sent to the live pods of ``addresses`` (see module docstring).

    Bounded: at most ``max_requests`` requests and ``max_seconds`` seconds, whatever the scenario does."""

    def __init__(
        self,
        addresses: list[str],
        models: list[Sample],
        *,
        workers: int = 3,
        deadline_s: float = 10.0,
        pause_s: float = 0.01,
        zipf_s: float = 1.1,
        seed: int = 1,
        max_requests: int = 200_000,
        max_seconds: float = 240.0,
    ) -> None:
        self.addresses = list(addresses)
        self.models = list(models)
        self.workers = workers
        self.deadline_s = deadline_s
        self.pause_s = pause_s
        self.zipf_s = zipf_s
        self.seed = seed
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._live = set(range(len(addresses)))
        self._epoch = [0] * len(addresses)  # bumped by mark_down: requests in flight then are ingress_lost
        self._channels = [self._channel(a) for a in addresses]
        self._rr = itertools.count()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_at = 0.0

    @staticmethod
    def _channel(address: str) -> grpc.Channel:
        return grpc.insecure_channel(address)

    def __enter__(self) -> ZipfLoad:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.started_at = time.monotonic()
        for w in range(self.workers):
            t = threading.Thread(target=self._run, args=(w,), name=f"chaos-load-{w}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.deadline_s + 30)
        alive = [t.name for t in self._threads if t.is_alive()]
        with self._lock:
            channels, self._channels = self._channels, []
        for ch in channels:
            ch.close()
        assert not alive, f"load threads still running after stop: {alive}"

    @property
    def running(self) -> bool:
        return not self._stop.is_set()

    def mark_down(self, pod: int) -> None:
        """Take ``pod`` out of rotation (before killing it); its in-flight requests become ingress_lost."""
        with self._lock:
            self._live.discard(pod)
            self._epoch[pod] += 1

    def mark_up(self, pod: int) -> None:
        """Put ``pod`` back (after it is SERVING again), on a fresh channel (no reconnect backoff left)."""
        with self._lock:
            old = self._channels[pod]
            self._channels[pod] = self._channel(self.addresses[pod])
            self._live.add(pod)
        old.close()

    def wait_for_requests(self, count: int, timeout: float = 60.0) -> None:
        """Block until ``count`` more requests have completed (the load is really flowing)."""
        target = len(self.outcomes) + count
        deadline = time.monotonic() + timeout
        while len(self.outcomes) < target:
            if time.monotonic() > deadline or self._stop.is_set():
                raise AssertionError(f"load stalled: {len(self.outcomes)} of {target} requests done")
            time.sleep(0.05)

    def _next_pod(self) -> tuple[int, int, grpc.Channel] | None:
        with self._lock:
            live = sorted(self._live)
            if not live:
                return None
            pod = live[next(self._rr) % len(live)]
            return pod, self._epoch[pod], self._channels[pod]

    def _run(self, worker: int) -> None:
        sampler = ZipfSampler(len(self.models), self.zipf_s, self.seed * 1000 + worker)
        end = self.started_at + self.max_seconds
        while not self._stop.is_set():
            if len(self.outcomes) >= self.max_requests or time.monotonic() > end:
                self._stop.set()
                break
            picked = self._next_pod()
            if picked is None:
                time.sleep(0.05)
                continue
            pod, epoch, channel = picked
            model = self.models[sampler()]
            call = channel.unary_unary(MODEL_INFER)  # raw bytes both ways
            sent = time.monotonic()
            try:
                resp = call(model.payload, metadata=((MODEL_ID_HEADER, model.id),), timeout=self.deadline_s)
                code, details = (OK, "") if model.matches(resp) else (WRONG_OUTPUT, "output differs")
            except grpc.RpcError as exc:
                code, details = exc.code().name, exc.details() or ""
            except ValueError as exc:  # the channel was closed under us by mark_up/stop
                code, details = "CLOSED_BY_HARNESS", str(exc)
            done = time.monotonic()
            with self._lock:
                lost = self._epoch[pod] != epoch
                self.outcomes.append(Outcome(model.id, pod, sent, done, code, details[:300], lost))
            time.sleep(self.pause_s)

    # --- reading the outcomes

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.sent < end]

    def failures(self, outcomes: list[Outcome] | None = None) -> list[Outcome]:
        return [o for o in (self.outcomes if outcomes is None else outcomes) if o.code != OK]


def sweep(addresses: list[str], models: list[Sample], timeout: float = 30.0) -> list[tuple[str, int, str]]:
    """Send every model once through every pod; returns the (model, pod, what) that did not answer right."""
    bad = []
    for i, address in enumerate(addresses):
        with grpc.insecure_channel(address) as channel:
            call = channel.unary_unary(MODEL_INFER)
            for m in models:
                try:
                    if not m.matches(call(m.payload, metadata=((MODEL_ID_HEADER, m.id),), timeout=timeout)):
                        bad.append((m.id, i, WRONG_OUTPUT))
                except grpc.RpcError as exc:
                    bad.append((m.id, i, f"{exc.code().name}: {exc.details()}"))
    return bad


def by_code(outcomes: list[Outcome]) -> dict[str, int]:
    counts = collections.Counter("INGRESS_KILLED" if o.ingress_lost else o.code for o in outcomes)
    return dict(sorted(counts.items()))


def latency_ms(outcomes: list[Outcome]) -> dict[str, float]:
    """p50/p99/max latency of the successful requests (a figure, never asserted on)."""
    times = sorted((o.done - o.sent) * 1000 for o in outcomes if o.code == OK)
    if not times:
        return {}
    pick = lambda q: round(times[min(len(times) - 1, int(q * len(times)))], 1)  # noqa: E731
    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(times[-1], 1)}


def seconds_since(t0: float, t: float | None) -> float | None:
    return None if t is None else round(t - t0, 2)


class HealthWatch:
    """Polls each pod's readiness (gRPC health, service "") from a thread and keeps the transitions:
    [(time.monotonic(), pod index, serving?)]. Bounded: ``stop()`` ends it; ``max_seconds`` caps it."""

    def __init__(self, addresses: list[str], *, interval_s: float = 0.2, max_seconds: float = 300.0) -> None:
        self.addresses = list(addresses)
        self.interval_s = interval_s
        self.max_seconds = max_seconds
        self.transitions: list[tuple[float, int, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-health", daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        last: dict[int, bool] = {}
        end = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < end:
            for i, address in enumerate(self.addresses):
                serving = health_serving(address, timeout=1.0)
                if last.get(i) != serving:
                    last[i] = serving
                    self.transitions.append((time.monotonic(), i, serving))
            self._stop.wait(self.interval_s)

    def first(self, pod: int, serving: bool, after: float) -> float | None:
        """When ``pod`` was first seen (not) serving at or after ``after``."""
        return next((t for t, i, s in self.transitions if i == pod and s == serving and t >= after), None)


# ---------------------------------------------------------------------------------------------- the registry


def registry_claims(etcd: str, kv_root: str) -> dict[str, ModelRecord]:
    """Every model record under ``kv_root``, read from etcd (a fresh client; blocking)."""

    async def read() -> dict[str, ModelRecord]:
        kv = KvClient(etcd, timeout=5.0)
        await kv.connect()
        try:
            prefix = Keys.for_root(kv_root).registry_prefix
            entries, _ = await kv.get_prefix(prefix)
            return {e.key[len(prefix) :]: ModelRecord.from_json(e.value, e.mod_revision) for e in entries}
        finally:
            await kv.close()

    return asyncio.run(read())


def check_converged(cluster, etcd: str, live: set[str], *, extra_max: int = 0) -> str | None:
    """None when the cluster has converged, else what is still wrong (for ``wait_for``'s message):

    - every live pod is in the cluster view of every live pod, and no other pod is;
    - no model record claims a copy on a pod that is not live, and nothing is still loading;
    - a live pod claims a copy exactly when its runtime holds the model (no claim without a copy, no copy
      left in a runtime without a claim);
    - copies are within each model's bounds: at least ``minCopies`` (when set), at most ``maxCopies``
      (when set, else ``max(1, minCopies) + extra_max``: copies beyond that are extra copies the scaler
      may add under load, which the caller allows for explicitly).
    """
    for i, pod in enumerate(cluster.pods):
        if pod.instance_id not in live:
            continue
        try:
            seen = {
                p["instance_id"] for p in cluster.client(i).cluster_status(include_models=False)["instances"]
            }
        except Exception as exc:
            return f"{pod.instance_id} does not answer ClusterStatus: {exc}"
        if seen != live:
            return f"{pod.instance_id} sees pods {sorted(seen)}, live are {sorted(live)}"
    try:
        records = registry_claims(etcd, cluster.kv_root)
    except Exception as exc:
        return f"cannot read the registry: {exc}"
    index = {p.instance_id: i for i, p in enumerate(cluster.pods)}
    for model_id, rec in records.items():
        claims = set(rec.instances)
        if claims - live:
            return f"{model_id} is claimed by dead pod(s) {sorted(claims - live)}"
        if claims - set(rec.loaded):
            return f"{model_id} is still loading on {sorted(claims - set(rec.loaded))}"
        for iid in live:
            try:
                held = cluster.runtime_ready(index[iid], model_id)
            except grpc.RpcError as exc:
                return f"the runtime of {iid} does not answer: {exc.code().name}"
            if held != (iid in claims):
                what = (
                    "claimed by {} but its runtime does not hold it"
                    if not held
                    else "held by {}'s runtime unclaimed"
                )
                return f"{model_id} is {what.format(iid)}"
        low = rec.min_copies
        high = rec.max_copies or max(1, rec.min_copies) + extra_max
        if low and len(claims) < low:
            return f"{model_id} has {len(claims)} copies, fewer than minCopies {low}"
        if len(claims) > high:
            return f"{model_id} has {len(claims)} copies, more than {high}"
    return None


def wait_converged(
    cluster, etcd: str, live: set[str], *, timeout: float, extra_max: int = 0, trace: list | None = None
) -> float:
    """Poll ``check_converged`` until it holds (bounded); returns when it did (time.monotonic()). ``trace``
    collects what was still wrong, each new reason once with its time (for the figures)."""
    started = time.monotonic()
    deadline = started + timeout
    last = None
    while time.monotonic() < deadline:
        last = check_converged(cluster, etcd, live, extra_max=extra_max)
        if last is None:
            return time.monotonic()
        if trace is not None and len(trace) < 20 and (not trace or trace[-1][1] != last):
            trace.append((round(time.monotonic() - started, 2), last))
        time.sleep(0.25)
    raise AssertionError(f"cluster did not converge within {timeout:.0f}s: {last}")


# ---------------------------------------------------------------------------------------------- figures


@dataclass
class Figures:
    """One scenario's figures, written to ``var/chaos/<scenario>.json`` (also when the scenario fails)."""

    scenario: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return FIGURES_DIR / f"{self.scenario}.run"

    def write(self) -> Path:
        FIGURES_DIR.mkdir(parents=True, exist_ok=True)
        path = FIGURES_DIR / f"{self.scenario}.json"
        doc = {
            "scenario": self.scenario,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(),
            **self.data,
        }
        path.write_text(json.dumps(doc, indent=2, default=_jsonable) + "\n")
        return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Outcome):
        return asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


@contextlib.contextmanager
def figures(scenario: str):
    """The scenario's ``Figures``, written on the way out. ``fig.run_dir`` (``var/chaos/<scenario>.run/``, made
    empty here) is where the scenario's cluster keeps its pod logs and model dirs: removed when the scenario
    passes, kept (and named in the JSON) when it fails."""
    fig = Figures(scenario)
    shutil.rmtree(fig.run_dir, ignore_errors=True)
    fig.run_dir.mkdir(parents=True)
    try:
        yield fig
    except BaseException as exc:
        fig.data["failed"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        fig.data["logs"] = str(fig.run_dir)
        raise
    else:
        shutil.rmtree(fig.run_dir, ignore_errors=True)
    finally:
        fig.write()


def failure_list(load: ZipfLoad, limit: int = 20) -> list[dict[str, Any]]:
    """The first failed requests, with times relative to the start of the load (for the figures)."""
    return [
        {
            "model": o.model,
            "ingress": o.pod,
            "sent_s": round(o.sent - load.started_at, 2),
            "took_s": round(o.done - o.sent, 2),
            "code": o.code,
            "details": o.details[:200],
            "ingress_lost": o.ingress_lost,
        }
        for o in load.failures()[:limit]
    ]


def runtime_process(cluster, index: int):
    """The psutil.Process of pod ``index``'s built-in runtime (a child the pod started and supervises)."""
    import psutil

    found = [
        p
        for p in psutil.Process(cluster.pods[index].pid).children(recursive=True)
        if "runtime_adapters.builtin" in " ".join(p.cmdline())
    ]
    assert len(found) == 1, found
    return found[0]


def shuffled(items: list, seed: int) -> list:
    out = list(items)
    random.Random(seed).shuffle(out)
    return out
