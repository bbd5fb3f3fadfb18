"""REST vs gRPC through one pod: the same ModelInfer, as KServe V2 JSON on the pod's REST port and as protobuf on
its gRPC port, closed loop at each concurrency; throughput, latency and the mesh process's CPU per request.

Starts a 1-pod LocalCluster, registers and loads ``sklearn-iris-lr``, then drives (a) gRPC ModelInfer with a
pre-serialised request (``loadtests.common.closed_loop``) and (b) ``POST /v2/models/<id>/infer`` with a
pre-built JSON body over keep-alive HTTP/1.1 (the raw client of ``loadtests.http_servers``: no client library in
the loop). The REST figure includes the JSON ↔ protobuf conversion in the pod. Markdown to stdout, JSON to
``loadtests/results/rest_vs_grpc-<date>.json``.

    python -m loadtests.rest_vs_grpc [--seconds 8] [--warmup 1] [--concurrency 1 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from loadtests.common import (
    HttpKeepAlive,
    closed_loop,
    cpu_seconds,
    machine_info,
    markdown_table,
    percentile,
    summarize,
    write_results,
)
from loadtests.hotpath import pick_sklearn_model, runtime_pid, wait_loaded
from mesh.client import MODEL_ID_HEADER, MeshClient, build_infer_request
from mesh.devtools.cluster import LocalCluster, pick_base_port
from mesh.devtools.demo import DEFAULT_MODELS_DIR, ensure_samples, sample_entries


async def _rest_worker(
    port: int, request: bytes, stop_at: float, lat: list[float], errors: list[int]
) -> None:
    conn = await HttpKeepAlive.open(port)
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            if await conn.exchange(request) != 200:
                errors[0] += 1
                continue
            lat.append(time.perf_counter() - t0)
    finally:
        conn.close()


async def rest_closed_loop(port: int, request: bytes, concurrency: int, seconds: float, warmup: float,
                           pids: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    scratch: list[float] = []
    errors = [0]
    await asyncio.gather(*(_rest_worker(port, request, time.perf_counter() + warmup, scratch, errors)
                           for _ in range(concurrency)))  # fmt: skip
    lat: list[float] = []
    errors = [0]
    before = cpu_seconds(pids)
    t0 = time.perf_counter()
    await asyncio.gather(
        *(_rest_worker(port, request, t0 + seconds, lat, errors) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - t0
    after = cpu_seconds(pids)
    row = {
        "requests": len(lat),
        "errors": errors[0],
        "seconds": round(elapsed, 3),
        "throughput_rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(percentile(lat, 50) * 1e3, 3),
        "p99_ms": round(percentile(lat, 99) * 1e3, 3),
    }
    for name in pids:
        row[f"{name}_cpu_us_per_req"] = (
            round((after[name] - before[name]) / len(lat) * 1e6, 1) if lat else None
        )
    return row


async def run(grpc_target: str, rest_port: int, payload: bytes, rest_request: bytes, model_id: str,
              pids: dict[str, int], args: argparse.Namespace) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for conc in args.concurrency:
        print(f"  grpc c={conc} …", file=sys.stderr, flush=True)
        r = await closed_loop(grpc_target, payload, metadata=[(MODEL_ID_HEADER, model_id)], concurrency=conc,
                              seconds=args.seconds, warmup=args.warmup, cpu_pids=pids)  # fmt: skip
        rows.append(summarize(f"grpc-c{conc}", r, transport="grpc", concurrency=conc))
        print(f"  rest c={conc} …", file=sys.stderr, flush=True)
        row = await rest_closed_loop(rest_port, rest_request, conc, args.seconds, args.warmup, pids)
        rows.append({"scenario": f"rest-c{conc}", **row, "transport": "rest", "concurrency": conc})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.rest_vs_grpc", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)

    models_dir = Path(args.models_dir).resolve()
    model = pick_sklearn_model(sample_entries(ensure_samples(models_dir)))
    row = model["row"]
    request = build_infer_request(model["id"], {model["input_name"]: [row]}, raw=True, datatype="FP32",
                                  input_name=model["input_name"])  # fmt: skip
    payload = request.SerializeToString()
    body = json.dumps({"inputs": [{"name": model["input_name"], "shape": [1, len(row)], "datatype": "FP32",
                                   "data": list(row)}]}).encode()  # fmt: skip
    rest_request = (
        f"POST /v2/models/{model['id']}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    base = pick_base_port(0, 1)
    with LocalCluster(pods=1, base_port=base, capacity=256 * 1024 * 1024, models_dir=models_dir) as cluster:
        pod = cluster.pods[0]
        with MeshClient(pod.address) as client:
            client.register(model["id"], model["type"], model["path"], load_now=True, sync=True)
            wait_loaded(client, model["id"])
        pids = {"mesh": pod.pid}
        rt = runtime_pid(pod.pid)
        if rt:
            pids["runtime"] = rt
        rows = asyncio.run(run(pod.address, pod.rest_port, payload, rest_request, model["id"], pids, args))
    cols = ["scenario", "requests", "errors", "throughput_rps", "p50_ms", "p99_ms", "mesh_cpu_us_per_req",
            "runtime_cpu_us_per_req"]  # fmt: skip
    print("### REST (V2 JSON) vs gRPC through one pod\n")
    print(markdown_table(rows, cols))
    command = "python -m loadtests.rest_vs_grpc " + shlex.join(argv if argv is not None else sys.argv[1:])
    if not args.no_write:
        path = write_results("rest_vs_grpc", {"benchmark": "rest_vs_grpc", "command": command.strip(),
                                              "model": model["id"], "json_body_bytes": len(body),
                                              "grpc_payload_bytes": len(payload), "machine": machine_info(),
                                              "rows": rows})  # fmt: skip
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
