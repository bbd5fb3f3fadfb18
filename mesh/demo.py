"""``python -m mesh.demo`` (``make demo``): the whole mesh end to end on one machine, checked.

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
from mesh.devcluster import REPO_ROOT, LocalCluster, pick_base_port

DEFAULT_MODELS_DIR = REPO_ROOT / "var" / "models"
# Loaded sizes are measured (RSS delta) by the built-in runtime: the eight samples take about 35-40 MiB in
# all, the largest single one about 10 MiB (a first load of a type pays for importing its library). Two pods
# of this capacity hold every model one at a time but not all at once, so the LRU has to evict.
DEMO_CAPACITY = 24 * 1024 * 1024


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


def run_demo(models_dir: Path, capacity: int | None, pods: int, port: int) -> int:
    manifest = ensure_samples(models_dir)
    models = sample_entries(manifest)
    if not models:
        print("error: NOT_FOUND: the sample manifest lists no models", file=sys.stderr)
        return 1
    if capacity is None:
        capacity = DEMO_CAPACITY
    base = pick_base_port(port, pods)
    started = time.monotonic()
    print(f"starting {pods} pods on 127.0.0.1:{base}.. (capacity {human_bytes(capacity)} each)", flush=True)
    with LocalCluster(pods=pods, base_port=base, capacity=capacity, models_dir=models_dir) as cluster:
        addrs = cluster.addresses
        for pod in cluster.pods:
            print(f"  pod-{pod.index}: {pod.address}")
        print(
            f"cluster ready in {time.monotonic() - started:.1f}s; registering {len(models)} models",
            flush=True,
        )
        clients = [MeshClient(a, timeout=60) for a in addrs]
        try:
            for i, m in enumerate(models):
                clients[0].register(m["id"], m["type"], m["path"], load_now=(i == 0), sync=(i == 0))
            rows, failures = [], 0
            for i, m in enumerate(models):
                c = clients[i % len(clients)]
                try:
                    out = c.infer(
                        m["id"], {m["input_name"]: [m["row"]]}, datatype=m["datatype"], raw=(i % 2 == 1)
                    )
                    ok = check_outputs(out, m["expected"])
                    pred = out.get(m["primary"], next(iter(out.values())))
                    shown = _short(pred)
                except MeshClientError as exc:
                    ok, shown = False, f"{exc.code}: {exc.message}"[:60]
                failures += not ok
                where = ",".join(holders(c, m["id"])) or "-"
                rows.append(
                    (
                        m["id"],
                        m["type"],
                        f"pod-{i % len(clients)}",
                        where,
                        shown,
                        _short(m["expected"][m["primary"]]),
                        "OK" if ok else "FAIL",
                    )
                )
            print()
            print(format_table(("MODEL", "TYPE", "ASKED", "HELD BY", "PREDICTION", "EXPECTED", "OK"), rows))
            st = clients[0].cluster_status()
            evicted = [
                m["model_id"] for m in st["models"] if m["status"] == "NOT_LOADED" and m["last_used_ms"] > 0
            ]
            print()
            print(format_cluster_status(st))
            print()
            print(
                f"evicted since use (LRU, capacity {human_bytes(capacity)}/pod): {', '.join(evicted) or 'none'}"
            )
        finally:
            for c in clients:
                c.close()
    elapsed = time.monotonic() - started
    verdict = "all predictions correct" if failures == 0 else f"{failures} of {len(models)} FAILED"
    print(f"\n{verdict}; cluster stopped; {elapsed:.1f}s in all")
    return 0 if failures == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mesh.demo", description=__doc__.splitlines()[0])
    p.add_argument("--models-dir", default=str(DEFAULT_MODELS_DIR))
    p.add_argument("--capacity", type=int, default=None, help="runtime capacity per pod in bytes (auto)")
    p.add_argument("--pods", type=int, default=2)
    p.add_argument("--port", type=int, default=8033, help="first pod's port if free (else free ports)")
    args = p.parse_args(argv)
    try:
        return run_demo(Path(args.models_dir).resolve(), args.capacity, args.pods, args.port)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
