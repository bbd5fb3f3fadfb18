"""A full disk during a pull: the pod's runtime gets a 512 KiB model directory (a tmpfs mounted for the test)
and a 1 MiB model is registered from an HTTP storage, under a Zipf load on local models.

Outcomes: the model is LOADING_FAILED with a message that says the disk is full (never an INTERNAL
"unexpected" error), nothing half-written is left in the model directory (a small remote model loads in the
space afterwards), the runtime logged no unexpected failure, and the other models keep serving throughout.

Needs root and tmpfs (``mount -t tmpfs``); skipped with the reason otherwise. The mount is always removed.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time

import pytest

from tests.chaos.harness import (
    OK,
    Sample,
    ZipfLoad,
    by_code,
    failure_list,
    figures,
    latency_ms,
    many_samples,
    seconds_since,
    shuffled,
    sweep,
)
from tests.support.bad_storage import BadStorage, tiny_disk
from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]  # a hard bound; teardown still runs

DISK_BYTES = 512 * 1024
BIG_BYTES = 1024 * 1024
MODELS = 10


def test_full_disk_during_a_pull(etcd_server, samples):  # noqa: F811
    local = shuffled(many_samples(samples)[:MODELS], seed=11)
    small_source = [m for m in samples["models"] if m["group"] == "many"][MODELS]
    small_bytes = (samples["dir"] / small_source["file"]).read_bytes()
    with figures("full_disk") as fig:
        model_dir = fig.run_dir / "pod-0" / "models"
        with tiny_disk(model_dir, DISK_BYTES), BadStorage({"model.joblib": small_bytes}) as storage:
            config = fig.run_dir / "storage.json"
            config.write_text(json.dumps({"web": {"type": "http", "url": storage.url}}))
            key = json.dumps({"storage_key": "web"})
            with make_cluster(
                etcd_server.endpoint,
                samples,
                pods=1,
                data_dir=fig.run_dir,
                extra=("--storage-config", str(config), "--max-load-failures", "1"),
            ) as cluster:
                admin = cluster.client(0)
                for m in local:
                    admin.register(m.id, m.type, m.path)
                admin.register("too-big", "sklearn", f"big/{BIG_BYTES}/model.joblib", key)
                small = Sample.of(small_source, "small-remote")
                admin.register(small.id, "sklearn", "file/model.joblib", key)
                with ZipfLoad(cluster.addresses, local) as load:
                    load.wait_for_requests(200)
                    t_pull = time.monotonic()
                    with contextlib.suppress(Exception):
                        admin.ensure_loaded("too-big", sync=True)
                    status = wait_for(
                        lambda: (st := admin.status("too-big"))["status"] == "LOADING_FAILED" and st,
                        timeout=60,
                        what="too-big LOADING_FAILED",
                    )
                    t_failed = time.monotonic()
                    left = sorted(p.name for p in model_dir.iterdir())
                    disk_used = shutil.disk_usage(model_dir).used
                    small_call = sweep(cluster.addresses, [small])
                    load.wait_for_requests(200)
                runtime_log = cluster.pods[0].log_path.read_text(errors="replace")
                fig.data.update(
                    disk_bytes=DISK_BYTES,
                    model_bytes=BIG_BYTES,
                    status=status,
                    failed_after_s=seconds_since(t_pull, t_failed),
                    model_dir_after_failure=left,
                    model_dir_bytes_used_after_failure=disk_used,
                    small_remote_model_after=small_call or OK,
                    requests=by_code(load.outcomes),
                    failures=failure_list(load),
                    latency_ms=latency_ms(load.outcomes),
                    storage_gets=dict(storage.gets),
                )
                errors = " ".join(status["errors"])
                assert "no space left" in errors.lower(), status
                assert "internal error" not in errors.lower(), status
                assert [n for n in left if n != ".puller-certs"] == [], left
                assert not small_call, small_call
                assert not load.failures(), load.failures()[:5]
                assert "failed unexpectedly" not in runtime_log, runtime_log[-3000:]
                assert not sweep(cluster.addresses, local)
