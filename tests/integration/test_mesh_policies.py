"""Placement and copy policies end to end: type constraints with pod labels, a second copy for a model in
continuous use (ModelMesh #151 fixed), and optional idle unload."""

from __future__ import annotations

import json
import threading
import time
import uuid

import numpy as np

from tests.support.mesh_cluster import FAST_POD_ARGS, MeshTestCluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)


class LabelledCluster(MeshTestCluster):
    """pod-1 carries the label ``fast``; every pod knows the type constraints."""

    def pod_cmd(self, index, port, runtime_port, metrics_port, rest_port=0):
        cmd = super().pod_cmd(index, port, runtime_port, metrics_port, rest_port)
        return [*cmd, "--labels", "fast"] if index == 1 else cmd


def infer(client, sample, model_id):
    inp = sample["input"]
    out = client.infer(model_id, {inp["name"]: np.asarray(inp["data"], np.float32).reshape(inp["shape"])})
    np.testing.assert_allclose(
        np.asarray(out["predict"]).ravel(), sample["expected"]["predict"]["data"], rtol=1e-4
    )


def loaded_on(client, model_id):
    return sorted(c["location"] for c in client.status(model_id)["copies"] if c["status"] == "LOADED")


def test_required_labels_and_second_copy_for_continuous_use(etcd_server, samples):  # noqa: F811
    many = [m for m in samples["models"] if m["group"] == "many"]
    constraints = json.dumps({"mt:sklearn": {"required": ["fast"]}})
    args = (
        *FAST_POD_ARGS,
        "--type-constraints", constraints,
        "--stats-tick-s", "1",
        "--scale-check-interval-s", "1",
        "--second-copy-after-s", "3",
        "--scaleup-rpm-threshold", "1000000",
    )  # fmt: skip
    with LabelledCluster(
        pods=2,
        capacity=2_000_000,
        models_dir=samples["dir"],
        etcd=etcd_server.endpoint,
        kv_root=f"/mmtest/{uuid.uuid4().hex}/",
        pod_args=args,
    ) as cluster:
        c0, c1 = cluster.client(0), cluster.client(1)
        # models of type mt:sklearn may only live on pods labelled "fast", whoever receives the request
        for i, m in enumerate(many[10:14]):
            c0.register(f"labelled-{i}", "mt:sklearn", m["path"])
            infer(c0, m, f"labelled-{i}")
            assert loaded_on(c0, f"labelled-{i}") == ["pod-1"]
        # an unconstrained model in continuous (not heavy) use gets a second copy
        m = many[20]
        c0.register(m["id"], m["type"], m["path"])
        stop, errors = threading.Event(), []

        def drive():
            clients = (cluster.client(0), cluster.client(1))
            i = 0
            while not stop.is_set():
                try:
                    infer(clients[i % 2], m, m["id"])
                except Exception as exc:
                    errors.append(exc)
                i += 1
                time.sleep(0.2)

        t = threading.Thread(target=drive, daemon=True)
        t.start()
        try:
            wait_for(lambda: len(loaded_on(c1, m["id"])) == 2, timeout=40, what="a second copy")
        finally:
            stop.set()
            t.join()
        assert not errors, errors[:3]


def test_idle_unload(etcd_server, samples):  # noqa: F811
    m = [x for x in samples["models"] if x["group"] == "many"][21]
    with MeshTestCluster(
        pods=1,
        capacity=2_000_000,
        models_dir=samples["dir"],
        etcd=etcd_server.endpoint,
        kv_root=f"/mmtest/{uuid.uuid4().hex}/",
        pod_args=(*FAST_POD_ARGS, "--idle-unload-s", "2", "--janitor-interval-s", "1"),
    ) as cluster:
        c = cluster.client()
        c.register(m["id"], m["type"], m["path"])
        infer(c, m, m["id"])
        assert c.status(m["id"])["status"] == "LOADED"
        wait_for(lambda: c.status(m["id"])["status"] == "NOT_LOADED", timeout=20, what="idle unload")
        assert not cluster.runtime_ready(0, m["id"])
        infer(c, m, m["id"])  # and it loads again on demand
