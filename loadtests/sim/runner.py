"""Runs simulations and bounds over a trace family, in worker processes, and collects their results.

One *task* is (trace source, what to compute): a policy run (``SimMesh`` with that eviction policy, with or
without proactive loading) or the offline lower bound. A worker rebuilds the trace from its spec (seeded,
so every worker sees the same requests) or reads it from the CSV file, so nothing big crosses processes
on the way in; results come back as plain dicts with the per-minute series and memory samples.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass

import numpy as np

from .bound import lower_bound
from .engine import SimConfig, SimMesh
from .trace import Trace, TraceSpec, generate, read_csv


@dataclass(frozen=True)
class TraceSource:
    name: str
    spec: TraceSpec | None = None
    csv_path: str | None = None

    def load(self) -> Trace:
        if self.csv_path:
            return read_csv(self.csv_path, name=self.name)
        assert self.spec is not None
        return generate(self.spec)


@dataclass(frozen=True)
class Task:
    source: TraceSource
    kind: str  # "sim" or "bound"
    label: str
    config: SimConfig | None = None
    bucket_s: float = 60.0


def run_task(task: Task) -> dict:
    trace = task.source.load()
    base = {
        "trace": task.source.name,
        "label": task.label,
        "kind": task.kind,
        "requests": len(trace),
        "distinct_models": int(trace.meta.get("distinct_models", 0)),
        "trace_seconds": trace.seconds,
    }
    started = time.perf_counter()
    cpu_started = time.process_time()
    if task.kind == "bound":
        assert task.config is not None
        b = lower_bound(
            trace,
            task.config.pods * task.config.capacity,
            bucket_s=task.bucket_s,
            measure_from_ms=int(task.config.warmup_s * 1000),
            pod_capacity=task.config.capacity,
        )
        return {
            **base,
            "load_s": b.total_s,
            "compulsory_s": b.compulsory_s,
            "capacity_s": b.capacity_s,
            "intervals": b.intervals,
            "buckets": b.buckets,
            "wall_s": time.perf_counter() - started,
            "status": b.status,
        }
    assert task.config is not None
    sim = SimMesh(task.config, trace)
    sim.run()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    out = sim.result()
    compulsory = compulsory_s(trace, int(task.config.warmup_s * 1000))
    return {
        **base,
        **out,
        "policy": task.config.policy,
        "proactive": task.config.proactive,
        "compulsory_s": compulsory,
        "wall_s": wall,
        "cpu_s": cpu,
        "speedup": trace.seconds / wall if wall else 0.0,
        "speedup_cpu": trace.seconds / cpu if cpu else 0.0,
        "per_minute": {k: v.tolist() for k, v in sim.per_minute.items()},
        "samples_t": sim.samples_t,
        "samples_used": sim.samples_used,
        "pods": task.config.pods,
        "capacity": task.config.capacity,
    }


def compulsory_s(trace: Trace, measure_from_ms: int) -> float:
    """Load time of the models first requested at or after ``measure_from_ms`` (no policy avoids it)."""
    first = np.full(len(trace.catalog), np.iinfo(np.int64).max)
    np.minimum.at(first, trace.model.astype(np.int64), trace.t_ms)
    new = (first >= measure_from_ms) & (first < np.iinfo(np.int64).max)
    return float(trace.catalog.load_ms[new].sum()) / 1000


def run_all(tasks: list[Task], jobs: int) -> list[dict]:
    if jobs <= 1 or len(tasks) <= 1:
        return [run_task(t) for t in tasks]
    # the longest tasks first, so the pool ends together
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(min(jobs, len(tasks))) as pool:
        return pool.map(run_task, tasks, chunksize=1)
