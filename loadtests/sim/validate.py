"""``python -m loadtests.sim validate``: one trace through a real local cluster and through the simulator.

The trace is generated (Zipf ``--zipf`` over ``--models`` sample models, Poisson arrivals at ``--rps`` for
``--seconds``, diurnal swing over the trace), and every request gets its ingress pod from a seeded draw; the
same (time, model, ingress pod) sequence is then

  1. sent, open loop at its timestamps, to a real ``LocalCluster`` (etcd + ``--pods`` mesh pods, each with a
     built-in runtime holding the ``runtime_adapters.builtin.samples --many`` sklearn models) with header
     ``mm-model-id``; the pods' own counters are read before and after (``modelmesh_loadmodel_milliseconds``,
     ``modelmesh_cache_miss_milliseconds``, ``modelmesh_requests_routed_total``), and the measured size of every
     model and the mean load time are read from the registry and the metrics;
  2. replayed through the simulator with the same pods, capacity, loading concurrency (1, the built-in
     runtime's), placement default size (the runtime's 1,000,000 bytes), the measured sizes, and the measured
     mean load time, with the prediction noise the real runtime has (none for these models: it predicts
     from the file size and reports the 16 KiB floor).

The first ``--warmup-s`` seconds are replayed but not compared (a runtime's first load of sklearn pays the
library import, ~1.8 s on this machine, which the simulator does not model).

Compared: hit ratio (requests that did not wait for a load: 1 − cache-miss waits / requests), loads, and
forwards (routed forward + forward-load). The verdict is "agree" when each is within ``--tolerance`` (10 %)
of the real value. Markdown to stdout, JSON to ``loadtests/results/sim-validate-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shlex
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from loadtests.common import MODEL_INFER, RESULTS_DIR, machine_info, markdown_table

from .engine import SimConfig, SimMesh
from .trace import Catalog, Trace, TraceSpec, generate, write_csv

DEFAULT_CAPACITY = 768 * 1024


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pods", type=int, default=3)
    p.add_argument("--models", type=int, default=200)
    p.add_argument("--seconds", type=float, default=300.0, help="trace length, s (warm-up included)")
    p.add_argument(
        "--warmup-s",
        type=float,
        default=30.0,
        help="first seconds not compared (each runtime's first load of a type pays its imports, ~1.8 s)",
    )
    p.add_argument("--rps", type=float, default=15.0)
    p.add_argument("--zipf", type=float, default=1.1)
    p.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY, help="runtime capacity per pod, bytes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tolerance", type=float, default=0.10)
    p.add_argument("--timeout", type=float, default=60.0, help="per-request deadline, s")
    p.add_argument("--models-dir", default=None, help="sample models (default var/zipf-models)")
    p.add_argument("--trace-out", help="also write the trace as CSV here")
    p.add_argument(
        "--policy",
        choices=["lru", "cost"],
        default="lru",
        help="the simulator's eviction policy; give the pods the same with --pod-arg (e.g. their policy flag)",
    )
    p.add_argument(
        "--pod-arg",
        action="append",
        default=[],
        help="extra `mesh serve` argument for every real pod (repeatable), e.g. --pod-arg=--eviction-policy=cost",
    )
    p.add_argument("--no-write", action="store_true")


def make_trace(args: argparse.Namespace, ids: list[str]) -> tuple[Trace, list[int]]:
    spec = TraceSpec(
        name="validate",
        models=len(ids),
        seconds=args.seconds,
        rps=args.rps,
        zipf_s=args.zipf,
        day_s=args.seconds,
        diurnal_amplitude=0.5,
        rollouts=0,
        bursts=0,
        initial_share=1.0,
        seed=args.seed,
    )
    n = len(ids)
    catalog = Catalog(
        list(ids), ["sklearn"] * n, np.full(n, 16 * 1024, dtype=np.int64), np.full(n, 50, dtype=np.int64)
    )
    trace = generate(spec, catalog)
    rng = random.Random(args.seed)
    ingress = [rng.randrange(args.pods) for _ in range(len(trace))]
    return trace, ingress


async def replay(
    addresses: list[str],
    trace: Trace,
    ingress: list[int],
    payloads: dict[str, bytes],
    timeout: float,
    *,
    mark_at_ms: int = 0,
    mark=None,
) -> dict:
    """Send every request at its time (open loop); call ``mark()`` (in a thread) once the trace reaches
    ``mark_at_ms`` (the end of the warm-up) and return what it returned under "mark"."""
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 30)
    calls = [
        ch.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None) for ch in channels
    ]
    errors: dict[str, int] = {}
    late = 0
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.5

    async def one(model_id: str, pod: int) -> None:
        try:
            await calls[pod](payloads[model_id], metadata=(("mm-model-id", model_id),), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1

    tasks = []
    ids = trace.catalog.ids
    marked = None
    for t_ms, m, pod in zip(trace.t_ms.tolist(), trace.model.tolist(), ingress, strict=True):
        if mark is not None and marked is None and t_ms >= mark_at_ms:
            marked = await loop.run_in_executor(None, mark)
        delay = start + t_ms / 1000 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.05:
            late += 1
        tasks.append(asyncio.create_task(one(ids[m], pod)))
    await asyncio.gather(*tasks)
    for ch in channels:
        await ch.close()
    return {"errors": errors, "sent_late_over_50ms": late, "replay_s": loop.time() - start, "mark": marked}


async def read_sizes(endpoint: str, kv_root: str) -> tuple[dict[str, int], dict[int, int]]:
    from mesh.kv.client import KvClient
    from mesh.kv.keys import Keys
    from mesh.kv.records import ModelRecord

    kv = KvClient([endpoint])
    await kv.connect()
    try:
        prefix = Keys.for_root(kv_root).registry_prefix
        entries, _ = await kv.get_prefix(prefix)
        recs = {e.key[len(prefix) :]: ModelRecord.from_json(e.value) for e in entries}
        copies: dict[int, int] = {}
        for r in recs.values():
            copies[len(r.instances)] = copies.get(len(r.instances), 0) + 1
        return {m: r.size for m, r in recs.items()}, copies
    finally:
        await kv.close()


def pod_totals(cluster) -> dict:
    from loadtests.cluster_zipf import metric, metric_by, scrape

    out = {"loads": 0.0, "load_s": 0.0, "waits": 0.0, "evictions": 0.0, "routed": {}, "loads_per_pod": []}
    for p in cluster.pods:
        m = scrape(p.metrics_port)
        out["loads_per_pod"].append(metric(m, "modelmesh_loadmodel_milliseconds_count"))
        out["loads"] += metric(m, "modelmesh_loadmodel_milliseconds_count")
        out["load_s"] += metric(m, "modelmesh_loadmodel_milliseconds_sum") / 1000
        out["waits"] += metric(m, "modelmesh_cache_miss_milliseconds_count")
        out["evictions"] += metric(m, "modelmesh_age_at_eviction_milliseconds_count")
        for k, v in metric_by(m, "modelmesh_requests_routed_total", "route").items():
            out["routed"][k] = out["routed"].get(k, 0.0) + v
    return out


def run_real(
    args: argparse.Namespace,
    trace: Trace,
    ingress: list[int],
    models_dir: Path,
    payloads: dict[str, bytes],
    types: dict[str, tuple[str, str]],
) -> dict:
    from mesh.client import MeshClient
    from mesh.devtools.cluster import LocalCluster, disable_grpc_fork_handlers, pick_base_port

    disable_grpc_fork_handlers()
    data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"sim-validate-{os.getpid()}"
    cluster = LocalCluster(
        pods=args.pods,
        base_port=pick_base_port(0, args.pods),
        capacity=args.capacity,
        models_dir=models_dir,
        data_dir=data_dir,
        pod_args=args.pod_arg,
    )
    with cluster:
        for i, model_id in enumerate(trace.catalog.ids):
            with MeshClient(cluster.addresses[i % args.pods]) as client:
                client.register(model_id, *types[model_id])
        t0 = time.perf_counter()
        rep = asyncio.run(
            replay(
                cluster.addresses,
                trace,
                ingress,
                payloads,
                args.timeout,
                mark_at_ms=int(args.warmup_s * 1000),
                mark=lambda: pod_totals(cluster),
            )
        )
        before = rep["mark"]
        time.sleep(2.0)  # let the last loads' counters land
        after = pod_totals(cluster)
        sizes, copies = asyncio.run(read_sizes(cluster.etcd_endpoint, cluster.kv_root))
        wall = time.perf_counter() - t0
    loads = after["loads"] - before["loads"]
    waits = after["waits"] - before["waits"]
    routed = {k: v - before["routed"].get(k, 0.0) for k, v in after["routed"].items()}
    n = int((trace.t_ms >= int(args.warmup_s * 1000)).sum())
    mean_ms = 1000 * (after["load_s"] - before["load_s"]) / loads if loads else 0.0
    # each pod's first load of the type paid the library import; what the warm-up loads took beyond the mean
    first_extra = max(
        0.0, (1000 * before["load_s"] - before["loads"] * mean_ms) / max(1, len(before["loads_per_pod"]))
    )
    return {
        "requests": n,
        "errors": rep["errors"],
        "late": rep["sent_late_over_50ms"],
        "hit_ratio": 1 - waits / n,
        "waits": waits,
        "loads": loads,
        "evictions": after["evictions"] - before["evictions"],
        "loads_per_pod": [
            a - b for a, b in zip(after["loads_per_pod"], before["loads_per_pod"], strict=True)
        ],
        "mean_load_ms": mean_ms,
        "first_type_load_ms": first_extra,
        "forwards": routed.get("forward", 0.0) + routed.get("forward-load", 0.0),
        "routed": routed,
        "sizes": sizes,
        "models_by_copies": copies,
        "wall_s": wall,
    }


def run_sim(
    args: argparse.Namespace,
    trace: Trace,
    ingress: list[int],
    sizes: dict[str, int],
    load_ms: float,
    first_type_load_ms: float = 0.0,
) -> dict:
    cat = trace.catalog
    measured = [sizes.get(m) or 16 * 1024 for m in cat.ids]
    catalog = Catalog(
        cat.ids,
        cat.types,
        np.array(measured, dtype=np.int64),
        np.full(len(cat), max(1, round(load_ms)), dtype=np.int64),
    )
    sim_trace = Trace(trace.name, trace.t_ms, trace.model, catalog, trace.seconds, trace.meta)
    cfg = SimConfig(
        pods=args.pods,
        capacity=args.capacity,
        policy=args.policy,
        loading_concurrency=1,
        default_size=1_000_000,
        size_noise=0.0,
        load_jitter=0.0,
        warmup_s=args.warmup_s,
        first_type_load_ms=round(first_type_load_ms),
        seed=args.seed,
    )
    sim = SimMesh(cfg, sim_trace, ingress=ingress)
    sim.run()
    r = sim.result()
    copies: dict[int, int] = {}
    for rec in sim.registry.items().values():
        copies[len(rec.instances)] = copies.get(len(rec.instances), 0) + 1
    return {
        "models_by_copies": copies,
        "requests": r["requests"],
        "hit_ratio": 1 - r["waited"] / r["requests"],
        "waits": r["waited"],
        "loads": r["loads"],
        "evictions": r["evictions"],
        "loads_per_pod": r["loads_per_pod"],
        "forwards": r["forwards"],
        "routed": r["routed"],
        "failed": r["failed"],
    }


def cmd_validate(args: argparse.Namespace, argv: list[str]) -> int:
    from loadtests.cluster_zipf import DEFAULT_MODELS_DIR, load_models

    started = dt.datetime.now(dt.UTC)
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    models_dir = Path(args.models_dir or DEFAULT_MODELS_DIR).resolve()
    specs = load_models(models_dir, args.models)
    payloads = {m.id: m.payload for m in specs}
    types = {m.id: (m.type, m.path) for m in specs}
    trace, ingress = make_trace(args, [m.id for m in specs])
    if args.trace_out:
        write_csv(trace, args.trace_out)
    print(
        f"trace: {len(trace)} requests over {args.seconds:.0f} s, {trace.meta['distinct_models']} models; real cluster …",
        file=sys.stderr,
        flush=True,
    )
    real = run_real(args, trace, ingress, models_dir, payloads, types)
    sim = run_sim(args, trace, ingress, real["sizes"], real["mean_load_ms"], real["first_type_load_ms"])
    rows = []
    agree = True
    for key in ("hit_ratio", "loads", "forwards"):
        r, s = float(real[key]), float(sim[key])
        rel = abs(s - r) / r if r else (0.0 if s == 0 else float("inf"))
        ok = rel <= args.tolerance
        agree &= ok
        rows.append(
            {
                "measure": key,
                "real": round(r, 4),
                "sim": round(s, 4),
                "relative_difference": round(rel, 4),
                "within": ok,
            }
        )
    print(markdown_table(rows, ["measure", "real", "sim", "relative_difference", "within"]))
    print(
        f"\nreal: {real['errors'] or 'no'} errors, {real['late']} requests sent >50 ms late, mean load {real['mean_load_ms']:.1f} ms "
        f"(a pod's first of its type: +{real['first_type_load_ms']:.0f} ms), "
        f"routed {real['routed']}; sim routed {sim['routed']}, failed {sim['failed']}"
    )
    sizes = [v for v in real["sizes"].values() if v]
    print(
        f"loads per pod: real {real['loads_per_pod']}, sim {sim['loads_per_pod']}\n"
        f"models by copies at the end: real {real['models_by_copies']}, sim {sim['models_by_copies']}\n"
        f"evictions: real {real['evictions']:.0f}, sim {sim['evictions']}; measured sizes of {len(sizes)} models: "
        f"min {min(sizes, default=0)}, median {sorted(sizes)[len(sizes) // 2] if sizes else 0}, max {max(sizes, default=0)}"
    )
    print(f"verdict: {'agree' if agree else 'DISAGREE'} within {args.tolerance:.0%}")
    if not args.no_write:
        real_out = {k: v for k, v in real.items() if k != "sizes"}
        real_out["measured_sizes"] = {
            "distinct": sorted(set(real["sizes"].values()))[:20],
            "models_with_size": sum(1 for v in real["sizes"].values() if v),
        }
        doc = {
            "benchmark": "sim-validate",
            "command": "python -m loadtests.sim " + shlex.join(argv),
            "date": started.isoformat(timespec="seconds"),
            "loadavg_start": loadavg_start,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "machine": machine_info(),
            "settings": {k: v for k, v in vars(args).items() if k != "command"},
            "real": real_out,
            "sim": sim,
            "comparison": rows,
            "agree": agree,
        }
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"sim-validate-{started.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(doc, indent=1))
        print(f"wrote {path}")
    return 0 if agree else 1
