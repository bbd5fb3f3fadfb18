"""MLServer behind a real mesh pod (``LocalCluster(runtime="mlserver")``, the ``mesh up --runtime mlserver``
path, on the session etcd): sklearn and xgboost models registered and inferred through the mesh
(predictions checked against the samples manifest), LRU eviction under a small capacity unloading models
inside MLServer (RepositoryIndex), and recovery after MLServer is SIGKILLed (the adapter restarts it, the
mesh reloads on demand). The tests share one cluster and run in file order."""

from __future__ import annotations

import uuid

import pytest

from mesh.client import MeshClient, MeshClientError
from mesh.devtools.cluster import LocalCluster
from mesh.devtools.demo import check_outputs
from tests.support.conditions import wait_for
from tests.support.mlserver import mlserver_bin, mlserver_pids, repository_index, runtime_samples  # noqa: F401

pytestmark = pytest.mark.timeout(240)  # hang guard only

CAPACITY = 10 << 20  # room for ~1-3 copies of iris-rf-large (1.5 MB on disk, 3-8 MB loaded)


@pytest.fixture(scope="module")
def cluster(etcd_server, runtime_samples, mlserver_bin, tmp_path_factory):  # noqa: F811
    samples_dir, _ = runtime_samples
    c = LocalCluster(
        pods=1,
        base_port=0,
        capacity=CAPACITY,
        models_dir=samples_dir,
        etcd=etcd_server.endpoint,
        kv_root=f"/mmtest/{uuid.uuid4().hex}/",
        data_dir=tmp_path_factory.mktemp("mlserver-cluster"),
        runtime="mlserver",
        startup_timeout=120,
    )
    with c:
        yield c


def _infer(client: MeshClient, model_id: str, entry: dict) -> dict:
    return client.infer(model_id, [entry["row"]], datatype=entry["datatype"], input_name=entry["input_name"])


def _mlserver(cluster: LocalCluster) -> str:
    return f"127.0.0.1:{cluster.serving_port(0)}"


def test_sklearn_and_xgboost_through_the_mesh(cluster, runtime_samples):  # noqa: F811
    _, entries = runtime_samples
    with MeshClient(cluster.addresses[0], timeout=60) as client:
        for sample in ("sklearn-iris-lr", "sklearn-cancer-lr", "xgboost-iris"):
            entry = entries[sample]
            client.register(f"mls-{sample}", entry["type"], entry["path"])
            out = _infer(client, f"mls-{sample}", entry)
            assert check_outputs(out, entry["expected"]), (sample, out, entry["expected"])
            assert client.status(f"mls-{sample}")["status"] == "LOADED"
    index = repository_index(_mlserver(cluster))
    assert {index.get(f"mls-{s}") for s in ("sklearn-iris-lr", "sklearn-cancer-lr", "xgboost-iris")} == {
        "READY"
    }


def test_eviction_unloads_inside_mlserver(cluster, runtime_samples):  # noqa: F811
    _, entries = runtime_samples
    big = entries["sklearn-iris-rf-large"]
    # each copy reports at least its disk size (1.5 MB), so 8 copies (>= 12 MB) always exceed CAPACITY (10 MiB),
    # whatever the (noisy) measured sizes
    ids = [f"mls-big-{i}" for i in range(8)]
    with MeshClient(cluster.addresses[0], timeout=60) as client:
        for model_id in ids:
            client.register(model_id, big["type"], big["path"])
            assert check_outputs(_infer(client, model_id, big), big["expected"])
        index = repository_index(_mlserver(cluster))
        ready = [m for m in ids if index.get(m) == "READY"]
        assert ready and len(ready) < len(ids), index  # the newest stay, the LRU ones were unloaded
        assert ids[-1] in ready
        evicted = [m for m in ids if m not in ready]
        assert all(index.get(m) != "READY" for m in evicted)
        used = client.cluster_status()["instances"][0]["used_bytes"]
        assert 0 < used <= CAPACITY
        # An evicted model is loaded again on demand.
        assert check_outputs(_infer(client, evicted[0], big), big["expected"])
        assert repository_index(_mlserver(cluster)).get(evicted[0]) == "READY"


def test_mlserver_killed_is_restarted_and_models_reload(cluster, runtime_samples):  # noqa: F811
    _, entries = runtime_samples
    entry = entries["xgboost-iris"]
    pod = cluster.pods[0]
    before = mlserver_pids(pod.pid)
    assert len(before) == 1, before
    adapter_pids = {p for p in _descendants(pod.pid) if p not in before}
    import os
    import signal

    os.kill(before[0], signal.SIGKILL)
    errors: list[str] = []
    with MeshClient(cluster.addresses[0], timeout=30) as client:

        def served():
            try:
                return _infer(client, "mls-xgboost-iris", entry)
            except MeshClientError as exc:
                errors.append(exc.code)
                assert exc.code in ("UNAVAILABLE", "INTERNAL", "NOT_FOUND", "DEADLINE_EXCEEDED"), exc
                return None

        out = wait_for(served, timeout=90, interval=0.5, what="recovery after MLServer was killed")
        assert check_outputs(out, entry["expected"])
    after = mlserver_pids(pod.pid)
    assert len(after) == 1 and after != before  # a new MLServer
    assert adapter_pids <= set(_descendants(pod.pid))  # restarted by the adapter, not the mesh
    assert repository_index(_mlserver(cluster)).get("mls-xgboost-iris") == "READY"


def _descendants(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children(recursive=True)]
