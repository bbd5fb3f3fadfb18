"""Sample models for integration tests, generated once per machine into ``var/test-models`` (the generator
is idempotent) and described by its manifest.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SAMPLES_DIR = REPO / "var" / "test-models"
MANY = 40


def ensure_samples(out: Path = SAMPLES_DIR, many: int = MANY) -> dict:
    subprocess.run(
        [sys.executable, "-m", "runtime_adapters.builtin.samples", "--out", str(out), "--many", str(many)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="session")
def samples() -> dict:
    manifest = ensure_samples()
    manifest["dir"] = SAMPLES_DIR
    manifest["by_id"] = {m["id"]: m for m in manifest["models"]}
    return manifest
