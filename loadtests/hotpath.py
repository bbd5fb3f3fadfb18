"""Hot-path benchmark: the same ModelInfer routed through the mesh vs sent straight to the runtime.

Owns the first data-plane benchmark (issue "One mesh pod, end to end"). It starts a 1-pod LocalCluster,
registers and loads one sklearn sample model, then sends one pre-serialised ModelInferRequest (a small FP32
iris row in ``raw_input_contents``, header ``mm-model-id``) (a) to the pod's external port and (b) straight to
that pod's runtime port, each at concurrency 1 and 32 with a closed-loop grpc.aio client. It reports per
scenario throughput and p50/p99, then the routed/direct throughput ratio, the added p50/p99, and the mesh
process's CPU µs per request (the runtime's too, for scale). Markdown goes to stdout, JSON to
``loadtests/results/hotpath-<date>.json``. Numbers depend on the machine; no test asserts on them.

    python -m loadtests.hotpath [--seconds 8] [--warmup 1] [--concurrency 1 32]
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from loadtests.common import closed_loop, machine_info, markdown_table, summarize, write_results
from mesh.client import MODEL_ID_HEADER, MeshClient, build_infer_request
from mesh.devtools.cluster import LocalCluster, pick_base_port
from mesh.devtools.demo import DEFAULT_MODELS_DIR, ensure_samples, sample_entries


def pick_sklearn_model(models: list[dict[str, Any]]) -> dict[str, Any]:
    sk = [m for m in models if m["type"].lower().startswith("sklearn")]
    if not sk:
        raise SystemExit("no sklearn sample model in the manifest")
    iris = [m for m in sk if "iris" in m["id"].lower()]
    return (iris or sk)[0]


def runtime_pid(pod_pid: int) -> int | None:
    for child in psutil.Process(pod_pid).children(recursive=True):
        try:
            if "runtime_adapters" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


def wait_loaded(client: MeshClient, model_id: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        st = client.status(model_id)
        if st["status"] == "LOADED":
            return
        if st["status"] == "LOADING_FAILED" or time.monotonic() > deadline:
            raise SystemExit(f"model {model_id} did not load: {st}")
        time.sleep(0.2)


async def run_scenarios(
    routed: str, direct: str, payload: bytes, model_id: str, pids: dict[str, int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    md = [(MODEL_ID_HEADER, model_id)]
    rows = []
    for conc in args.concurrency:
        for name, target in (("routed", routed), ("direct", direct)):
            print(f"  {name} c={conc} …", file=sys.stderr, flush=True)
            r = await closed_loop(
                target,
                payload,
                metadata=md,
                concurrency=conc,
                seconds=args.seconds,
                warmup=args.warmup,
                cpu_pids=pids,
            )
            rows.append(summarize(f"{name}-c{conc}", r, path=name, concurrency=conc, target=target))
    return rows


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(r["path"], r["concurrency"]): r for r in rows}
    out = []
    for conc in sorted({r["concurrency"] for r in rows}):
        ro, di = by[("routed", conc)], by[("direct", conc)]
        out.append(
            {
                "concurrency": conc,
                "throughput_ratio": round(ro["throughput_rps"] / di["throughput_rps"], 3)
                if di["throughput_rps"]
                else None,
                "added_p50_ms": round(ro["p50_ms"] - di["p50_ms"], 3),
                "added_p99_ms": round(ro["p99_ms"] - di["p99_ms"], 3),
                "mesh_cpu_us_per_req": ro.get("mesh_cpu_us_per_req"),
                "runtime_cpu_us_per_req_routed": ro.get("runtime_cpu_us_per_req"),
                "runtime_cpu_us_per_req_direct": di.get("runtime_cpu_us_per_req"),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.hotpath", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per scenario")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per scenario (discarded)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    p.add_argument("--port", type=int, default=0, help="pod port (default: a free one)")
    p.add_argument("--no-write", action="store_true", help="do not write the JSON result file")
    args = p.parse_args(argv)

    models_dir = Path(args.models_dir).resolve()
    model = pick_sklearn_model(sample_entries(ensure_samples(models_dir)))
    row = model["row"]
    request = build_infer_request(
        model["id"], {model["input_name"]: [row]}, raw=True, datatype="FP32", input_name=model["input_name"]
    )
    payload = request.SerializeToString()

    base = pick_base_port(args.port, 1)
    with LocalCluster(pods=1, base_port=base, capacity=256 * 1024 * 1024, models_dir=models_dir) as cluster:
        pod = cluster.pods[0]
        with MeshClient(pod.address) as client:
            client.register(model["id"], model["type"], model["path"], load_now=True, sync=True)
            wait_loaded(client, model["id"])
            check = client.infer_raw(request)  # the routed path works before we time it
            if not check.outputs:
                raise SystemExit(f"no outputs from {model['id']}")
        pids = {"mesh": pod.pid}
        rt = runtime_pid(pod.pid)
        if rt:
            pids["runtime"] = rt
        routed, direct = pod.address, cluster.runtime_addresses[0]
        print(f"model {model['id']} ({model['type']}); routed {routed}, direct {direct}", file=sys.stderr)
        rows = asyncio.run(run_scenarios(routed, direct, payload, model["id"], pids, args))

    summary = compare(rows)
    cols = ["scenario", "requests", "errors", "throughput_rps", "p50_ms", "p99_ms", "mesh_cpu_us_per_req"]
    if "runtime" in pids:
        cols.append("runtime_cpu_us_per_req")
    print("### Hot path: routed through the mesh vs direct to the runtime\n")
    print(markdown_table(rows, cols))
    print()
    print(
        markdown_table(
            summary,
            ["concurrency", "throughput_ratio", "added_p50_ms", "added_p99_ms", "mesh_cpu_us_per_req"],
        )
    )
    command = "python -m loadtests.hotpath " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {
        "benchmark": "hotpath",
        "command": command.strip(),
        "model": {"id": model["id"], "type": model["type"], "payload_bytes": len(payload)},
        "settings": {"seconds": args.seconds, "warmup": args.warmup, "concurrency": args.concurrency},
        "machine": machine_info(),
        "note": "client, mesh pod and runtime share this machine's CPUs",
        "scenarios": rows,
        "summary": summary,
        "input_sample": np.asarray(row, dtype=np.float32).tolist(),
    }
    if not args.no_write:
        path = write_results("hotpath", result)
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
