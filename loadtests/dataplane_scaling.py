"""Data-plane scaling benchmark: one pod's throughput with N processes on its port (issue 9, "Many cores").

Owns the measurement of ``MM_DATAPLANE_PROCESSES``. For each N in ``--processes`` it starts a 1-pod LocalCluster
(built-in runtime, N data-plane processes), registers and loads one sklearn sample model, and drives ModelInfer
closed loop from ``--client-processes`` client processes, each with its share of ``--connections`` connections
(one grpc.aio channel per connection, with a local subchannel pool so each really is its own TCP connection:
one HTTP/2 connection lands on one process) and of ``--concurrency`` outstanding requests. The same client
load is first sent straight to a standalone built-in runtime process (the "direct" ceiling: every pod
configuration still calls one runtime process). It reports per scenario throughput, p50/p99, the CPU seconds
per request of each process (owner, workers, runtime) over the measured phase, how the requests spread over
the pod's processes (``modelmesh_dataplane_requests_total``), and the throughput ratio to N=1 next to the
goal (0.8·N). Markdown goes to stdout, JSON to ``loadtests/results/dataplane_scaling-<date>.json``. The
numbers depend on the machine (how many cores the client, the pod's processes and the runtime share); no
test asserts on them.

    python -m loadtests.dataplane_scaling [--processes 1 2] [--connections 8] [--concurrency 64]
                                          [--client-processes 1] [--seconds 10] [--warmup 2]
                                          [--method infer|ready]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shlex
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import psutil

from loadtests.common import (
    MODEL_INFER,
    cpu_seconds,
    machine_info,
    markdown_table,
    percentile,
    write_results,
)
from loadtests.hotpath import make_request, pick_sklearn_model, runtime_pid, standalone_runtime, wait_loaded
from mesh.client import MODEL_ID_HEADER, MeshClient
from mesh.devtools.cluster import LocalCluster, pick_base_port
from mesh.devtools.demo import DEFAULT_MODELS_DIR, ensure_samples, sample_entries
from protos.inference import grpc_predict_v2_pb2 as v2

CAPACITY = 256 * 1024 * 1024
MODEL_READY = "/inference.GRPCInferenceService/ModelReady"


# ----------------------------------------------------------------------------------------------- client side


async def _drive(
    target: str,
    method: str,
    payload: bytes,
    metadata,
    connections: int,
    concurrency: int,
    start: float,
    stop: float,
) -> dict[str, Any]:
    """``connections`` channels, ``concurrency`` loops spread over them; count what completes in [start, stop)."""
    options = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(connections)]
    calls = [ch.unary_unary(method, request_serializer=None, response_deserializer=None) for ch in channels]
    for call in calls:
        await call(payload, metadata=metadata, timeout=30)  # connect each one before the clock starts
    latencies: list[float] = []
    errors = [0]

    async def loop(call) -> None:
        while True:
            t0 = time.time()
            if t0 >= stop:
                return
            try:
                await call(payload, metadata=metadata, timeout=30)
            except grpc.aio.AioRpcError:
                if t0 >= start:
                    errors[0] += 1
                continue
            if t0 >= start:
                latencies.append(time.time() - t0)

    await asyncio.gather(*(loop(calls[i % len(calls)]) for i in range(concurrency)))
    for ch in channels:
        await ch.close()
    return {"latencies": latencies, "errors": errors[0]}


def _client_process(job: tuple) -> dict[str, Any]:
    return asyncio.run(_drive(*job))


def drive(
    target: str,
    method: str,
    payload: bytes,
    metadata,
    *,
    connections: int,
    concurrency: int,
    clients: int,
    seconds: float,
    warmup: float,
    cpu_pids: dict[str, int],
) -> dict[str, Any]:
    """Run the load from ``clients`` processes; CPU of ``cpu_pids`` is sampled over the measured phase."""
    ctx = multiprocessing.get_context("spawn")
    start = time.time() + warmup + 3.0  # time for the client processes to start and connect
    stop = start + seconds
    jobs = [
        (
            target,
            method,
            payload,
            tuple(metadata),
            max(1, connections // clients + (i < connections % clients)),
            max(1, concurrency // clients + (i < concurrency % clients)),
            start,
            stop,
        )
        for i in range(clients)
    ]
    with ctx.Pool(clients) as pool:
        pending = pool.map_async(_client_process, jobs)
        time.sleep(max(0.0, start - time.time()))
        before = cpu_seconds(cpu_pids)
        time.sleep(max(0.0, stop - time.time()))
        after = cpu_seconds(cpu_pids)
        results = pending.get(timeout=seconds + warmup + 120)
    latencies = [x for r in results for x in r["latencies"]]
    return {
        "requests": len(latencies),
        "errors": sum(r["errors"] for r in results),
        "seconds": seconds,
        "latencies": latencies,
        "cpu_s": {k: after[k] - before[k] for k in before},
    }


# ----------------------------------------------------------------------------------------------- pod side


def worker_pids(pod_pid: int) -> list[int]:
    out = []
    for child in psutil.Process(pod_pid).children(recursive=True):
        try:
            if "mesh.dataplane.worker" in " ".join(child.cmdline()):
                out.append(child.pid)
        except psutil.Error:
            continue
    return sorted(out)


def per_process_requests(metrics_port: int) -> dict[str, float]:
    """Inference requests received per process of the pod (one process: the owner's request count), and
    ``passed-on``: those a worker passed to the owner instead of serving them itself."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    total = 0.0
    for line in text.splitlines():
        if line.startswith("modelmesh_dataplane_requests_total{"):
            process = line.split('process="', 1)[1].split('"', 1)[0]
            out[process] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("modelmesh_api_request_milliseconds_count{"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith('modelmesh_requests_routed_total{route="worker-relay"}'):
            out["passed-on"] = float(line.rsplit(" ", 1)[1])
    return out if "owner" in out else {"owner": total}


def row(name: str, result: dict[str, Any], **extra: Any) -> dict[str, Any]:
    n = result["requests"]
    out = {
        "scenario": name,
        "requests": n,
        "errors": result["errors"],
        "throughput_rps": round(n / result["seconds"], 1),
        "p50_ms": round(percentile(result["latencies"], 50) * 1e3, 3),
        "p99_ms": round(percentile(result["latencies"], 99) * 1e3, 3),
    }
    for proc, cpu in result["cpu_s"].items():
        out[f"{proc}_cpu_us_per_req"] = round(cpu / n * 1e6, 1) if n else None
    pod_cpu = [cpu for proc, cpu in result["cpu_s"].items() if proc != "runtime"]
    out["pod_cpu_us_per_req"] = round(sum(pod_cpu) / n * 1e6, 1) if n and pod_cpu else None
    out.update(extra)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.dataplane_scaling", description=__doc__.splitlines()[0]
    )
    p.add_argument(
        "--processes", type=int, nargs="+", default=[1, 2], help="values of MM_DATAPLANE_PROCESSES"
    )
    p.add_argument("--connections", type=int, default=8, help="client connections in all")
    p.add_argument("--concurrency", type=int, default=64, help="outstanding requests in all")
    p.add_argument("--client-processes", type=int, default=1, help="processes the load is sent from")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per scenario")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per scenario (discarded)")
    p.add_argument(
        "--payload-bytes", type=int, default=16, help="request tensor size (default: one iris row)"
    )
    p.add_argument(
        "--method",
        choices=["infer", "ready"],
        default="infer",
        help="ModelInfer (the runtime predicts) or ModelReady (the same path through the pod, a cheap runtime call)",
    )
    p.add_argument("--no-direct", action="store_true", help="skip the direct-to-runtime ceiling")
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    p.add_argument("--no-write", action="store_true", help="do not write the JSON result file")
    args = p.parse_args(argv)

    models_dir = Path(args.models_dir).resolve()
    model = pick_sklearn_model(sample_entries(ensure_samples(models_dir)))
    if args.method == "ready":
        method, payload = MODEL_READY, v2.ModelReadyRequest(name=model["id"]).SerializeToString()
    else:
        method, payload = MODEL_INFER, make_request(model, args.payload_bytes)
    md = ((MODEL_ID_HEADER, model["id"]),)
    load = {
        "connections": args.connections,
        "concurrency": args.concurrency,
        "clients": args.client_processes,
        "seconds": args.seconds,
        "warmup": args.warmup,
    }
    load_before = psutil.getloadavg()
    rows: list[dict[str, Any]] = []
    if not args.no_direct:
        proc, direct = standalone_runtime(models_dir, model, CAPACITY)
        try:
            print("  direct …", file=sys.stderr, flush=True)
            r = drive(direct, method, payload, md, cpu_pids={"runtime": proc.pid}, **load)
            rows.append(row("direct", r, processes=0))
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    for n in args.processes:
        with LocalCluster(
            pods=1,
            base_port=pick_base_port(0, 1),
            capacity=CAPACITY,
            models_dir=models_dir,
            dataplane_processes=n,
        ) as cluster:
            pod = cluster.pods[0]
            with MeshClient(pod.address) as client:
                client.register(model["id"], model["type"], model["path"], load_now=True, sync=True)
                wait_loaded(client, model["id"])
            pids = {"owner": pod.pid}
            for i, pid in enumerate(worker_pids(pod.pid), 1):
                pids[f"worker{i}"] = pid
            rt = runtime_pid(pod.pid)
            if rt:
                pids["runtime"] = rt
            print(f"  N={n} …", file=sys.stderr, flush=True)
            before = per_process_requests(pod.metrics_port)
            r = drive(pod.address, method, payload, md, cpu_pids=pids, **load)
            time.sleep(0.5)  # the workers' last reports (every 100 ms)
            after = per_process_requests(pod.metrics_port)  # spread over the whole run, warm-up included
            spread = {k: int(after.get(k, 0) - before.get(k, 0)) for k in after}
            rows.append(row(f"pod N={n}", r, processes=n, spread=spread))

    base = next((x for x in rows if x.get("processes") == 1), None)
    summary = []
    for x in rows:
        if not x.get("processes"):
            continue
        ratio = (
            round(x["throughput_rps"] / base["throughput_rps"], 3)
            if base and base["throughput_rps"]
            else None
        )
        summary.append(
            {
                "processes": x["processes"],
                "throughput_rps": x["throughput_rps"],
                "ratio_to_N1": ratio,
                "goal": round(0.8 * x["processes"], 2),
                "spread": x.get("spread"),
            }
        )
    cols = ["scenario", "requests", "errors", "throughput_rps", "p50_ms", "p99_ms", "pod_cpu_us_per_req",
            "runtime_cpu_us_per_req"]  # fmt: skip
    print(
        f"### Data-plane processes: one pod, {args.connections} connections, concurrency {args.concurrency}, "
        f"{args.client_processes} client process(es), {method.rsplit('/', 1)[1]}, {len(payload)}-byte requests\n"
    )
    print(markdown_table(rows, cols))
    print()
    print(markdown_table(summary, ["processes", "throughput_rps", "ratio_to_N1", "goal", "spread"]))
    command = "python -m loadtests.dataplane_scaling " + shlex.join(
        argv if argv is not None else sys.argv[1:]
    )
    result = {
        "benchmark": "dataplane_scaling",
        "command": command.strip(),
        "model": {"id": model["id"], "type": model["type"], "payload_bytes": len(payload)},
        "method": method,
        "settings": {**load, "processes": args.processes},
        "machine": machine_info(),
        "load_average_before": load_before,
        "note": "client processes, the pod's processes and the runtime share this machine's CPUs",
        "scenarios": rows,
        "summary": summary,
    }
    print(f"\nload average before: {load_before}")
    if not args.no_write:
        path = write_results("dataplane_scaling", result)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
