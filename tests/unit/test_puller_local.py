"""Local/file:// pulls (no copy), start-up cleanup, remove(), disk budget policy, retry policy."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from mesh.errors import InvalidRequest
from puller import Puller, PullerSettings
from puller.budget import DiskBudget
from puller.errors import DiskBudgetExceeded, InvalidModelPath, PathEscapesRoot, StorageUnavailable
from puller.providers.base import Transient, with_retries


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "models" / "m1").mkdir(parents=True)
    (r / "models" / "m1" / "weights.bin").write_bytes(b"w" * 100)
    (r / "models" / "m1" / "sub").mkdir()
    (r / "models" / "m1" / "sub" / "cfg.json").write_bytes(b"{}")
    return r


async def test_local_paths_are_not_copied(tmp_path: Path, root: Path):
    puller = Puller(PullerSettings(model_dir=tmp_path / "models", local_roots=(root,)))
    try:
        a = await puller.pull("m1", "models/m1")
        assert a.path == root / "models" / "m1" and a.disk_size_bytes == 102
        b = await puller.pull("m1f", f"file://{root}/models/m1/weights.bin")
        assert b.path == root / "models" / "m1" / "weights.bin" and b.disk_size_bytes == 100
        assert not (tmp_path / "models" / "m1").exists()
        await puller.remove("m1")  # nothing to delete; the source is untouched
        assert a.path.exists()
    finally:
        await puller.close()


async def test_local_escapes_and_bad_ids(tmp_path: Path, root: Path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (root / "sneaky").symlink_to(outside)
    puller = Puller(PullerSettings(model_dir=tmp_path / "models", local_roots=(root,)))
    try:
        for path in ("../secret", "models/../../secret", "sneaky", str(outside), f"file://{outside}"):
            with pytest.raises(PathEscapesRoot):
                await puller.pull("m", path)
        with pytest.raises(InvalidRequest):
            await puller.pull("a/b", "models/m1")
        with pytest.raises(InvalidModelPath, match="reserved"):
            await puller.pull(".puller-tmp-x", "models/m1")
    finally:
        await puller.close()


async def test_startup_cleans_partials_and_adopts_leftovers(tmp_path: Path):
    model_dir = tmp_path / "models"
    (model_dir / ".puller-tmp-abc" / "x").mkdir(parents=True)
    (model_dir / "old-model").mkdir()
    (model_dir / "old-model" / "f").write_bytes(b"x" * 50)
    puller = Puller(PullerSettings(model_dir=model_dir, disk_budget_bytes=1000))
    try:
        assert not (model_dir / ".puller-tmp-abc").exists()
        assert puller._budget.used_bytes == 50
        await puller.remove("old-model")
        assert not (model_dir / "old-model").exists() and puller._budget.used_bytes == 0
    finally:
        await puller.close()


def test_disk_budget_evicts_only_leftovers_oldest_first():
    deleted: list[str] = []
    budget = DiskBudget(100, delete=deleted.append)
    budget.adopt_leftovers([("old", 30, 1.0), ("older", 30, 0.5)])
    r = budget.reserve("a", 40)
    budget.commit(r, 40)  # a is in use: 40 + leftovers 60 = 100
    r2 = budget.reserve("b", 30)  # needs 30: evicts "older" (oldest mtime) only
    assert deleted == ["older"]
    budget.commit(r2, 30)
    with pytest.raises(DiskBudgetExceeded) as info:
        budget.reserve("c", 80)  # only "old" (30) is evictable; "a" and "b" are in use
    assert info.value.retryable and "model 'c'" in info.value.message
    assert deleted == ["older"]  # nothing deleted when it cannot fit anyway
    budget.forget("a")  # remove() of a frees room
    budget.reserve("c", 60)
    assert deleted == ["older", "old"]


def test_retry_policy_retries_only_transient():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise Transient("HTTP 503")
        return "ok"

    assert (
        with_retries(flaky, where="w", attempts=3, backoff_s=0, backoff_max_s=0, rng=random.Random(1)) == "ok"
    )

    def always():
        raise Transient("connection refused")

    with pytest.raises(StorageUnavailable, match="after 2 attempt"):
        with_retries(always, where="w", attempts=2, backoff_s=0, backoff_max_s=0, sleep=lambda _: None)
    n = []

    def fatal():
        n.append(1)
        raise ValueError("no")

    with pytest.raises(ValueError):
        with_retries(fatal, where="w", attempts=5, backoff_s=0, backoff_max_s=0)
    assert len(n) == 1
