"""Miss-path benchmark: what a first request costs beyond the runtime's own pull + load (issue 9, "Miss overhead").

Owns the miss breakdown. It starts a LocalCluster (1 or 2 pods, built-in runtime), registers ``--models`` small
sklearn models (not loaded), then, one model at a time, sends the model's first inference and measures its
time to first inference (TTFI) at the client, then a second (warm) inference. Each pod logs, for every load,
where the mesh spent the time (``mesh.local.loader.LoadTimings``: size prediction, claim in etcd, evictions,
queue, the runtime's loadModel, sizing, and the total until the waiting requests woke) and the runtime logs
its own pull + load time (``runtime_adapters.server``). The benchmark reads both from the pod logs and reports
per scenario, at p50 and p90:

- ``overhead = TTFI - (runtime pull + load)``: everything the mesh and the first inference add to the load;
- ``overhead - warm``: the same without the inference itself (the warm request's latency);
- each stage of the mesh's breakdown.

Scenarios: ``local`` (1 pod: the ingress pod loads), ``remote`` (2 pods, requests sent to the pod that does
*not* load: the ingress pod forwards with ``mm-internal: load``; models are pinned to the other pod with type
constraints). Numbers depend on the machine; no test asserts on them.

    python -m loadtests.miss [--models 40] [--scenario local remote]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.common import machine_info, markdown_table, percentile, write_results
from mesh.client import MeshClient
from mesh.devtools.cluster import LocalCluster, pick_base_port
from mesh.devtools.demo import ensure_samples

MODELS_DIR = Path("var") / "miss-models"
_MESH = re.compile(
    r"loaded (?P<id>\S+) \(\d+ bytes\) on (?P<pod>\S+), ready in (?P<ready>[\d.]+) ms: predict (?P<predict>[\d.]+), "
    r"claim (?P<claim>[\d.]+), evict (?P<evict>[\d.]+), queue (?P<queue>[\d.]+), loadModel (?P<runtime>[\d.]+), "
    r"size (?P<size>[\d.]+)"
)
_RUNTIME = re.compile(
    r"loadModel (?P<id>\S+) done in (?P<total>[\d.]+) ms \(pull (?P<pull>[\d.]+) ms, load (?P<load>[\d.]+) ms\)"
)
STAGES = ("predict", "claim", "evict", "queue", "runtime", "size", "ready")


def parse_logs(cluster: LocalCluster) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    mesh: dict[str, dict[str, float]] = {}
    runtime: dict[str, float] = {}
    for pod in cluster.pods:
        text = Path(pod.log_path).read_text(errors="replace")
        for m in _MESH.finditer(text):
            mesh[m["id"]] = {k: float(m[k]) for k in STAGES}
        for m in _RUNTIME.finditer(text):
            runtime[m["id"]] = float(m["total"])
    return mesh, runtime


def run_scenario(name: str, args: argparse.Namespace, manifest: dict) -> dict[str, Any]:
    sk = [m for m in manifest["models"] if m["group"] == "many"][: args.models]
    pods = 1 if name == "local" else 2
    extra: list[str] = ["--default-model-size", "20000"]
    env = {}
    if name == "remote":  # every model may load only on pod-1; requests go to pod-0
        env = {"MM_TYPE_CONSTRAINTS": json.dumps({"_default": {"required": ["loader"]}})}
    cluster = LocalCluster(
        pods=pods,
        base_port=pick_base_port(0, pods),
        capacity=64 << 20,
        models_dir=MODELS_DIR,
        kv_root=f"/bench/miss-{name}-{int(time.time())}/",
        pod_args=extra,
        env=env,
        per_pod_args={1: ["--labels", "loader"]} if name == "remote" else None,
        runtime=args.runtime,
    )
    with cluster:
        ingress = MeshClient(cluster.addresses[0], timeout=60)
        for m in sk:
            ingress.register(m["id"], m["type"], m["path"])
        # warm both processes up (imports, first channels) on one extra model, excluded from the figures
        warm_id = sk[0]["id"]
        rows = []
        for m in sk:
            inp = m["input"]
            data = {inp["name"]: np.asarray(inp["data"], np.float32).reshape(inp["shape"])}
            t0 = time.perf_counter()
            ingress.infer(m["id"], data)
            ttfi = (time.perf_counter() - t0) * 1000
            t1 = time.perf_counter()
            ingress.infer(m["id"], data)
            warm = (time.perf_counter() - t1) * 1000
            rows.append({"id": m["id"], "ttfi_ms": ttfi, "warm_ms": warm})
        time.sleep(0.5)  # let the last log lines reach the files
        mesh, runtime = parse_logs(cluster)
    out = []
    for r in rows:
        if r["id"] == warm_id or r["id"] not in mesh or r["id"] not in runtime:
            continue
        r.update(mesh[r["id"]])
        r["runtime_pull_load_ms"] = runtime[r["id"]]
        r["overhead_ms"] = r["ttfi_ms"] - r["runtime_pull_load_ms"]
        r["overhead_minus_warm_ms"] = r["overhead_ms"] - r["warm_ms"]
        out.append(r)
    summary: dict[str, Any] = {"scenario": name, "runtime": args.runtime, "models": len(out)}
    for key in (
        "ttfi_ms",
        "runtime_pull_load_ms",
        "overhead_ms",
        "overhead_minus_warm_ms",
        "warm_ms",
        *STAGES,
    ):
        vals = [r[key] for r in out]
        summary[f"{key}_p50"] = round(statistics.median(vals), 2) if vals else None
        summary[f"{key}_p90"] = round(percentile(vals, 90), 2) if vals else None
    return {"summary": summary, "rows": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.miss", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=40, help="models per scenario (the first is a warm-up)")
    p.add_argument("--scenario", nargs="+", default=["local", "remote"], choices=["local", "remote"])
    p.add_argument("--runtime", default="builtin", choices=["builtin", "builtin-uds", "inprocess"])
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    manifest = ensure_samples(MODELS_DIR.resolve(), many=max(args.models, 10))
    results = [run_scenario(s, args, manifest) for s in args.scenario]
    cols = ["scenario", "runtime", "models", "ttfi_ms_p50", "runtime_pull_load_ms_p50", "overhead_ms_p50", "overhead_ms_p90",
            "warm_ms_p50", "overhead_minus_warm_ms_p50"]  # fmt: skip
    print(markdown_table([r["summary"] for r in results], cols))
    stage_cols = ["scenario", *[f"{s}_p50" for s in STAGES]]
    print()
    print(markdown_table([r["summary"] for r in results], stage_cols))
    if not args.no_write:
        path = write_results(
            "miss",
            {
                "command": "python -m loadtests.miss " + " ".join(argv or sys.argv[1:]),
                "machine": machine_info(),
                "results": results,
            },
        )
        print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
