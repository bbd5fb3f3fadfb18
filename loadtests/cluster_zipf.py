"""Cluster benchmark: many pods, one cache, through etcd, under Zipf-distributed model popularity.

Owns the multi-pod scenario of the issue "The mesh: many pods, one cache, through etcd". It starts a
LocalCluster (etcd + ``--pods`` pods, each supervising a built-in runtime), registers ``--many`` small
distinct sklearn models (``runtime_adapters.builtin.samples --many``) through the management API without
loading them, and drives ModelInfer with a closed-loop grpc.aio client: ``--concurrency`` coroutines, each
with one request in flight, every request sent to the next pod in round-robin order (one channel per pod),
the model drawn from a seeded Zipf(``--zipf-s``) distribution over a seeded random ranking of the models.
Per-pod capacity (``--capacity``, bytes) is chosen so that the models touched in a run do not fit one pod
while the hot set fits the cluster, so the tail keeps loading and evicting.

How each request is classified (the mesh does not tell the client how it routed a request): the benchmark
keeps its own copy of the registry, fed by an etcd watch on ``registry/`` (the same records every pod's view
is built from), and classifies a request by the model's state there at the moment it is sent:
``hit`` = the ingress pod has a LOADED copy; ``forwarded`` = another pod has a LOADED copy and the ingress pod
has none; ``miss`` = no pod has a loaded copy (``miss-cold``: no copy at all, the request triggers a load;
``miss-joined``: a load is in flight and the request waits on it). The watch lags etcd by milliseconds and a
pod's cache changes just before its record does, so a request racing an eviction or a load completion can be
misclassified; the pods' own counters are therefore reported beside it for the measured phase:
``modelmesh_requests_routed_total`` by route at each ingress pod (forward / load / forward-load; local hits
are not counted by the pod, so pod-side hits = requests sent to that pod minus those), loads
(``modelmesh_loadmodel_milliseconds_count``), evictions, models held, etcd writes by family. etcd writes are
counted exactly as the etcd store revision before and after the measured phase (each put, delete or txn
that changes something adds one revision; the client's watch and reads add none).

Every ``--verify-every``-th response is decoded and compared with the model's expected output from the
manifest; a mismatch counts as an error (``WRONG_OUTPUT``). Errors are counted by gRPC code, printed, and make
the exit status 1. Markdown goes to stdout, JSON to ``loadtests/results/cluster_zipf-<date>.json``; pod logs
stay under ``--data-dir``. Numbers depend on the machine; no test asserts on them.

    python -m loadtests.cluster_zipf [--pods 3] [--many 200] [--capacity BYTES] [--concurrency 16]
        [--seconds 30] [--warmup 5] [--zipf-s 1.1] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import datetime as dt
import itertools
import os
import random
import shlex
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from loadtests.common import MODEL_INFER, machine_info, markdown_table, percentile, write_results
from mesh.client import MODEL_ID_HEADER, MeshClient, build_infer_request, decode_outputs
from mesh.devtools.cluster import REPO_ROOT, LocalCluster, disable_grpc_fork_handlers, pick_base_port
from mesh.devtools.demo import ensure_samples
from mesh.kv.client import KvClient
from mesh.kv.keys import Keys
from mesh.kv.records import ModelRecord
from protos.inference import grpc_predict_v2_pb2 as v2

DEFAULT_MODELS_DIR = REPO_ROOT / "var" / "zipf-models"
DEFAULT_DATA_ROOT = REPO_ROOT / "var" / "cluster-zipf"
# The --many models are ~600-byte Ridge pickles; the built-in runtime reports them at its 16 KiB floor
# (MIN_MODEL_BYTES) unless the RSS delta of a load is larger. 768 KiB holds about 48 of them per pod: with
# 3 pods and 200 models, the ~200 models a run touches do not fit one pod (nor the cluster), while the
# top 100 (91% of requests at s=1.1) fit the cluster but not one pod.
DEFAULT_CAPACITY = 768 * 1024
CLASSES = ("hit", "forwarded", "miss")
GRPC_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


# ---------------------------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class ModelSpec:
    id: str
    type: str
    path: str
    payload: bytes
    expected: dict[str, np.ndarray]


def load_models(models_dir: Path, many: int) -> list[ModelSpec]:
    manifest = ensure_samples(models_dir, many=many)
    entries = [m for m in manifest.get("models", []) if m.get("group") == "many"]
    if len(entries) < many:
        raise SystemExit(
            f"{models_dir} holds {len(entries)} 'many' models, {many} asked: run "
            f"python -m runtime_adapters.builtin.samples --out {models_dir} --many {many}"
        )
    specs = []
    for m in entries[:many]:
        inp = m["input"]
        data = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
        req = build_infer_request(m["id"], {inp["name"]: data}, raw=True, datatype=inp["datatype"])
        expected = {k: np.asarray(v["data"]).reshape(v["shape"]) for k, v in m["expected"].items()}
        specs.append(ModelSpec(m["id"], m["type"], m["path"], req.SerializeToString(), expected))
    return specs


class ZipfSampler:
    """Seeded Zipf(s) over ``n`` items: rank r (1-based) has weight r**-s; ranks map to a seeded permutation."""

    def __init__(self, n: int, s: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.order = list(range(n))
        self.rng.shuffle(self.order)  # which model is hottest is part of the seed, not "m0000"
        weights = [r**-s for r in range(1, n + 1)]
        self.cum = list(itertools.accumulate(weights))
        self.total = self.cum[-1]

    def share_of_top(self, k: int) -> float:
        return self.cum[min(k, len(self.cum)) - 1] / self.total

    def __call__(self) -> int:
        return self.order[bisect.bisect_left(self.cum, self.rng.random() * self.total)]


def outputs_match(response: bytes, expected: dict[str, np.ndarray]) -> bool:
    try:
        got = decode_outputs(v2.ModelInferResponse.FromString(response))
    except Exception:
        return False
    for name, want in expected.items():
        if name not in got:
            return False
        have = got[name]
        if want.dtype.kind == "f" or have.dtype.kind == "f":
            if not np.allclose(have.astype(np.float64), want.astype(np.float64), rtol=1e-5, atol=1e-6):
                return False
        elif not np.array_equal(have, want):
            return False
    return True


# ---------------------------------------------------------------------------------------------- registry view


class RegistryView:
    """Where each model is loading/loaded, from an etcd watch on ``registry/`` (read-only: no writes)."""

    def __init__(self, kv: KvClient, keys: Keys) -> None:
        self.kv = kv
        self.prefix = keys.registry_prefix
        self.instances: dict[str, frozenset[str]] = {}
        self.loaded: dict[str, frozenset[str]] = {}
        self.events = 0
        self._task: asyncio.Task | None = None
        self.error: str | None = None

    def _apply(self, model_id: str, value: bytes | None) -> None:
        if value is None:
            self.instances.pop(model_id, None)
            self.loaded.pop(model_id, None)
            return
        rec = ModelRecord.from_json(value)
        self.instances[model_id] = frozenset(rec.instances)
        self.loaded[model_id] = frozenset(rec.loaded)

    async def start(self) -> None:
        entries, revision = await self.kv.get_prefix(self.prefix)
        for e in entries:
            self._apply(e.key[len(self.prefix) :], e.value)
        ready = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._watch(revision + 1, ready))
        await asyncio.wait_for(ready, 10)

    async def _watch(self, start: int, ready: asyncio.Future) -> None:
        try:
            async for batch in self.kv.watch_prefix(self.prefix, start):
                if not ready.done():
                    ready.set_result(None)
                for ev in batch:
                    self.events += 1
                    self._apply(ev.key[len(self.prefix) :], ev.value if ev.kind == "put" else None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the classification would silently go stale: record it loudly
            self.error = f"{type(exc).__name__}: {exc}"
            if not ready.done():
                ready.set_exception(exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def classify(self, model_id: str, ingress: str) -> str:
        loaded = self.loaded.get(model_id, frozenset())
        if ingress in loaded:
            return "hit"
        if loaded:
            return "forwarded"
        return "miss-joined" if self.instances.get(model_id) else "miss-cold"


# ---------------------------------------------------------------------------------------------- metrics


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """One pod's /metrics as {sample name: {sorted label pairs: value}}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def metric(m: dict, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for k, v in m.get(name, {}).items() if want <= set(k))


def metric_by(m: dict, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for k, v in m.get(name, {}).items():
        out[dict(k).get(label, "")] += v
    return dict(out)


def pod_counters(m: dict) -> dict[str, Any]:
    return {
        "loads": metric(m, "modelmesh_loadmodel_milliseconds_count"),
        "load_ms_sum": metric(m, "modelmesh_loadmodel_milliseconds_sum"),
        "cache_misses": metric(m, "modelmesh_cache_miss_milliseconds_count"),
        "cache_miss_ms_sum": metric(m, "modelmesh_cache_miss_milliseconds_sum"),
        "load_failures": metric(m, "modelmesh_loadmodel_failure_total"),
        "evictions": metric(m, "modelmesh_age_at_eviction_milliseconds_count"),
        "unloads": metric(m, "modelmesh_unloadmodel_milliseconds_count"),
        "evicted_age_sum_ms": metric(m, "modelmesh_age_at_eviction_milliseconds_sum"),
        "routed": metric_by(m, "modelmesh_requests_routed_total", "route"),
        "kv_writes": metric_by(m, "modelmesh_kv_writes_total", "family"),
        "api_requests": metric(m, "modelmesh_api_request_milliseconds_count", method="ModelInfer"),
        "api_errors": sum(
            v
            for k, v in m.get("modelmesh_api_request_milliseconds_count", {}).items()
            if dict(k).get("code") != "OK"
        ),
        "runtime_restarts": metric(m, "modelmesh_runtime_restarts_total"),
        "models_held": metric(m, "modelmesh_instance_models_total"),
        "used_bytes": metric(m, "modelmesh_instance_used_bytes"),
        "capacity_bytes": metric(m, "modelmesh_instance_capacity_bytes"),
    }


def delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in after.items():
        b = before.get(k)
        if isinstance(v, dict):
            out[k] = {kk: vv - (b or {}).get(kk, 0.0) for kk, vv in v.items()}
        elif k in ("models_held", "used_bytes", "capacity_bytes"):
            out[k] = v  # gauges: the value at the end
        else:
            out[k] = v - (b or 0.0)
    return out


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            out[name] = float("nan")
    return out


def runtime_pid(pod_pid: int) -> int | None:
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pod_pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "runtime_adapters" in " ".join(child.cmdline()):
                    return child.pid
    return None


def code_version() -> dict[str, Any]:
    """The commit the mesh code came from: git when this is a checkout (with modified paths), else the
    ``COMMIT`` file a ``git archive`` snapshot was given."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(REPO_ROOT),
                "status",
                "--porcelain",
                "--",
                "mesh",
                "runtime_adapters",
                "puller",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        return {"commit": head, "modified": [d.strip() for d in dirty if d.strip()]}
    except (OSError, subprocess.CalledProcessError):
        marker = REPO_ROOT / "COMMIT"
        return {
            "commit": marker.read_text().strip() if marker.is_file() else None,
            "snapshot": str(REPO_ROOT),
        }


def log_findings(path: Path) -> dict[str, Any]:
    """Counts of warning/error lines and tracebacks in a pod log, with a few examples."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"log": str(path), "missing": True}
    found: dict[str, list[str]] = {"ERROR": [], "WARNING": [], "Traceback": [], "CRITICAL": []}
    for line in lines:
        for key in found:
            if key in line:
                found[key].append(line[:300])
    return {
        "log": str(path),
        "lines": len(lines),
        **{f"{k.lower()}_lines": len(v) for k, v in found.items()},
        "examples": {k: v[:5] for k, v in found.items() if v},
    }


# ---------------------------------------------------------------------------------------------- the load


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    per_pod: dict[int, Counter] = field(default_factory=lambda: defaultdict(Counter))
    errors: Counter = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    first_touch: int = 0
    by_model: Counter = field(default_factory=Counter)
    verified: int = 0
    sent: int = 0


class Driver:
    """The closed loop: ``concurrency`` coroutines, each with one request in flight, round-robin over
    ``addresses``, models drawn from ``sampler``. Each request is classified before it is sent by
    ``view.classify(model_id, instance_id)``; ``after``, when given, may reclassify it from the response's
    trailing metadata (a peer system that reports its own misses). The model id travels in the ``header``
    metadata (the mesh's ``mm-model-id`` by default), with ``extra_metadata`` beside it."""

    def __init__(
        self,
        addresses: list[str],
        instance_ids: list[str],
        models: list[ModelSpec],
        sampler: ZipfSampler,
        view: Any,
        *,
        timeout: float,
        verify_every: int,
        header: str = MODEL_ID_HEADER,
        extra_metadata: tuple[tuple[str, str], ...] = (),
        after: Callable[[str, Any], str] | None = None,
    ) -> None:
        self.addresses = addresses
        self.instance_ids = instance_ids
        self.models = models
        self.sampler = sampler
        self.view = view
        self.timeout = timeout
        self.verify_every = verify_every
        self.metadata = [((header, m.id), *extra_metadata) for m in models]
        self.after = after
        self.next_pod = itertools.count()
        self.seen: set[int] = set()
        self.calls: list[Any] = []
        self.channels: list[grpc.aio.Channel] = []

    async def open(self) -> None:
        for address in self.addresses:
            ch = grpc.aio.insecure_channel(address, options=GRPC_OPTIONS)
            await asyncio.wait_for(ch.channel_ready(), 30)
            self.channels.append(ch)
            self.calls.append(
                ch.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
            )

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()

    async def _worker(self, stop_at: float, tally: Tally) -> None:
        while time.perf_counter() < stop_at:
            n = next(self.next_pod)
            pod = n % len(self.addresses)
            index = self.sampler()
            model = self.models[index]
            first = index not in self.seen
            self.seen.add(index)
            klass = self.view.classify(model.id, self.instance_ids[pod])
            tally.sent += 1
            t0 = time.perf_counter()
            try:
                call = self.calls[pod](model.payload, metadata=self.metadata[index], timeout=self.timeout)
                resp = await call
                if self.after is not None:
                    klass = self.after(klass, await call.trailing_metadata())
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                tally.errors[code] += 1
                tally.per_pod[pod]["errors"] += 1
                tally.error_examples.setdefault(code, f"{model.id} via pod-{pod}: {exc.details()}")
                continue
            elapsed = time.perf_counter() - t0
            if self.verify_every and n % self.verify_every == 0:
                tally.verified += 1
                if not outputs_match(resp, model.expected):
                    tally.errors["WRONG_OUTPUT"] += 1
                    tally.per_pod[pod]["errors"] += 1
                    tally.error_examples.setdefault("WRONG_OUTPUT", f"{model.id} via pod-{pod}")
                    continue
            tally.first_touch += first
            tally.by_model[index] += 1
            tally.latencies[klass].append(elapsed)
            tally.per_pod[pod][klass.split("-")[0]] += 1
            tally.per_pod[pod]["requests"] += 1

    async def run(self, seconds: float, concurrency: int) -> tuple[Tally, float]:
        tally = Tally()
        t0 = time.perf_counter()
        await asyncio.gather(*(self._worker(t0 + seconds, tally) for _ in range(concurrency)))
        return tally, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- report


def lat_row(name: str, lats: list[float], total: int, seconds: float) -> dict[str, Any]:
    return {
        "class": name,
        "requests": len(lats),
        "share": round(len(lats) / total, 4) if total else 0.0,
        "throughput_rps": round(len(lats) / seconds, 1) if seconds else 0.0,
        "p50_ms": round(percentile(lats, 50) * 1e3, 2),
        "p90_ms": round(percentile(lats, 90) * 1e3, 2),
        "p99_ms": round(percentile(lats, 99) * 1e3, 2),
        "max_ms": round(max(lats) * 1e3, 2) if lats else 0.0,
    }


def per_minute(n: float, seconds: float) -> float:
    return round(n * 60 / seconds, 1) if seconds else 0.0


def register_models(cluster: LocalCluster, models: list[ModelSpec]) -> float:
    """Register every model (not loaded), spread over the pods like the load; returns the seconds taken."""
    t0 = time.perf_counter()
    for i, m in enumerate(models):
        with MeshClient(cluster.addresses[i % len(cluster.addresses)]) as client:
            client.register(m.id, m.type, m.path)
    return time.perf_counter() - t0


async def measure(cluster: LocalCluster, models: list[ModelSpec], args: argparse.Namespace) -> dict[str, Any]:
    kv = KvClient(cluster.etcd_endpoint)
    await kv.connect()
    view = RegistryView(kv, Keys.for_root(cluster.kv_root))
    await view.start()
    sampler = ZipfSampler(len(models), args.zipf_s, args.seed)
    ids = [p.instance_id for p in cluster.pods]
    driver = Driver(
        cluster.addresses, ids, models, sampler, view, timeout=args.timeout, verify_every=args.verify_every
    )
    await driver.open()
    pids: dict[str, int] = {"client": os.getpid()}
    etcd_pid = getattr(getattr(cluster, "_etcd", None), "pid", None)
    if etcd_pid:
        pids["etcd"] = etcd_pid
    for pod in cluster.pods:
        pids[f"{pod.instance_id}/mesh"] = pod.pid
        rt = runtime_pid(pod.pid)
        if rt:
            pids[f"{pod.instance_id}/runtime"] = rt
    try:
        warm = None
        if args.warmup > 0:
            print(f"  warm-up {args.warmup:g}s …", file=sys.stderr, flush=True)
            warm, _ = await driver.run(args.warmup, args.concurrency)
        before = [await asyncio.to_thread(scrape, p.metrics_port) for p in cluster.pods]
        rev0 = await kv.current_revision()
        cpu0 = cpu_seconds(pids)
        print(f"  measuring {args.seconds:g}s …", file=sys.stderr, flush=True)
        tally, elapsed = await driver.run(args.seconds, args.concurrency)
        cpu1 = cpu_seconds(pids)
        rev1 = await kv.current_revision()
        after = [await asyncio.to_thread(scrape, p.metrics_port) for p in cluster.pods]
    finally:
        await driver.close()
        await view.stop()
        await kv.close()
    return {
        "tally": tally,
        "warm": warm,
        "elapsed": elapsed,
        "revisions": rev1 - rev0,
        "revision_range": [rev0, rev1],
        "pods": [delta(pod_counters(a), pod_counters(b)) for a, b in zip(after, before, strict=True)],
        "cpu_s": {k: round(cpu1[k] - cpu0[k], 2) for k in cpu0},
        "view": {
            "watch_events": view.events,
            "watch_error": view.error,
            "loaded_copies": {i: sum(i in s for s in view.loaded.values()) for i in ids},
            "models_with_copies": Counter(len(s) for s in view.loaded.values()),
            "hottest": [
                {
                    "rank": rank,
                    "model": models[i].id,
                    "requests": tally.by_model[i],
                    "share": round(tally.by_model[i] / max(1, sum(tally.by_model.values())), 4),
                    "rpm": round(tally.by_model[i] * 60 / elapsed),
                    "loaded_on_at_end": sorted(view.loaded.get(models[i].id, ())),
                }
                for rank, i in enumerate(sampler.order[:10], start=1)
            ],
        },
        "sampler": sampler,
        "distinct_models_touched": len(driver.seen),
    }


def build_report(r: dict[str, Any], cluster: LocalCluster, args: argparse.Namespace) -> dict[str, Any]:
    t: Tally = r["tally"]
    secs = r["elapsed"]
    ok = sum(len(v) for v in t.latencies.values())
    errors = sum(t.errors.values())
    all_lat = [x for v in t.latencies.values() for x in v]
    merged = {c: [x for k, v in t.latencies.items() if k.split("-")[0] == c for x in v] for c in CLASSES}
    classes = [lat_row("all", all_lat, ok, secs)]
    classes += [lat_row(c, merged[c], ok, secs) for c in CLASSES]
    classes += [lat_row(c, t.latencies.get(c, []), ok, secs) for c in ("miss-cold", "miss-joined")]
    pods = r["pods"]
    loads = sum(p["loads"] for p in pods)
    evictions = sum(p["evictions"] for p in pods)
    routed = Counter()
    for p in pods:
        routed.update(p["routed"])
    kv_by_family = Counter()
    for p in pods:
        kv_by_family.update(p["kv_writes"])
    sent = ok + errors
    per_pod = []
    for i, (pod, m) in enumerate(zip(cluster.pods, pods, strict=True)):
        c = t.per_pod.get(i, Counter())
        fwd_out = m["routed"].get("forward", 0) + m["routed"].get("forward-load", 0)
        per_pod.append(
            {
                "pod": pod.instance_id,
                "ingress_requests": c["requests"] + c["errors"],
                "client_hit": c["hit"],
                "client_forwarded": c["forwarded"],
                "client_miss": c["miss"],
                "routed_forward": int(m["routed"].get("forward", 0)),
                "routed_load": int(m["routed"].get("load", 0)),
                "routed_forward_load": int(m["routed"].get("forward-load", 0)),
                "pod_side_hits": int(c["requests"] + c["errors"] - fwd_out - m["routed"].get("load", 0)),
                "served_for_peers": int(m["api_requests"] - (c["requests"] + c["errors"])),
                "loads": int(m["loads"]),
                "evictions": int(m["evictions"]),
                "mean_idle_at_eviction_s": round(m["evicted_age_sum_ms"] / 1e3 / m["evictions"], 2)
                if m["evictions"]
                else None,
                "mean_load_ms": round(m["load_ms_sum"] / m["loads"], 1) if m["loads"] else None,
                "mean_cache_miss_ms": round(m["cache_miss_ms_sum"] / m["cache_misses"], 1)
                if m["cache_misses"]
                else None,
                "load_failures": int(m["load_failures"]),
                "models_held": int(m["models_held"]),
                "used_kib": round(m["used_bytes"] / 1024, 1),
                "capacity_kib": round(m["capacity_bytes"] / 1024, 1),
                "registry_loaded_copies": r["view"]["loaded_copies"].get(pod.instance_id, 0),
                "kv_writes": int(sum(m["kv_writes"].values())),
                "api_errors": int(m["api_errors"]),
                "runtime_restarts": int(m["runtime_restarts"]),
                "mesh_cpu_s": r["cpu_s"].get(f"{pod.instance_id}/mesh"),
                "runtime_cpu_s": r["cpu_s"].get(f"{pod.instance_id}/runtime"),
            }
        )
    sampler: ZipfSampler = r["sampler"]
    summary = {
        "requests_ok": ok,
        "errors": errors,
        "seconds": round(secs, 3),
        "throughput_rps": round(ok / secs, 1) if secs else 0.0,
        "p50_ms": classes[0]["p50_ms"],
        "p99_ms": classes[0]["p99_ms"],
        "loads": int(loads),
        "loads_per_min": per_minute(loads, secs),
        "mean_load_ms": round(sum(p["load_ms_sum"] for p in pods) / loads, 1) if loads else None,
        "mean_cache_miss_ms": round(
            sum(p["cache_miss_ms_sum"] for p in pods) / max(1, sum(p["cache_misses"] for p in pods)), 1
        ),
        "evictions": int(evictions),
        "evictions_per_min": per_minute(evictions, secs),
        "etcd_revisions": r["revisions"],
        "etcd_writes_per_1k_requests": round(r["revisions"] * 1000 / sent, 2) if sent else None,
        "mesh_kv_writes": int(sum(kv_by_family.values())),
        "mesh_kv_writes_by_family": {k: int(v) for k, v in sorted(kv_by_family.items())},
        "routed_by_route": {k: int(v) for k, v in sorted(routed.items())},
        "pod_side_hits": int(sent - sum(routed.values())),
        "first_touch_requests": t.first_touch,
        "distinct_models_touched_incl_warmup": r["distinct_models_touched"],
        "verified_responses": t.verified,
        "hot_set_share": {f"top{k}": round(sampler.share_of_top(k), 3) for k in (10, 30, 50, 100)},
    }
    return {
        "summary": summary,
        "classes": classes,
        "per_pod": per_pod,
        "errors_by_code": dict(t.errors),
        "error_examples": t.error_examples,
        "cpu_s": r["cpu_s"],
        "registry_view": {
            "watch_events": r["view"]["watch_events"],
            "watch_error": r["view"]["watch_error"],
            "hottest_models": r["view"]["hottest"],
            "models_by_loaded_copies": {
                str(k): v for k, v in sorted(r["view"]["models_with_copies"].items())
            },
        },
        "warmup": (
            {
                "requests_ok": sum(len(v) for v in r["warm"].latencies.values()),
                "errors_by_code": dict(r["warm"].errors),
                "by_class": {k: len(v) for k, v in r["warm"].latencies.items()},
            }
            if r["warm"] is not None
            else None
        ),
        "etcd_revision_range": r["revision_range"],
    }


CLASSIFICATION = (
    "Per request, by the model's state in the client's etcd-watch copy of the registry at send time: hit = "
    "ingress pod has a LOADED copy; forwarded = only other pods have LOADED copies; miss = no LOADED copy "
    "anywhere (miss-cold: no copy, the request triggers a load; miss-joined: a load is in flight). The watch "
    "lags etcd by milliseconds, so requests racing a load or eviction can be misclassified; pod counters "
    "(modelmesh_requests_routed_total by route, loads, evictions) are reported beside it. Pod-side hits = "
    "requests sent to a pod minus its forward/load/forward-load routings (a retried routing counts twice). "
    "etcd writes = store revision delta over the measured phase (one per put/delete/txn)."
)


def print_report(rep: dict[str, Any], meta: dict[str, Any]) -> None:
    s = rep["summary"]
    print("### Cluster, Zipf popularity\n")
    print(
        f"{meta['pods']} pods, {meta['models']} models, capacity {meta['capacity']} B/pod, concurrency "
        f"{meta['concurrency']}, {s['seconds']} s measured after {meta['warmup']} s warm-up, Zipf s="
        f"{meta['zipf_s']} seed {meta['seed']} (top-10 {s['hot_set_share']['top10']:.0%}, top-50 "
        f"{s['hot_set_share']['top50']:.0%} of requests); load average start {meta['loadavg_start']}, "
        f"end {meta['loadavg_end']}\n"
    )
    print(
        markdown_table(
            [s],
            [
                "requests_ok",
                "errors",
                "throughput_rps",
                "p50_ms",
                "p99_ms",
                "loads_per_min",
                "evictions_per_min",
                "etcd_writes_per_1k_requests",
            ],
        )
    )
    print()
    print(markdown_table(rep["classes"], ["class", "requests", "share", "p50_ms", "p99_ms", "max_ms"]))
    print()
    print(
        markdown_table(
            rep["per_pod"],
            [
                "pod",
                "ingress_requests",
                "client_hit",
                "client_forwarded",
                "client_miss",
                "routed_forward",
                "routed_load",
                "routed_forward_load",
                "served_for_peers",
                "loads",
                "evictions",
                "mean_idle_at_eviction_s",
                "models_held",
                "kv_writes",
                "mesh_cpu_s",
                "runtime_cpu_s",
            ],
        )
    )
    print()
    print(
        f"loads {s['loads']} (mean runtime load {s['mean_load_ms']} ms, mean wait of a request on a load "
        f"{s['mean_cache_miss_ms']} ms), evictions {s['evictions']}, routed {s['routed_by_route']}, pod-side hits "
        f"{s['pod_side_hits']}; etcd revisions {s['etcd_revisions']} (mesh-counted kv writes "
        f"{s['mesh_kv_writes']}: {s['mesh_kv_writes_by_family']}); CPU s {rep['cpu_s']}"
    )
    print(
        "models by number of LOADED copies at the end (registry): "
        f"{rep['registry_view']['models_by_loaded_copies']}"
    )
    print("\nhottest models (measured phase) and where they were LOADED at the end:\n")
    print(
        markdown_table(
            rep["registry_view"]["hottest_models"], ["rank", "model", "share", "rpm", "loaded_on_at_end"]
        )
    )
    print(f"\nclassification: {CLASSIFICATION}")
    if rep["registry_view"]["watch_error"]:
        print(
            f"\nWARNING: registry watch failed, classification went stale: {rep['registry_view']['watch_error']}"
        )
    if s["errors"]:
        print(f"\nERRORS: {s['errors']} failed requests by code {rep['errors_by_code']}")
        for code, ex in rep["error_examples"].items():
            print(f"  {code}: {ex}")
    else:
        print(
            f"\nall {s['requests_ok']} measured requests succeeded ({s['verified_responses']} outputs verified)"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.cluster_zipf", description=__doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=3)
    p.add_argument("--many", type=int, default=200, help="number of models (samples --many)")
    p.add_argument(
        "--capacity",
        type=int,
        default=DEFAULT_CAPACITY,
        help="runtime capacity per pod, bytes (default 768 KiB)",
    )
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds (same load, not measured)")
    p.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent of model popularity")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30.0, help="per-request deadline, seconds")
    p.add_argument(
        "--verify-every", type=int, default=10, help="check every N-th response's output (0: never)"
    )
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    p.add_argument(
        "--data-dir", default=None, help="pod logs and model dirs (default var/cluster-zipf/<date>)"
    )
    p.add_argument("--port", type=int, default=0, help="first pod's port (default: free ports)")
    p.add_argument("--no-write", action="store_true", help="do not write the JSON result file")
    args = p.parse_args(argv)
    disable_grpc_fork_handlers()

    started = dt.datetime.now(dt.UTC)
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    models = load_models(Path(args.models_dir).resolve(), args.many)
    data_dir = Path(args.data_dir or DEFAULT_DATA_ROOT / started.strftime("%Y%m%d-%H%M%S")).resolve()
    base = pick_base_port(args.port, args.pods)
    print(f"starting {args.pods} pods (logs in {data_dir}) …", file=sys.stderr, flush=True)
    cluster = LocalCluster(
        pods=args.pods,
        base_port=base,
        capacity=args.capacity,
        models_dir=Path(args.models_dir).resolve(),
        data_dir=data_dir,
    )
    with cluster:
        register_s = register_models(cluster, models)
        print(f"registered {len(models)} models in {register_s:.1f}s", file=sys.stderr, flush=True)
        raw = asyncio.run(measure(cluster, models, args))
        dead = [p.instance_id for p in cluster.dead_pods()]
        report = build_report(raw, cluster, args)
        logs = {p.instance_id: log_findings(p.log_path) for p in cluster.pods}
    loadavg_end = [round(x, 2) for x in os.getloadavg()]

    meta = {
        "pods": args.pods,
        "models": len(models),
        "capacity": args.capacity,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "zipf_s": args.zipf_s,
        "seed": args.seed,
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg_end,
    }
    print_report(report, meta)
    if dead:
        print(f"\nDEAD PODS at the end: {dead}")
    command = "python -m loadtests.cluster_zipf " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {
        "benchmark": "cluster_zipf",
        "command": command.strip(),
        "date": started.isoformat(timespec="seconds"),
        "settings": {**meta, "timeout": args.timeout, "verify_every": args.verify_every},
        "machine": machine_info(),
        "code": code_version(),
        "note": "client, pods, runtimes and etcd share this machine's CPUs",
        "classification": CLASSIFICATION,
        "register_seconds": round(register_s, 2),
        "dead_pods": dead,
        "pod_logs": logs,
        "data_dir": str(data_dir),
        **report,
    }
    if not args.no_write:
        path = write_results("cluster_zipf", result)
        print(f"\nwrote {path}")
    return 1 if report["summary"]["errors"] or dead else 0


if __name__ == "__main__":
    raise SystemExit(main())
