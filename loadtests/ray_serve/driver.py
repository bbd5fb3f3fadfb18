"""Peer comparison: the mesh vs Ray Serve model multiplexing, same Zipf workload with LRU churn, one run.

Owns the "Tail under churn" comparison of issue 9. For each scale n in ``--scale`` (default 1 and 2) it runs:

- **mesh**: a fresh LocalCluster of n pods (etcd + built-in runtimes), the ``--many`` sample models registered
  (not loaded), runtime capacity ``--models-per-pod`` x 16 KiB per pod. These ~600-byte Ridge pickles are
  charged at the built-in runtime's 16 KiB floor (``runtime_adapters.sizing.MIN_MODEL_BYTES``) unless a load's
  RSS delta is larger, so 50 x 16 KiB = 800 KiB holds 50 of them (the per-pod ``models_held`` at the end shows
  what actually fit). The load and its classification are ``loadtests.cluster_zipf``'s (``measure``): round
  robin over the pods, header ``mm-model-id``.
- **ray**: right after the mesh run of that scale, a private Ray instance (``control.RayHost``, stopped
  before the next scale, so only one system runs at a time and the two runs a ratio compares are minutes
  apart), and per ``--max-ongoing`` value a fresh Serve application of n replicas with
  ``@serve.multiplexed(max_num_models_per_replica=--models-per-pod)`` (``app.py``), reached through Ray's gRPC
  proxy with metadata ``multiplexed_model_id`` (+ ``application``).

Both get the same pre-serialised ModelInfer bytes per model, the same seeded Zipf sequence, the same
closed-loop concurrency, warm-up and measured seconds (``cluster_zipf.Driver``), and every
``--verify-every``-th response of both is checked against the manifest's expected output. Ray's
``max_ongoing_requests`` is swept over ``--max-ongoing``; per scale the Ray setting with the lowest p99 is the
one the ratios use (all are reported). Miss share: mesh = requests that found no LOADED copy anywhere
(cluster_zipf's client-side classification, cold + joined); Ray = requests whose replica ran the loader for
them (the deployment says so in trailing metadata). CPU is the psutil user+system delta over the measured phase
of every process of each system (mesh: pods, runtimes, etcd; Ray: its whole session), client excluded.

Prints the comparison table and writes ``loadtests/results/peer_ray-<date>.json`` (command, settings, machine,
versions of both systems, every scenario in detail). Exit status 1 when any request failed or a pod died.
Numbers depend on the machine; no test asserts on them.

    python -m loadtests.ray_serve [--scale 1 2] [--max-ongoing 32] [--seconds 30] [--warmup 5]
        [--concurrency 16] [--many 200] [--models-per-pod 50] [--systems mesh ray]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import psutil

from loadtests import cluster_zipf as cz
from loadtests.common import MODEL_INFER, machine_info, markdown_table, percentile, write_results
from loadtests.ray_serve import APP_NAME, LOAD_MS_KEY, MODEL_ID_METADATA, REPLICA_KEY
from loadtests.ray_serve.control import RayHost
from mesh.devtools.cluster import (
    REPO_ROOT,
    LocalCluster,
    disable_grpc_fork_handlers,
    free_port,
    pick_base_port,
)
from mesh.devtools.demo import ensure_samples
from runtime_adapters.sizing import MIN_MODEL_BYTES

DEFAULT_RAY_VENV = REPO_ROOT / ".venv-ray"
DEFAULT_DATA_ROOT = REPO_ROOT / "var" / "peer-ray"
GOAL_P99_RATIO = 0.5
GOAL_THROUGHPUT_RATIO = 2.0


# ---------------------------------------------------------------------------------------------- the Ray load


class RayMisses:
    """Classifies Ray requests: ``miss`` when the replica ran the loader for this request (the deployment
    returns ``x-load-ms`` in trailing metadata), else ``hit``; keeps the load times and loads per replica."""

    def __init__(self) -> None:
        self.load_ms: list[float] = []
        self.by_replica: Counter[str] = Counter()

    def reset(self) -> None:
        self.load_ms = []
        self.by_replica = Counter()

    def classify(self, model_id: str, ingress: str) -> str:
        return "hit"

    def after(self, klass: str, trailers: Any) -> str:
        load_ms = None
        replica = ""
        for key, value in trailers or ():
            if key == LOAD_MS_KEY:
                load_ms = float(value)
            elif key == REPLICA_KEY:
                replica = str(value)
        if load_ms is None:
            return klass
        self.load_ms.append(load_ms)
        self.by_replica[replica] += 1
        return "miss"


async def wait_routable(address: str, timeout: float = 60.0) -> float:
    """Until Ray's proxy routes to the new application: an unknown model id answers NOT_FOUND from the
    deployment itself (not the proxy's "application not found"). Returns the seconds waited."""
    t0 = time.perf_counter()
    async with grpc.aio.insecure_channel(address) as ch:
        call = ch.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        last = ""
        while time.perf_counter() - t0 < timeout:
            try:
                await call(
                    b"", metadata=(("application", APP_NAME), (MODEL_ID_METADATA, "-ping-")), timeout=5
                )
            except grpc.aio.AioRpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
                if exc.code() == grpc.StatusCode.NOT_FOUND and "not known to this deployment" in (
                    exc.details() or ""
                ):
                    return time.perf_counter() - t0
            await asyncio.sleep(0.2)
    raise RuntimeError(
        f"Ray's proxy did not route to application {APP_NAME!r} within {timeout:.0f}s ({last})"
    )


def session_cpu(host: RayHost) -> dict[str, float]:
    out: dict[str, float] = {}
    for p in host.session_processes():
        try:
            t = p.cpu_times()
            name = p.name()
        except psutil.Error:
            continue
        out[f"{name}:{p.pid}"] = t.user + t.system
    return out


async def measure_ray(host: RayHost, models: list[cz.ModelSpec], ns: argparse.Namespace) -> dict[str, Any]:
    routable_s = await wait_routable(host.address)
    sampler = cz.ZipfSampler(len(models), ns.zipf_s, ns.seed)
    misses = RayMisses()
    driver = cz.Driver(
        [host.address],
        ["ray"],
        models,
        sampler,
        misses,
        timeout=ns.timeout,
        verify_every=ns.verify_every,
        header=MODEL_ID_METADATA,
        extra_metadata=(("application", APP_NAME),),
        after=misses.after,
    )
    await driver.open()
    try:
        warm = None
        if ns.warmup > 0:
            print(f"  warm-up {ns.warmup:g}s …", file=sys.stderr, flush=True)
            warm, _ = await driver.run(ns.warmup, ns.concurrency)
        warm_loads = len(misses.load_ms)
        misses.reset()
        client0 = cz.cpu_seconds({"client": os.getpid()})
        cpu0 = session_cpu(host)
        print(f"  measuring {ns.seconds:g}s …", file=sys.stderr, flush=True)
        tally, elapsed = await driver.run(ns.seconds, ns.concurrency)
        cpu1 = session_cpu(host)
        client1 = cz.cpu_seconds({"client": os.getpid()})
    finally:
        await driver.close()
    cpu = {k: round(cpu1[k] - cpu0.get(k, 0.0), 2) for k in cpu1}
    return {
        "tally": tally,
        "warm": warm,
        "warm_loads": warm_loads,
        "elapsed": elapsed,
        "routable_wait_s": round(routable_s, 2),
        "load_ms": list(misses.load_ms),
        "loads_by_replica": dict(misses.by_replica),
        "cpu_s": cpu,
        "client_cpu_s": round(client1["client"] - client0["client"], 2),
    }


# ---------------------------------------------------------------------------------------------- rows


def latency_row(tally: cz.Tally, elapsed: float) -> dict[str, Any]:
    ok = sum(len(v) for v in tally.latencies.values())
    all_lat = [x for v in tally.latencies.values() for x in v]
    miss = [x for k, v in tally.latencies.items() if k.startswith("miss") for x in v]
    return {
        "requests_ok": ok,
        "errors": sum(tally.errors.values()),
        "seconds": round(elapsed, 2),
        "throughput_rps": round(ok / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(percentile(all_lat, 50) * 1e3, 2),
        "p90_ms": round(percentile(all_lat, 90) * 1e3, 2),
        "p99_ms": round(percentile(all_lat, 99) * 1e3, 2),
        "miss_share": round(len(miss) / ok, 4) if ok else 0.0,
        "miss_p50_ms": round(percentile(miss, 50) * 1e3, 2),
        "miss_p99_ms": round(percentile(miss, 99) * 1e3, 2),
        "verified": tally.verified,
    }


def mesh_row(scale: int, raw: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    row = {"system": "mesh", "scale": scale, "setting": f"{scale} pod(s)"}
    row.update(latency_row(raw["tally"], raw["elapsed"]))
    s = report["summary"]
    row["loads"] = s["loads"]
    row["mean_load_ms"] = s["mean_load_ms"]
    system_cpu = sum(v for k, v in raw["cpu_s"].items() if k != "client")
    row["cpu_ms_per_req"] = round(system_cpu / row["requests_ok"] * 1e3, 3) if row["requests_ok"] else None
    row["client_cpu_s"] = raw["cpu_s"].get("client")
    row["models_held_end"] = [p["models_held"] for p in report["per_pod"]]
    return row


def ray_row(scale: int, max_ongoing: int, raw: dict[str, Any]) -> dict[str, Any]:
    row = {
        "system": "ray",
        "scale": scale,
        "setting": f"{scale} replica(s), max_ongoing_requests={max_ongoing}",
    }
    row["max_ongoing"] = max_ongoing
    row.update(latency_row(raw["tally"], raw["elapsed"]))
    loads = raw["load_ms"]
    row["loads"] = len(loads)
    row["mean_load_ms"] = round(sum(loads) / len(loads), 2) if loads else None
    system_cpu = sum(raw["cpu_s"].values())
    row["cpu_ms_per_req"] = round(system_cpu / row["requests_ok"] * 1e3, 3) if row["requests_ok"] else None
    row["client_cpu_s"] = raw["client_cpu_s"]
    return row


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scale: mesh against the Ray setting with the lowest p99 (error-free settings first)."""
    out = []
    for scale in sorted({r["scale"] for r in rows}):
        mesh = next((r for r in rows if r["system"] == "mesh" and r["scale"] == scale), None)
        rays = [r for r in rows if r["system"] == "ray" and r["scale"] == scale]
        if mesh is None or not rays:
            continue
        best = min(rays, key=lambda r: (r["errors"] > 0, r["p99_ms"]))
        p99 = mesh["p99_ms"] / best["p99_ms"] if best["p99_ms"] else None
        thr = mesh["throughput_rps"] / best["throughput_rps"] if best["throughput_rps"] else None
        out.append(
            {
                "scale": scale,
                "ray_setting": best["setting"],
                "mesh_p99_ms": mesh["p99_ms"],
                "ray_p99_ms": best["p99_ms"],
                "p99_mesh_over_ray": round(p99, 3) if p99 is not None else None,
                "mesh_rps": mesh["throughput_rps"],
                "ray_rps": best["throughput_rps"],
                "throughput_mesh_over_ray": round(thr, 3) if thr is not None else None,
                "p99_goal_met": p99 is not None and p99 <= GOAL_P99_RATIO,
                "throughput_goal_met": thr is not None and thr >= GOAL_THROUGHPUT_RATIO,
            }
        )
    return out


# ---------------------------------------------------------------------------------------------- runs


def run_mesh(
    scale: int, models: list[cz.ModelSpec], ns: argparse.Namespace, data_dir: Path
) -> dict[str, Any]:
    capacity = ns.models_per_pod * MIN_MODEL_BYTES
    print(f"mesh: {scale} pod(s), capacity {capacity} B/pod …", file=sys.stderr, flush=True)
    cluster = LocalCluster(
        pods=scale,
        base_port=pick_base_port(0, scale),
        capacity=capacity,
        models_dir=Path(ns.models_dir).resolve(),
        data_dir=data_dir / f"mesh-{scale}",
    )
    with cluster:
        register_s = cz.register_models(cluster, models)
        raw = asyncio.run(cz.measure(cluster, models, ns))
        dead = [p.instance_id for p in cluster.dead_pods()]
        report = cz.build_report(raw, cluster, ns)
        logs = {p.instance_id: cz.log_findings(p.log_path) for p in cluster.pods}
    row = mesh_row(scale, raw, report)
    row["dead_pods"] = dead
    return {
        "row": row,
        "capacity_bytes": capacity,
        "register_seconds": round(register_s, 2),
        "classes": report["classes"],
        "per_pod": report["per_pod"],
        "summary": report["summary"],
        "errors_by_code": report["errors_by_code"],
        "error_examples": report["error_examples"],
        "cpu_s": raw["cpu_s"],
        "pod_logs": logs,
        "dead_pods": dead,
    }


def run_ray(
    scale: int, models: list[cz.ModelSpec], files: dict[str, str], ns: argparse.Namespace, data_dir: Path
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every ``--max-ongoing`` setting at one scale, on a Ray instance of its own (started here, stopped
    before returning, so it costs the mesh's scenarios nothing while they run)."""
    temp_dir = (
        Path(ns.ray_temp_dir).resolve() if ns.ray_temp_dir else REPO_ROOT / "var" / f"ray-{os.getpid()}"
    )
    host = RayHost(
        Path(ns.ray_venv).resolve() / "bin" / "python",
        REPO_ROOT,
        temp_dir,
        grpc_port=free_port(),
        http_port=free_port(),
        log_path=data_dir / f"ray-host-{scale}.log",
    )
    print(f"ray: starting a private Ray instance (temp dir {temp_dir}) …", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    scenarios: list[dict[str, Any]] = []
    info: dict[str, Any] = {"scale": scale, "temp_dir": str(temp_dir), "log": str(host.log_path)}
    try:
        host.start()
        info["start_seconds"] = round(time.perf_counter() - t0, 1)
        info["versions"] = host.versions
        for max_ongoing in ns.max_ongoing:
            print(
                f"ray: {scale} replica(s), max_ongoing_requests={max_ongoing} …",
                file=sys.stderr,
                flush=True,
            )
            deploy_s = host.deploy(
                files, replicas=scale, max_models=ns.models_per_pod, max_ongoing=max_ongoing
            )
            raw = asyncio.run(measure_ray(host, models, ns))
            row = ray_row(scale, max_ongoing, raw)
            t: cz.Tally = raw["tally"]
            scenarios.append(
                {
                    "row": row,
                    "deploy_seconds": deploy_s,
                    "routable_wait_s": raw["routable_wait_s"],
                    "warmup_loads": raw["warm_loads"],
                    "loads_by_replica": raw["loads_by_replica"],
                    "classes": [
                        cz.lat_row(c, t.latencies.get(c, []), row["requests_ok"], raw["elapsed"])
                        for c in ("hit", "miss")
                    ],
                    "errors_by_code": dict(t.errors),
                    "error_examples": t.error_examples,
                    "cpu_s": raw["cpu_s"],
                }
            )
    finally:
        killed = host.stop()
        info["killed_at_stop"] = killed
        info["total_seconds"] = round(time.perf_counter() - t0, 1)
    return scenarios, info


# ---------------------------------------------------------------------------------------------- main

COLUMNS = [
    "system",
    "setting",
    "requests_ok",
    "errors",
    "throughput_rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "miss_share",
    "miss_p99_ms",
    "loads",
    "mean_load_ms",
    "cpu_ms_per_req",
]
RATIO_COLUMNS = [
    "scale",
    "ray_setting",
    "mesh_p99_ms",
    "ray_p99_ms",
    "p99_mesh_over_ray",
    "mesh_rps",
    "ray_rps",
    "throughput_mesh_over_ray",
    "p99_goal_met",
    "throughput_goal_met",
]


def mesh_versions() -> dict[str, str]:
    import google.protobuf
    import joblib
    import numpy
    import sklearn

    return {
        "python": sys.version.split()[0],
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": numpy.__version__,
        "joblib": joblib.__version__,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.ray_serve",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--scale", type=int, nargs="+", default=[1, 2], help="pods (mesh) = replicas (Ray) per scenario"
    )
    p.add_argument("--systems", nargs="+", choices=["mesh", "ray"], default=["mesh", "ray"])
    p.add_argument("--many", type=int, default=200, help="number of models (samples --many)")
    p.add_argument(
        "--models-per-pod",
        type=int,
        default=50,
        help="models per pod/replica: mesh capacity = N x 16 KiB, Ray max_num_models_per_replica = N",
    )
    p.add_argument(
        "--max-ongoing",
        type=int,
        nargs="+",
        default=[32],
        help="Ray max_ongoing_requests values to run (a sweep: the lowest p99 per scale is compared)",
    )
    p.add_argument(
        "--concurrency", type=int, default=16, help="closed-loop clients, one request in flight each"
    )
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per scenario")
    p.add_argument("--warmup", type=float, default=5.0, help="warm-up seconds per scenario (not measured)")
    p.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent of model popularity")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30.0, help="per-request deadline, seconds")
    p.add_argument(
        "--verify-every", type=int, default=10, help="check every N-th response's output (0: never)"
    )
    p.add_argument("--models-dir", default=str(cz.DEFAULT_MODELS_DIR))
    p.add_argument(
        "--data-dir", default=None, help="pod logs and the Ray host log (None: var/peer-ray/<date>)"
    )
    p.add_argument("--ray-venv", default=str(DEFAULT_RAY_VENV), help="venv made by scripts/ray_venv.sh")
    p.add_argument("--ray-temp-dir", default=None, help="Ray's temp dir, short (None: var/ray-<pid>)")
    p.add_argument("--no-write", action="store_true", help="do not write the JSON result file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    disable_grpc_fork_handlers()
    if "ray" in ns.systems and not (Path(ns.ray_venv) / "bin" / "python").exists():
        print(
            f"error: no Ray venv at {ns.ray_venv}: run `make ray-venv` (scripts/ray_venv.sh)", file=sys.stderr
        )
        return 2
    started = dt.datetime.now(dt.UTC)
    t_start = time.perf_counter()
    loadavg_start = [round(x, 2) for x in os.getloadavg()]
    models_dir = Path(ns.models_dir).resolve()
    models = cz.load_models(models_dir, ns.many)
    manifest = ensure_samples(models_dir, many=ns.many)
    by_id = {m["id"]: m for m in manifest.get("models", [])}
    files = {m.id: str(models_dir / by_id[m.id]["file"]) for m in models}
    data_dir = Path(ns.data_dir or DEFAULT_DATA_ROOT / started.strftime("%Y%m%d-%H%M%S")).resolve()

    # Scale by scale, mesh then Ray: the two runs compared in a ratio are minutes apart at most, so a
    # change in what else the machine runs hits both about alike; only one system runs at a time.
    mesh_runs: list[dict[str, Any]] = []
    ray_runs: list[dict[str, Any]] = []
    ray_instances: list[dict[str, Any]] = []
    for scale in ns.scale:
        if "mesh" in ns.systems:
            mesh_runs.append({"scale": scale, **run_mesh(scale, models, ns, data_dir)})
        if "ray" in ns.systems:
            scenarios, info = run_ray(scale, models, files, ns, data_dir)
            ray_runs += scenarios
            ray_instances.append(info)
    rows = [r["row"] for r in mesh_runs] + [r["row"] for r in ray_runs]
    rows.sort(key=lambda r: (r["scale"], r["system"] != "mesh", r.get("max_ongoing", 0)))
    ratio_rows = ratios(rows)
    loadavg_end = [round(x, 2) for x in os.getloadavg()]
    total_s = time.perf_counter() - t_start

    print("\n### Peer comparison: mesh vs Ray Serve model multiplexing\n")
    print(
        f"{ns.many} models, {ns.models_per_pod} per pod/replica (mesh capacity {ns.models_per_pod * MIN_MODEL_BYTES} "
        f"B), concurrency {ns.concurrency}, {ns.seconds:g} s measured after {ns.warmup:g} s warm-up, Zipf "
        f"s={ns.zipf_s} seed {ns.seed}; load average start {loadavg_start}, end {loadavg_end}; "
        f"run took {total_s:.0f} s\n"
    )
    print(markdown_table(rows, COLUMNS))
    print()
    if ratio_rows:
        print(markdown_table(ratio_rows, RATIO_COLUMNS))
        print()
    print(
        "miss_share: mesh = no LOADED copy anywhere when sent (cluster_zipf classification); ray = the replica "
        "ran the loader for this request. mean_load_ms as each system times it (mesh: "
        "modelmesh_loadmodel_seconds; ray: joblib.load in the replica). cpu_ms_per_req: CPU of every process of "
        "the system (not the client) over the measured phase, per request."
    )
    errors = sum(r["errors"] for r in rows)
    dead = [d for r in mesh_runs for d in r["dead_pods"]]
    if errors:
        print(f"\nERRORS: {errors} failed requests")
        for r in mesh_runs + ray_runs:
            if r["errors_by_code"]:
                print(
                    f"  {r['row']['setting']} ({r['row']['system']}): {r['errors_by_code']} {r['error_examples']}"
                )
    if dead:
        print(f"\nDEAD PODS: {dead}")
    killed = [k for info in ray_instances for k in info.get("killed_at_stop", [])]
    if killed:
        print(f"\nRay processes that had to be killed at stop: {killed}")

    command = "python -m loadtests.ray_serve " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {
        "benchmark": "peer_ray",
        "command": command.strip(),
        "date": started.isoformat(timespec="seconds"),
        "total_seconds": round(total_s, 1),
        "settings": {k: v for k, v in vars(ns).items() if k not in ("no_write",)},
        "mesh_capacity_bytes_per_pod": ns.models_per_pod * MIN_MODEL_BYTES,
        "machine": {**machine_info(), "loadavg_start": loadavg_start, "loadavg_end": loadavg_end},
        "code": cz.code_version(),
        "versions": {
            "mesh": mesh_versions(),
            "ray": next((i["versions"] for i in ray_instances if "versions" in i), {}),
        },
        "note": "client, mesh pods, runtimes, etcd and Ray share this machine's CPUs; systems run one after the other",
        "rows": rows,
        "ratios": ratio_rows,
        "mesh": mesh_runs,
        "ray": {"instances": ray_instances, "scenarios": ray_runs},
    }
    if not ns.no_write:
        path = write_results("peer_ray", json.loads(json.dumps(result, default=str)))
        print(f"\nwrote {path}")
    return 1 if errors or dead else 0
