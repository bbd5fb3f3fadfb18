"""etcd outage: loaded models keep serving, management fails fast with UNAVAILABLE, and the cluster converges
without restarts once etcd is back (leases re-granted, instance records re-published, watches resumed)."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from mesh.client import MeshClientError
from mesh.devtools.etcd import EmbeddedEtcd
from tests.support.mesh_cluster import FAST_POD_ARGS, MeshTestCluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)

OUTAGE_S = 10.0


def infer(client, sample):
    inp = sample["input"]
    out = client.infer(sample["id"], {inp["name"]: np.asarray(inp["data"], np.float32).reshape(inp["shape"])})
    np.testing.assert_allclose(
        np.asarray(out["predict"]).ravel(), sample["expected"]["predict"]["data"], rtol=1e-4, atol=1e-5
    )


def _register_fails_unavailable(client, sample) -> bool:
    try:
        client.register("during-outage", sample["type"], sample["path"])
    except MeshClientError as exc:
        return exc.code == "UNAVAILABLE"
    return False


def test_etcd_outage_keeps_serving_and_converges(samples):  # noqa: F811
    many = [m for m in samples["models"] if m["group"] == "many"]
    a, b, later = many[5], many[6], many[7]
    with (
        EmbeddedEtcd() as etcd,
        MeshTestCluster(
            pods=2,
            capacity=2_000_000,
            models_dir=samples["dir"],
            etcd=etcd.endpoint,
            kv_root=f"/mmtest/{uuid.uuid4().hex}/",
            pod_args=FAST_POD_ARGS,
        ) as cluster,
    ):
        c0, c1 = cluster.client(0), cluster.client(1)
        for m in (a, b, later):
            c0.register(m["id"], m["type"], m["path"])
        infer(c0, a)
        infer(c1, b)

        stop, errors, served = threading.Event(), [], [0]

        def drive(client):
            while not stop.is_set():
                for m in (a, b):
                    try:
                        infer(client, m)
                        served[0] += 1
                    except Exception as exc:
                        errors.append(exc)
                time.sleep(0.02)

        threads = [
            threading.Thread(target=drive, args=(c,), daemon=True)
            for c in (cluster.client(0), cluster.client(1))
        ]
        for t in threads:
            t.start()
        etcd.stop()
        down_at = time.monotonic()
        try:
            # management fails fast with UNAVAILABLE while etcd is down
            wait_for(
                lambda: _register_fails_unavailable(c0, later), timeout=10, what="UNAVAILABLE from register"
            )
            with pytest.raises(MeshClientError) as err:
                c1.unregister(a["id"])
            assert err.value.code == "UNAVAILABLE"
            served_during = served[0]
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
            assert served[0] > served_during, "inference stopped during the etcd outage"
        finally:
            etcd.restart()
        # converge: management works again, both pods are back in the view, new models load and serve
        wait_for(lambda: not _register_fails_unavailable(c0, later), timeout=30, what="management back")
        wait_for(
            lambda: len(c1.cluster_status()["instances"]) == 2, timeout=30, what="both pods re-published"
        )
        infer(c1, later)
        assert c0.status(later["id"])["status"] == "LOADED"
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        # the loaded models were never lost from the registry
        for m in (a, b):
            assert c0.status(m["id"])["status"] == "LOADED"
