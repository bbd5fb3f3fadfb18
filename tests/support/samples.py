"""Sample models for integration tests, generated once per machine into ``var/test-models`` (the generator
is idempotent) and described by its manifest.json. ``make test`` runs several pytest workers: the first to
get here generates under a file lock while the others wait for it, then find the manifest current."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLES_DIR = REPO / "var" / "test-models"
MANY = 40


def ensure_samples(out: Path = SAMPLES_DIR, many: int = MANY) -> dict:
    generate = [
        sys.executable,
        "-m",
        "runtime_adapters.builtin.samples",
        "--out",
        str(out),
        "--many",
        str(many),
    ]
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        subprocess.run(generate, check=True, cwd=REPO, capture_output=True)
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="session")
def samples() -> dict:
    manifest = ensure_samples()
    manifest["dir"] = SAMPLES_DIR
    manifest["by_id"] = {m["id"]: m for m in manifest["models"]}
    return manifest
