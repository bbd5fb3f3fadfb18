"""``python -m mesh.devtools.demo`` (``make demo``): the whole mesh end to end on one machine, checked.

Owns the demo script only. It makes sure sample models exist (``runtime_adapters.builtin.samples``), starts a
2-pod ``LocalCluster`` with a runtime capacity small enough that the samples do not all fit on one pod (so
the cache must evict) yet large enough for any single model, registers every sample from the manifest (the
first one with ``loadNow``), sends each model an inference through the pods in turn, checks every
prediction against the manifest's expected value, prints a table and the cluster status, and shuts
everything down. Exit status 1 if any inference failed or was wrong.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mesh.cli import format_cluster_status, format_table, human_bytes
from mesh.client import MeshClient, MeshClientError
from mesh.devtools.cluster import REPO_ROOT, LocalCluster, disable_grpc_fork_handlers, pick_base_port

DEFAULT_MODELS_DIR = REPO_ROOT / "var" / "models"
# Loaded sizes are measured by the built-in runtime (RSS delta, floored at the file size), so they vary from run
# to run: a few MiB for all eight samples, up to ~10 MiB for a first load that imports its library. This
# capacity holds any one model with room to spare; the demo then fills it with copies of the largest sample
# (at least its 1.5 MB file each, so at most MAX_FILLERS are needed) until the LRU evicts.
DEMO_CAPACITY = 12 * 1024 * 1024
MAX_FILLERS = 40


def ensure_samples(models_dir: Path, *, many: int = 0) -> dict[str, Any]:
    """Generate the sample models into ``models_dir`` unless its manifest exists; return the manifest."""
    manifest = models_dir / "manifest.json"
    if not manifest.is_file():
        print(f"generating sample models into {models_dir} …", flush=True)
        cmd = [sys.executable, "-m", "runtime_adapters.builtin.samples", "--out", str(models_dir)]
        if many:
            cmd += ["--many", str(many)]
        subprocess.run(cmd, check=True, cwd=str(REPO_ROOT))
    data = json.loads(manifest.read_text())
    return data if isinstance(data, dict) else {"models": data}


def sample_entries(manifest: dict[str, Any], *, group: str | None = "default") -> list[dict[str, Any]]:
    """Manifest entries (runtime_adapters.builtin.samples format) as id/type/path/input_name/datatype/row
    (one row, shaped)/expected ({output: flat values})/primary (the output shown first)/disk_size_bytes."""
    out = []
    for m in manifest.get("models", []):
        if group is not None and m.get("group", "default") != group:
            continue
        inp = m["input"]
        row = np.asarray(inp["data"]).reshape(inp["shape"])[0].tolist()
        expected = {name: t["data"] for name, t in m["expected"].items()}
        out.append(
            {
                "id": m["id"],
                "type": m["type"],
                "path": m["path"],
                "input_name": inp.get("name", "input-0"),
                "datatype": inp.get("datatype", "FP32"),
                "row": row,
                "expected": expected,
                "primary": next(iter(expected)),
                "disk_size_bytes": m.get("disk_size_bytes", 0),
            }
        )
    return out


def check_outputs(outputs: dict[str, np.ndarray], expected: dict[str, Any]) -> bool:
    """Every expected output that came back matches (floats within 1e-4 relative), and at least one did."""
    common = [name for name in expected if name in outputs]
    return bool(common) and all(prediction_matches(outputs[name], expected[name]) for name in common)


def prediction_matches(pred: np.ndarray, expected: Any) -> bool:
    got = np.asarray(pred).reshape(-1)
    want = np.asarray(expected).reshape(-1)
    if got.shape != want.shape:
        return False
    if got.dtype.kind in "fiub" and want.dtype.kind in "fiub":
        return bool(np.allclose(got.astype(float), want.astype(float), rtol=1e-4, atol=1e-5))
    return [_norm(x) for x in got.tolist()] == [_norm(x) for x in want.tolist()]


def _short(values: Any) -> str:
    flat = np.asarray(values).reshape(-1).tolist()
    text = ",".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in flat[:3])
    return text + (",…" if len(flat) > 3 else "")


def _norm(x: Any) -> Any:
    return x.decode() if isinstance(x, bytes) else x


def holders(client: MeshClient, model_id: str) -> list[str]:
    try:
        st = client.status(model_id)
    except MeshClientError:
        return []
    return sorted(c["location"] for c in st["copies"] if c["status"] == "LOADED")


def infer_row(client: MeshClient, m: dict[str, Any], *, raw: bool = False) -> tuple[bool, str]:
    """One inference of sample ``m``: (prediction correct?, what to show)."""
    try:
        out = client.infer(m["id"], {m["input_name"]: [m["row"]]}, datatype=m["datatype"], raw=raw)
    except MeshClientError as exc:
        return False, f"{exc.code}: {exc.message}"[:60]
    pred = out.get(m["primary"], next(iter(out.values())))
    return check_outputs(out, m["expected"]), _short(pred)


def unloaded(client: MeshClient, ids: list[str]) -> list[str]:
    """Models among ``ids`` that have no copy loaded or loading any more."""
    st = {m["model_id"]: m for m in client.cluster_status()["models"]}
    return [i for i in ids if i in st and not st[i]["loaded_on"] and not st[i]["loading_on"]]


def fill_until_eviction(
    clients: list[MeshClient], big: dict[str, Any], watched: list[str]
) -> tuple[int, list[str]]:
    """Register and use copies of the largest sample under new ids until the LRU evicts a watched model.
    Loaded sizes are at least the file size, so the cluster's capacity must run out: the loop ends."""
    for n in range(1, MAX_FILLERS + 1):
        filler = dict(big, id=f"{big['id']}-fill{n}")
        clients[0].register(filler["id"], filler["type"], filler["path"])
        ok, shown = infer_row(clients[n % len(clients)], filler)
        if not ok:
            raise RuntimeError(f"filler {filler['id']} failed: {shown}")
        gone = unloaded(clients[0], watched)
        if gone:
            return n, gone
    return MAX_FILLERS, []


def run_demo(models_dir: Path, capacity: int | None, pods: int, port: int) -> int:
    models = sample_entries(ensure_samples(models_dir))
    if not models:
        print("error: NOT_FOUND: the sample manifest lists no models", file=sys.stderr)
        return 1
    capacity = capacity or DEMO_CAPACITY
    base = pick_base_port(port, pods)
    started = time.monotonic()
    print(f"starting {pods} pods on 127.0.0.1:{base}.. (capacity {human_bytes(capacity)} each)", flush=True)
    failures = 0
    with LocalCluster(pods=pods, base_port=base, capacity=capacity, models_dir=models_dir) as cluster:
        for pod in cluster.pods:
            print(f"  pod-{pod.index}: {pod.address}")
        print(
            f"cluster ready in {time.monotonic() - started:.1f}s; registering {len(models)} models",
            flush=True,
        )
        clients = [MeshClient(a, timeout=60) for a in cluster.addresses]
        try:
            # 1. Register everything (the first with loadNow), then one inference each, pods in turn.
            for i, m in enumerate(models):
                clients[0].register(m["id"], m["type"], m["path"], load_now=(i == 0), sync=(i == 0))
            rows = []
            for i, m in enumerate(models):
                c = clients[i % len(clients)]
                ok, shown = infer_row(c, m, raw=(i % 2 == 1))
                failures += not ok
                expected = _short(m["expected"][m["primary"]])
                held = ",".join(holders(c, m["id"])) or "-"
                rows.append(
                    (
                        m["id"],
                        m["type"],
                        f"pod-{i % len(clients)}",
                        held,
                        shown,
                        expected,
                        "OK" if ok else "FAIL",
                    )
                )
            print()
            print(format_table(("MODEL", "TYPE", "ASKED", "HELD BY", "PREDICTION", "EXPECTED", "OK"), rows))

            # 2. Fill the caches with copies of the largest model until the LRU evicts one of the samples.
            big = max(models, key=lambda m: m["disk_size_bytes"])
            print(
                f"\nfilling the caches with copies of {big['id']} until the LRU evicts a sample …", flush=True
            )
            fillers, evicted = fill_until_eviction(clients, big, [m["id"] for m in models])
            if not evicted:
                print(f"no eviction after {fillers} fillers (capacity too large for this demo?)")
            else:
                print(f"after {fillers} filler model(s), evicted: {', '.join(evicted)}")
                # 3. An evicted model is loaded again on demand and still answers correctly.
                for mid in evicted:
                    m = next(x for x in models if x["id"] == mid)
                    ok, shown = infer_row(clients[-1], m)
                    failures += not ok
                    held = ",".join(holders(clients[0], mid)) or "-"
                    print(f"  re-inferred {mid}: {shown} on {held}: {'OK' if ok else 'FAIL'}")
            print()
            print(format_cluster_status(clients[0].cluster_status()))
        finally:
            for c in clients:
                c.close()
    verdict = "all predictions correct" if failures == 0 else f"{failures} predictions FAILED"
    print(f"\n{verdict}; cluster stopped; {time.monotonic() - started:.1f}s in all")
    return 0 if failures == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mesh.devtools.demo", description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    p.add_argument("--capacity", type=int, default=None, help="runtime capacity per pod in bytes (auto)")
    p.add_argument("--pods", type=int, default=2)
    p.add_argument("--port", type=int, default=8033, help="first pod's port if free (else free ports)")
    args = p.parse_args(argv)
    disable_grpc_fork_handlers()  # we fork only to exec pods
    try:
        return run_demo(Path(args.models_dir).resolve(), args.capacity, args.pods, args.port)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
