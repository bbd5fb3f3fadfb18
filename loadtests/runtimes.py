"""Runtime benchmark: load and first-inference times per runtime and model type, and MLServer throughput
routed through the mesh vs sent to MLServer directly.

Owns the measurements of the issue "Real model servers behind the mesh". For each runtime (``builtin``,
``mlserver``) it starts a 1-pod LocalCluster (own embedded etcd), and for each sample model registers two
ids on the same artifact: the first load of a type pays the library import inside the runtime, the second
shows the steady-state load. It times ``ensureLoaded(sync)`` through the mesh (load time, including the
registry update) and the first ModelInfer after it, and reads the size the runtime reported (SPI
``modelSize``). Then, on the MLServer cluster, it drives one pre-serialised iris ModelInfer (raw FP32)
(a) through the mesh pod (header ``mm-model-id``) and (b) straight to MLServer's gRPC port, closed loop at
each concurrency. Markdown goes to stdout, JSON to ``loadtests/results/runtimes-<date>.json``. Client,
mesh, adapter and MLServer share this machine's CPUs; no test asserts on these numbers.

    python -m loadtests.runtimes [--seconds 3] [--warmup 1] [--concurrency 1 16] [--runtimes builtin mlserver]
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from loadtests.common import closed_loop, machine_info, markdown_table, summarize, write_results
from mesh.client import MODEL_ID_HEADER, MeshClient, build_infer_request
from mesh.devtools.cluster import LocalCluster
from mesh.devtools.demo import DEFAULT_MODELS_DIR, ensure_samples, sample_entries
from protos.mmesh import model_runtime_pb2 as rt
from protos.mmesh import model_runtime_pb2_grpc as rt_grpc

SAMPLES = ("sklearn-iris-lr", "sklearn-iris-rf-large", "xgboost-iris")
THROUGHPUT_MODEL = "sklearn-iris-lr"


def _runtime_size(address: str, model_id: str) -> int | None:
    with grpc.insecure_channel(address) as ch:
        try:
            return (
                rt_grpc.ModelRuntimeStub(ch)
                .modelSize(rt.ModelSizeRequest(modelId=model_id), timeout=10)
                .sizeInBytes
            )
        except grpc.RpcError:
            return None


def load_rows(cluster: LocalCluster, runtime: str, models: dict[str, dict]) -> list[dict[str, Any]]:
    rows = []
    with MeshClient(cluster.addresses[0], timeout=120) as client:
        for sample in SAMPLES:
            m = models[sample]
            for n, model_id in enumerate((f"{sample}-a", f"{sample}-b")):
                client.register(model_id, m["type"], m["path"])
                t0 = time.perf_counter()
                client.ensure_loaded(model_id, sync=True)
                load_ms = (time.perf_counter() - t0) * 1e3
                t1 = time.perf_counter()
                client.infer(model_id, [m["row"]], datatype=m["datatype"], input_name=m["input_name"])
                infer_ms = (time.perf_counter() - t1) * 1e3
                size = _runtime_size(cluster.runtime_addresses[0], model_id)
                rows.append({
                    "runtime": runtime, "model": sample, "load": "first of type" if n == 0 else "second",
                    "load_ms": round(load_ms, 1), "first_infer_ms": round(infer_ms, 2),
                    "size_bytes": size, "disk_bytes": m["disk_size_bytes"],
                })  # fmt: skip
    return rows


async def throughput_rows(cluster: LocalCluster, payload: bytes, model_id: str, args) -> list[dict[str, Any]]:
    routed, direct = cluster.addresses[0], f"127.0.0.1:{cluster.serving_port(0)}"
    pids = {"mesh": cluster.pods[0].pid}
    rows = []
    for conc in args.concurrency:
        for name, target in (("routed", routed), ("direct", direct)):
            print(f"  mlserver {name} c={conc} …", file=sys.stderr, flush=True)
            r = await closed_loop(target, payload, metadata=[(MODEL_ID_HEADER, model_id)], concurrency=conc,
                                  seconds=args.seconds, warmup=args.warmup, cpu_pids=pids)  # fmt: skip
            rows.append(summarize(f"mlserver-{name}-c{conc}", r, path=name, concurrency=conc))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.runtimes", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per throughput scenario")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per scenario (discarded)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    p.add_argument("--runtimes", nargs="+", default=["builtin", "mlserver"], choices=["builtin", "mlserver"])
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    p.add_argument("--no-write", action="store_true", help="do not write the JSON result file")
    args = p.parse_args(argv)

    models_dir = Path(args.models_dir).resolve()
    models = {m["id"]: m for m in sample_entries(ensure_samples(models_dir))}
    load: list[dict[str, Any]] = []
    tput: list[dict[str, Any]] = []
    for runtime in args.runtimes:
        print(f"{runtime}: starting a 1-pod cluster …", file=sys.stderr, flush=True)
        with LocalCluster(
            pods=1, base_port=0, capacity=512 << 20, models_dir=models_dir, runtime=runtime
        ) as c:
            load += load_rows(c, runtime, models)
            if runtime == "mlserver":
                m = models[THROUGHPUT_MODEL]
                model_id = f"{THROUGHPUT_MODEL}-a"
                req = build_infer_request(model_id, {m["input_name"]: [m["row"]]}, raw=True, datatype="FP32",
                                          input_name=m["input_name"])  # fmt: skip
                tput = asyncio.run(throughput_rows(c, req.SerializeToString(), model_id, args))

    print("### Load and first inference per runtime and model type (through the mesh)\n")
    print(
        markdown_table(
            load, ["runtime", "model", "load", "load_ms", "first_infer_ms", "size_bytes", "disk_bytes"]
        )
    )
    if tput:
        print(f"\n### MLServer: routed through the mesh vs direct ({THROUGHPUT_MODEL}, raw FP32 [1,4])\n")
        print(markdown_table(tput, ["scenario", "requests", "errors", "throughput_rps", "p50_ms", "p99_ms",
                                    "mesh_cpu_us_per_req"]))  # fmt: skip
    command = "python -m loadtests.runtimes " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {
        "benchmark": "runtimes",
        "command": command.strip(),
        "settings": {"seconds": args.seconds, "warmup": args.warmup, "concurrency": args.concurrency},
        "machine": machine_info(),
        "note": "client, mesh pod, adapter and model server share this machine's CPUs",
        "load": load,
        "throughput": tput,
    }
    if not args.no_write:
        path = write_results("runtimes", result)
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
