"""Density benchmark: registrations per second, pod memory with many registered models, and a cold start.

Owns the figures of issue 9's "Density" goal, measured on one LocalCluster (3 pods by default, built-in
runtime, the cluster's own embedded etcd):

1. **Registration rate**: ``--registrations`` registerModel calls (new ids, not loaded) sent by a grpc.aio
   client at ``--concurrency`` in flight to one pod; registrations per second.
2. **Memory at scale**: the cluster then holds ``--models`` registered models (the rest registered the same
   way); every pod's mesh process RSS (psutil, the pod process only, not its runtime) once all pods see them,
   and the time ``ClusterStatus`` takes (pods only; and, with ``--status-models``, a walk through all its pages
   with the models, as ``mesh status`` does).
3. **Cold start**: ``--cold-start`` of them are loaded at once (async ensureLoaded spread over the pods) and
   the wall time until every one is LOADED gives loads per second across the cluster.

Numbers depend on the machine; no test asserts on them.

    python -m loadtests.density [--models 100000] [--registrations 20000] [--concurrency 64] [--cold-start 1000]
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
import psutil

from loadtests.common import machine_info, markdown_table, write_results
from mesh.devtools.cluster import LocalCluster, pick_base_port
from mesh.devtools.demo import ensure_samples
from protos.meshadmin import admin_pb2, admin_pb2_grpc
from protos.mmesh import model_mesh_pb2 as mm
from protos.mmesh import model_mesh_pb2_grpc as mm_grpc

MODELS_DIR = Path("var") / "density-models"


async def register_many(address: str, ids: list[str], model: dict, concurrency: int) -> float:
    """Register ``ids`` (all on ``model``'s artifact) with ``concurrency`` calls in flight; returns seconds."""
    queue = list(reversed(ids))
    async with grpc.aio.insecure_channel(address) as ch:
        stub = mm_grpc.ModelMeshStub(ch)
        info = mm.ModelInfo(type=model["type"], path=model["path"])

        async def worker() -> None:
            while queue:
                model_id = queue.pop()
                await stub.registerModel(
                    mm.RegisterModelRequest(modelId=model_id, modelInfo=info), timeout=60
                )

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


async def cold_start(addresses: list[str], ids: list[str], timeout: float = 600.0) -> float:
    channels = [grpc.aio.insecure_channel(a) for a in addresses]
    try:
        stubs = [mm_grpc.ModelMeshStub(c) for c in channels]
        started = time.perf_counter()
        await asyncio.gather(
            *(
                stubs[i % len(stubs)].ensureLoaded(mm.EnsureLoadedRequest(modelId=m, sync=False), timeout=60)
                for i, m in enumerate(ids)
            )
        )
        pending = set(ids)
        while pending and time.perf_counter() - started < timeout:
            for m in list(pending)[:200]:
                st = await stubs[0].getModelStatus(mm.GetStatusRequest(modelId=m), timeout=30)
                if st.status == mm.ModelStatusInfo.LOADED:
                    pending.discard(m)
                elif st.status == mm.ModelStatusInfo.LOADING_FAILED:
                    raise SystemExit(f"{m} failed to load: {list(st.errors)}")
            if pending:
                await asyncio.sleep(0.2)
        if pending:
            raise SystemExit(f"{len(pending)} models not loaded after {timeout:.0f}s")
        return time.perf_counter() - started
    finally:
        for c in channels:
            await c.close()


def status_seconds(address: str, include_models: bool) -> tuple[float, int]:
    """One ClusterStatus (pods only), or every page of it with the models (``mesh status`` walks the pages the
    same way); returns the seconds taken and the models received."""
    with grpc.insecure_channel(address) as ch:
        stub = admin_pb2_grpc.MeshAdminStub(ch)
        started = time.perf_counter()
        received, token = 0, ""
        while True:
            resp = stub.ClusterStatus(
                admin_pb2.ClusterStatusRequest(include_models=include_models, page_token=token), timeout=120
            )
            received += len(resp.models)
            token = resp.next_page_token
            if not include_models or not token:
                return time.perf_counter() - started, received


def wait_all_see(cluster: LocalCluster, count: int, timeout: float = 300.0) -> None:
    """Until every pod's view holds ``count`` models (``total_models`` of its ClusterStatus)."""
    deadline = time.monotonic() + timeout
    for address in cluster.addresses:
        with grpc.insecure_channel(address) as ch:
            stub = admin_pb2_grpc.MeshAdminStub(ch)
            while stub.ClusterStatus(admin_pb2.ClusterStatusRequest(), timeout=120).total_models < count:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{address} did not see {count} models within {timeout:.0f}s")
                time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.density", description=__doc__.splitlines()[0])
    p.add_argument("--pods", type=int, default=3)
    p.add_argument("--models", type=int, default=100_000, help="registered models in the memory step")
    p.add_argument("--registrations", type=int, default=20_000, help="registrations timed for the rate")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--cold-start", type=int, default=1000, help="models loaded at once at the end")
    p.add_argument(
        "--status-models",
        action="store_true",
        help="also time a walk through every page of ClusterStatus with the models",
    )
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    manifest = ensure_samples(MODELS_DIR.resolve(), many=1)
    model = next(m for m in manifest["models"] if m["group"] == "many")
    results: dict[str, Any] = {}
    with LocalCluster(
        pods=args.pods,
        base_port=pick_base_port(0, args.pods),
        capacity=512 << 20,
        models_dir=MODELS_DIR.resolve(),
        kv_root=f"/bench/density-{int(time.time())}/",
        pod_args=["--default-model-size", "20000"],
        startup_timeout=180,
    ) as cluster:
        rss_before = {p.instance_id: psutil.Process(p.pid).memory_info().rss for p in cluster.pods}
        ids = [f"d-{i:06d}" for i in range(args.models)]
        timed = ids[: args.registrations]
        seconds = asyncio.run(register_many(cluster.addresses[0], timed, model, args.concurrency))
        results["registrations"] = len(timed)
        results["registrations_per_s"] = round(len(timed) / seconds, 1)
        print(f"registered {len(timed)} in {seconds:.1f}s: {len(timed) / seconds:.0f}/s", file=sys.stderr)
        rest = ids[args.registrations :]
        if rest:
            asyncio.run(register_many(cluster.addresses[0], rest, model, args.concurrency))
        wait_all_see(cluster, len(ids))
        rss = {p.instance_id: psutil.Process(p.pid).memory_info().rss for p in cluster.pods}
        results["models"] = len(ids)
        results["pod_rss_mb_before"] = {k: round(v / 2**20, 1) for k, v in rss_before.items()}
        results["pod_rss_mb"] = {k: round(v / 2**20, 1) for k, v in rss.items()}
        results["max_pod_rss_mb"] = round(max(rss.values()) / 2**20, 1)
        results["status_pods_only_s"] = round(status_seconds(cluster.addresses[0], False)[0], 3)
        if args.status_models:
            seconds, received = status_seconds(cluster.addresses[0], True)
            results["status_all_pages_s"] = round(seconds, 3)
            results["status_models_received"] = received
        if args.cold_start:
            n = min(args.cold_start, len(ids))
            seconds = asyncio.run(cold_start(cluster.addresses, ids[-n:]))
            results["cold_start_models"] = n
            results["cold_start_s"] = round(seconds, 2)
            results["cold_start_loads_per_s"] = round(n / seconds, 1)
    print(markdown_table([results], [k for k in results if not isinstance(results[k], dict)]))
    print("pod RSS MB:", results["pod_rss_mb"])
    if not args.no_write:
        command = "python -m loadtests.density " + shlex.join(argv if argv is not None else sys.argv[1:])
        path = write_results("density", {"command": command, "machine": machine_info(), "results": results})
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
