"""The sample-model helpers around the generator (the generator itself runs once per machine for the whole
suite, into var/test-models): the demo generates only when a directory has no manifest, and a smaller
``--many`` prunes the extra model directories a larger one left."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mesh.devtools import demo
from runtime_adapters.builtin import samples


@pytest.mark.parametrize(("many", "flags"), [(0, []), (3, ["--many", "3"])], ids=["default", "with-many"])
def test_the_demo_generates_samples_only_when_the_manifest_is_missing(tmp_path, monkeypatch, many, flags):
    runs: list[list[str]] = []

    def generator(cmd, check, cwd):  # stands in for the slow generator: writes an (old-style) manifest
        runs.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        (out / "manifest.json").write_text(json.dumps([{"id": "m", "group": "default"}]))

    monkeypatch.setattr(demo.subprocess, "run", generator)
    first = demo.ensure_samples(tmp_path, many=many)
    assert runs == [
        [sys.executable, "-m", "runtime_adapters.builtin.samples", "--out", str(tmp_path), *flags]
    ]
    assert first == {"models": [{"id": "m", "group": "default"}]}  # a bare list is wrapped
    assert demo.ensure_samples(tmp_path, many=many) == first
    assert len(runs) == 1  # the manifest exists now: nothing is generated again


def test_a_smaller_many_prunes_the_extra_model_directories(tmp_path) -> None:
    root = tmp_path / "many"
    for i in range(5):
        (root / f"m{i:04d}").mkdir(parents=True)
        (root / f"m{i:04d}" / "model.joblib").write_bytes(b"x")
    (root / "notes").mkdir()  # not a model directory: left alone
    samples._drop_stale_many(root, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["m0000", "m0001", "notes"]
    samples._drop_stale_many(tmp_path / "absent", keep=0)  # no many/ directory yet: nothing to do
