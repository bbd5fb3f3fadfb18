"""Hot-path benchmark: the same ModelInfer routed through the mesh vs sent straight to a runtime.

Owns the data-plane benchmark (issues "One mesh pod, end to end" and "Speed where users feel it"). For each
runtime mode (``--runtimes``: ``builtin`` = the runtime process over TCP, ``builtin-uds`` = over a unix socket,
``inprocess`` = the built-in runtime inside the pod process) it starts a 1-pod LocalCluster, registers and
loads one sklearn sample model, and sends one pre-serialised ModelInferRequest (raw FP32 rows of the iris
model, header ``mm-model-id``; ``--payload-bytes`` sets the request size by the number of rows) to the pod,
closed loop at each concurrency. The "direct" baseline is the same request sent to a standalone built-in
runtime process (TCP) holding the same model, measured in the same run. It reports per scenario throughput
and p50/p99, then per mode the routed/direct throughput ratio, the added p50/p99, and the pod's CPU µs per
request. Markdown goes to stdout, JSON to ``loadtests/results/hotpath-<date>.json``. Numbers depend on the
machine; no test asserts on them.

    python -m loadtests.hotpath [--seconds 8] [--warmup 1] [--concurrency 1 32]
                                [--runtimes builtin builtin-uds inprocess] [--payload-bytes 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import psutil

from loadtests.common import closed_loop, machine_info, markdown_table, summarize, write_results
from mesh.client import MODEL_ID_HEADER, MeshClient, build_infer_request
from mesh.devtools.cluster import LocalCluster, free_port, pick_base_port
from mesh.devtools.demo import DEFAULT_MODELS_DIR, ensure_samples, sample_entries
from protos.mmesh import model_runtime_pb2 as rt
from protos.mmesh import model_runtime_pb2_grpc as rt_grpc


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


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    direct = {r["concurrency"]: r for r in rows if r["path"] == "direct"}
    out = []
    for ro in (r for r in rows if r["path"] == "routed"):
        conc, di = ro["concurrency"], direct[ro["concurrency"]]
        out.append(
            {
                "runtime": ro["runtime"],
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


def standalone_runtime(
    models_dir: Path, model: dict[str, Any], capacity: int
) -> tuple[subprocess.Popen, str]:
    """A built-in runtime process of its own (the direct baseline), with ``model`` loaded through its SPI."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime_adapters.builtin",
            "--port",
            str(port),
            "--capacity",
            str(capacity),
            "--local-root",
            str(models_dir),
            "--model-dir",
            tempfile.mkdtemp(prefix="hotpath-rt-"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(address) as ch:
        stub = rt_grpc.ModelRuntimeStub(ch)
        while True:
            try:
                if (
                    stub.runtimeStatus(rt.RuntimeStatusRequest(), timeout=2).status
                    == rt.RuntimeStatusResponse.READY
                ):
                    break
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the standalone runtime did not start")
            time.sleep(0.2)
        stub.loadModel(
            rt.LoadModelRequest(modelId=model["id"], modelType=model["type"], modelPath=model["path"]),
            timeout=60,
        )
    return proc, address


def make_request(model: dict[str, Any], payload_bytes: int) -> bytes:
    row = model["row"]
    rows = max(1, payload_bytes // (4 * len(row)))
    request = build_infer_request(
        model["id"],
        {model["input_name"]: [row] * rows},
        raw=True,
        datatype="FP32",
        input_name=model["input_name"],
    )
    return request.SerializeToString()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.hotpath", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per scenario")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per scenario (discarded)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument(
        "--runtimes", nargs="+", default=["builtin"], choices=["builtin", "builtin-uds", "inprocess"]
    )
    p.add_argument(
        "--payload-bytes", type=int, default=16, help="request tensor size (default: one iris row)"
    )
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    p.add_argument("--no-write", action="store_true", help="do not write the JSON result file")
    args = p.parse_args(argv)

    models_dir = Path(args.models_dir).resolve()
    model = pick_sklearn_model(sample_entries(ensure_samples(models_dir)))
    payload = make_request(model, args.payload_bytes)
    md = [(MODEL_ID_HEADER, model["id"])]
    rows: list[dict[str, Any]] = []
    capacity = 256 * 1024 * 1024
    proc, direct = standalone_runtime(models_dir, model, capacity)
    try:
        for conc in args.concurrency:
            print(f"  direct c={conc} …", file=sys.stderr, flush=True)
            r = asyncio.run(
                closed_loop(
                    direct,
                    payload,
                    metadata=md,
                    concurrency=conc,
                    seconds=args.seconds,
                    warmup=args.warmup,
                    cpu_pids={"runtime": proc.pid},
                )
            )
            rows.append(summarize(f"direct-c{conc}", r, path="direct", runtime="-", concurrency=conc))
        for mode in args.runtimes:
            with LocalCluster(
                pods=1, base_port=pick_base_port(0, 1), capacity=capacity, models_dir=models_dir, runtime=mode
            ) as cluster:
                pod = cluster.pods[0]
                with MeshClient(pod.address) as client:
                    client.register(model["id"], model["type"], model["path"], load_now=True, sync=True)
                    wait_loaded(client, model["id"])
                pids = {"mesh": pod.pid}
                rt_pid = runtime_pid(pod.pid)
                if rt_pid:
                    pids["runtime"] = rt_pid
                for conc in args.concurrency:
                    print(f"  routed ({mode}) c={conc} …", file=sys.stderr, flush=True)
                    r = asyncio.run(
                        closed_loop(
                            pod.address,
                            payload,
                            metadata=md,
                            concurrency=conc,
                            seconds=args.seconds,
                            warmup=args.warmup,
                            cpu_pids=pids,
                        )
                    )
                    rows.append(
                        summarize(f"routed-{mode}-c{conc}", r, path="routed", runtime=mode, concurrency=conc)
                    )
    finally:
        proc.terminate()
        proc.wait(timeout=20)

    summary = compare(rows)
    cols = ["scenario", "requests", "errors", "throughput_rps", "p50_ms", "p99_ms", "mesh_cpu_us_per_req",
            "runtime_cpu_us_per_req"]  # fmt: skip
    print(f"### Hot path: routed through the mesh vs direct to a runtime ({len(payload)}-byte requests)\n")
    print(markdown_table(rows, cols))
    print()
    print(
        markdown_table(
            summary,
            [
                "runtime",
                "concurrency",
                "throughput_ratio",
                "added_p50_ms",
                "added_p99_ms",
                "mesh_cpu_us_per_req",
            ],
        )
    )
    command = "python -m loadtests.hotpath " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {
        "benchmark": "hotpath",
        "command": command.strip(),
        "model": {"id": model["id"], "type": model["type"], "payload_bytes": len(payload)},
        "settings": {
            "seconds": args.seconds,
            "warmup": args.warmup,
            "concurrency": args.concurrency,
            "runtimes": args.runtimes,
        },
        "machine": machine_info(),
        "note": "client, mesh pod and runtimes share this machine's CPUs",
        "scenarios": rows,
        "summary": summary,
    }
    if not args.no_write:
        path = write_results("hotpath", result)
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
