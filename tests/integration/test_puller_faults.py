"""Storage faults the puller must survive, against a real HTTP storage (tests/support/bad_storage.py).

A pull every caller gave up on stops, whether the storage dribbles its bytes or never answers. The runtime
gives up on a pull at its loading timeout (and the mesh cancels loadModel at the same moment). Found
by the chaos suite (tests/chaos/test_chaos_slow_runtime.py): the abandoned download went on, holding one of the
runtime's concurrent-pull slots, a puller thread, its disk reservation and a temp dir for as long as the storage
kept sending (a 4 KiB file at 4 bytes a second: 17 minutes), and ``remove`` (unloadModel) waited for it. A few
slow models then made every other remote load on the pod time out.

A full disk (a small tmpfs as the model directory; skipped without root) is ``DiskFull`` (RESOURCE_EXHAUSTED,
"no space left on device"), not an INTERNAL "unexpected" OSError (also found by the chaos suite), and
leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from puller import Puller, PullerSettings
from puller.errors import DiskFull
from tests.support.bad_storage import BadStorage, tiny_disk

BODY = b"model-bytes-" * 100
KEY = json.dumps({"storage_key": "web"})


def temp_dirs(model_dir: Path) -> list[str]:
    return (
        sorted(p.name for p in model_dir.iterdir() if p.name.startswith(".puller-t"))
        if model_dir.exists()
        else []
    )


@pytest.mark.parametrize("route", ["dribble", "hang"])
async def test_an_abandoned_pull_stops_and_frees_its_slot(tmp_path, route):
    storage = BadStorage({"model.bin": BODY}).__enter__()
    config = tmp_path / "storage.json"
    config.write_text(json.dumps({"web": {"type": "http", "url": storage.url}}))
    # a storage that never answers is retried 10 times, 5 s each: 50 s of a held slot unless abandoning stops it
    settings = PullerSettings(
        model_dir=tmp_path / "models",
        storage_config=config,
        max_concurrent_pulls=1,
        read_timeout_s=5.0,
        max_attempts=10,
        retry_backoff_s=0.01,
    )
    puller = Puller(settings)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(puller.pull("slow", f"{route}/model.bin", KEY), 1.0)
        # the only pull slot is free again: a healthy pull does not queue behind the abandoned one
        art = await asyncio.wait_for(puller.pull("ok", "file/model.bin", KEY), 15)
        assert art.path.read_bytes() == BODY
        # unloadModel's remove does not wait for the storage, and no partial download is left
        await asyncio.wait_for(puller.remove("slow"), 15)
        assert temp_dirs(tmp_path / "models") == []
        assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["ok"]
    finally:
        storage.stop()  # first: ends a download the puller could not stop, so close() returns
        await puller.close()


async def test_a_pull_with_another_waiter_goes_on(tmp_path):
    """Single flight: one caller giving up does not stop the download another caller still waits for."""
    storage = BadStorage({"model.bin": BODY}).__enter__()
    config = tmp_path / "storage.json"
    config.write_text(json.dumps({"web": {"type": "http", "url": storage.url}}))
    puller = Puller(PullerSettings(model_dir=tmp_path / "models", storage_config=config))
    try:
        patient = asyncio.ensure_future(puller.pull("slow", "dribble/model.bin", KEY))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(puller.pull("slow", "dribble/model.bin", KEY), 0.5)
        await asyncio.sleep(0.5)
        assert not patient.done()
        assert temp_dirs(tmp_path / "models")  # still downloading
        patient.cancel()  # the last caller leaves: now it stops
        with pytest.raises(asyncio.CancelledError):
            await patient
        await asyncio.wait_for(puller.remove("slow"), 15)
        assert temp_dirs(tmp_path / "models") == []
    finally:
        storage.stop()
        await puller.close()


async def test_a_full_disk_is_disk_full_and_leaves_nothing(tmp_path):
    with tiny_disk(tmp_path / "models", 256 * 1024) as model_dir, BadStorage({"model.bin": BODY}) as storage:
        config = tmp_path / "storage.json"
        config.write_text(json.dumps({"web": {"type": "http", "url": storage.url}}))
        puller = Puller(PullerSettings(model_dir=model_dir, storage_config=config))
        try:
            with pytest.raises(DiskFull) as info:
                await puller.pull("big", f"big/{1024 * 1024}/model.bin", KEY)
            assert info.value.grpc_code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "no space left on device for model 'big'" in info.value.message
            assert sorted(p.name for p in model_dir.iterdir()) == []
            art = await puller.pull("small", "file/model.bin", KEY)  # the space was given back
            assert art.path.read_bytes() == BODY
        finally:
            await puller.close()
