"""Proactive loading on a real cluster: does the leader's spare-room fill help the requests after a scale-out?

Owns the real-cluster figure of issue 11's "Proactive loading" (the simulator's is ``loadtests.sim --join-pods
--proactive``). For each mode (``MM_PROACTIVE_LOADING`` off, then on) it starts a fresh ``LocalCluster`` of
``--pods`` pods with built-in runtimes and the Zipf workload of ``loadtests.cluster_zipf`` (the same sample
models, sampler, closed-loop driver and hit/forwarded/miss classification from an etcd watch), then:

1. stops the last pod (SIGTERM) before anything is registered, so the cluster runs one pod short;
2. registers the models and runs the load for ``--warmup`` seconds against the remaining pods: their caches
   fill and churn, and the models evicted meanwhile are the "recently used models with no copy" the leader's
   fill looks for;
3. starts the last pod again, empty (a scale-out), waits until it is SERVING, and measures ``--seconds`` of
   the same load (clients still send to the original pods, as a Service would until its endpoints refresh; the
   new pod gets loads by placement, and forwards).

It reports per mode the requests of the measured phase by class (hit, forwarded, miss), the miss share, p50/p99,
the copies the new pod held at the end, and the proactive loads the leader started (from the pods' logs). Both modes see the same request sequence (same seed). Numbers
depend on the machine; no test asserts on them.

    python -m loadtests.proactive_scaleout [--pods 3] [--warmup 20] [--seconds 20] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from loadtests.cluster_zipf import (
    DEFAULT_CAPACITY,
    DEFAULT_MODELS_DIR,
    Driver,
    RegistryView,
    ZipfSampler,
    load_models,
)
from loadtests.common import machine_info, markdown_table, percentile, write_results
from mesh.client import MeshClient
from mesh.devtools.cluster import LocalCluster, disable_grpc_fork_handlers, pick_base_port
from mesh.kv.client import KvClient
from mesh.kv.keys import Keys

MISS_CLASSES = ("miss-cold", "miss-joined")
FILL_LOG = re.compile(r"proactive loads of (\d+) model")  # the leader's SpareFiller log line


async def run_load(
    cluster: LocalCluster, pods: int, models: list, sampler: ZipfSampler, seconds: float, concurrency: int
) -> dict[str, Any]:
    """``seconds`` of the Zipf load against the first ``pods`` pods; the tally and where copies are at the end."""
    kv = KvClient(cluster.etcd_endpoint)
    await kv.connect()
    view = RegistryView(kv, Keys.for_root(cluster.kv_root))
    await view.start()
    ids = [p.instance_id for p in cluster.pods[:pods]]
    driver = Driver(cluster.addresses[:pods], ids, models, sampler, view, timeout=30.0, verify_every=10)
    await driver.open()
    try:
        tally, elapsed = await driver.run(seconds, concurrency)
    finally:
        await driver.close()
        copies = {p.instance_id: sum(p.instance_id in s for s in view.loaded.values()) for p in cluster.pods}
        await view.stop()
        await kv.close()
    return {"tally": tally, "elapsed": elapsed, "copies": copies}


def stop_pod(cluster: LocalCluster, index: int) -> None:
    pod = cluster.pods[index]
    with contextlib.suppress(ProcessLookupError):
        pod.proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        pod.proc.wait(timeout=60)


def run_mode(proactive: bool, args: argparse.Namespace, models: list) -> dict[str, Any]:
    env = {
        "MM_PROACTIVE_LOADING": "true" if proactive else "false",
        "MM_SCALE_CHECK_INTERVAL_S": str(args.fill_interval),
    }
    cluster = LocalCluster(
        pods=args.pods,
        base_port=pick_base_port(0, args.pods),
        capacity=args.capacity,
        models_dir=Path(args.models_dir).resolve(),
        env=env,
    )
    first = args.pods - 1  # pods that run from the start
    with cluster:
        joining = cluster.pods[first].instance_id
        stop_pod(cluster, first)
        with MeshClient(cluster.addresses[0]) as client:
            for m in models:
                client.register(m.id, m.type, m.path)
        sampler = ZipfSampler(len(models), args.zipf_s, args.seed)
        asyncio.run(run_load(cluster, first, models, sampler, args.warmup, args.concurrency))
        cluster.pods[first] = cluster._spawn_pod(first)  # the scale-out: the same id and port, empty
        cluster.wait_ready()
        measured = asyncio.run(run_load(cluster, first, models, sampler, args.seconds, args.concurrency))
        fills = sum(
            int(m[1])
            for pod in cluster.pods
            for m in FILL_LOG.finditer(Path(pod.log_path).read_text(errors="replace"))
        )
    tally = measured["tally"]
    lats = [x for v in tally.latencies.values() for x in v]
    total = len(lats)
    misses = sum(len(tally.latencies[k]) for k in MISS_CLASSES)
    return {
        "mode": "proactive on" if proactive else "proactive off",
        "requests": total,
        "errors": sum(tally.errors.values()),
        "hit": len(tally.latencies["hit"]),
        "forwarded": len(tally.latencies["forwarded"]),
        "miss": misses,
        "miss_share": round(misses / total, 4) if total else 0.0,
        "p50_ms": round(percentile(lats, 50) * 1e3, 2),
        "p99_ms": round(percentile(lats, 99) * 1e3, 2),
        "new_pod_copies_at_end": measured["copies"].get(joining, 0),
        "proactive_loads_started": fills,
        "error_examples": dict(tally.error_examples),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.proactive_scaleout", description=__doc__.splitlines()[0]
    )
    p.add_argument("--pods", type=int, default=3, help="pods after the scale-out (the last one joins)")
    p.add_argument("--many", type=int, default=200, help="number of models (samples --many)")
    p.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY, help="runtime capacity per pod, bytes")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--warmup", type=float, default=20.0, help="seconds of load before the new pod joins")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds after it joined")
    p.add_argument("--fill-interval", type=float, default=2.0, help="the leader's fill period, s")
    p.add_argument("--zipf-s", type=float, default=1.1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    disable_grpc_fork_handlers()
    started = dt.datetime.now(dt.UTC)
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    models = load_models(Path(args.models_dir).resolve(), args.many)
    rows = []
    for proactive in (False, True):
        print(f"{'proactive on' if proactive else 'proactive off'} …", file=sys.stderr, flush=True)
        rows.append(run_mode(proactive, args, models))
    loadavg_end = [round(x, 2) for x in os.getloadavg()]
    cols = [k for k in rows[0] if k != "error_examples"]
    print(f"\n### Scale-out with and without proactive loading ({args.pods - 1} → {args.pods} pods)\n")
    print(markdown_table(rows, cols))
    print(f"\nload average start {loadavg_start}, end {loadavg_end}")
    if not args.no_write:
        command = "python -m loadtests.proactive_scaleout " + shlex.join(
            argv if argv is not None else sys.argv[1:]
        )
        path = write_results(
            "proactive_scaleout",
            {
                "command": command.strip(),
                "date": started.isoformat(timespec="seconds"),
                "settings": vars(args),
                "machine": machine_info(),
                "loadavg_start": loadavg_start,
                "loadavg_end": loadavg_end,
                "rows": rows,
            },
        )
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
