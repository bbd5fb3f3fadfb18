"""The ``mesh`` CLI against a real 1-pod LocalCluster on the session etcd: register → status → infer →
cluster status → unregister, plus the error path, all through ``mesh.cli.main`` in-process."""

from __future__ import annotations

import importlib.util
import json
import uuid

import numpy as np
import pytest

from mesh.cli import main
from mesh.devtools.cluster import LocalCluster, pick_base_port
from mesh.devtools.demo import check_outputs, sample_entries
from tests.support.conditions import wait_for
from tests.support.samples import SAMPLES_DIR, ensure_samples

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("mesh.pod") is None, reason="mesh.pod not written yet"),
    pytest.mark.timeout(300),  # hang guard only; nothing here asserts on speed
]


@pytest.fixture(scope="module")
def samples():
    """The session's sample models (var/test-models, generated once per machine), default group."""
    return SAMPLES_DIR, sample_entries(ensure_samples())


@pytest.fixture(scope="module")
def cluster(etcd_server, samples, tmp_path_factory):
    models_dir, _ = samples
    with LocalCluster(
        pods=1,
        base_port=pick_base_port(0, 1),
        capacity=256 * 1024 * 1024,
        models_dir=models_dir,
        etcd=etcd_server.endpoint,
        kv_root=f"/mmtest/{uuid.uuid4().hex}/",
        data_dir=tmp_path_factory.mktemp("cluster"),
    ) as c:
        yield c


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_register_infer_status_unregister(cluster, samples, capsys):
    _, models = samples
    m = next(x for x in models if x["type"].startswith("sklearn"))
    addr = ["--address", cluster.addresses[0]]
    model_id = f"cli-{m['id']}"

    rc, out, err = run(capsys, *addr, "register", model_id, "--type", m["type"], "--path", m["path"])
    assert rc == 0, err
    assert json.loads(out)["status"] in ("NOT_LOADED", "LOADING", "LOADED")

    rc, out, err = run(capsys, *addr, "status", model_id)
    assert rc == 0, err
    assert json.loads(out)["status"] in ("NOT_LOADED", "LOADING", "LOADED")

    data = json.dumps({m["input_name"]: [m["row"]]})
    rc, out, err = run(capsys, *addr, "infer", model_id, "--data", data, "--datatype", m["datatype"])
    assert rc == 0, err
    outputs = json.loads(out)
    assert check_outputs({k: np.asarray(v) for k, v in outputs.items()}, m["expected"]), (
        outputs,
        m["expected"],
    )

    rc, out, err = run(capsys, *addr, "infer", model_id, "--data", data, "--datatype", m["datatype"], "--raw")
    assert rc == 0, err

    rc, out, err = run(capsys, *addr, "status", model_id)
    status = json.loads(out)
    assert status["status"] == "LOADED"
    assert [c["location"] for c in status["copies"] if c["status"] == "LOADED"] == ["pod-0"]

    # The cluster view is fed by watches and batched publications: wait until the pod's record shows it.
    def cluster_status_shows_the_copy():
        rc, out, err = run(capsys, *addr, "status", "--json")
        assert rc == 0, err
        st = json.loads(out)
        return st if any(x["model_id"] == model_id and x["loaded_on"] for x in st["models"]) else None

    st = wait_for(cluster_status_shows_the_copy, what="the copy in `mesh status --json`")
    assert [i["instance_id"] for i in st["instances"]] == ["pod-0"]
    assert any(x["model_id"] == model_id for x in st["models"])
    rc, out, err = run(capsys, *addr, "status")
    assert rc == 0 and "pod-0" in out and model_id in out

    rc, out, err = run(capsys, *addr, "unregister", model_id)
    assert rc == 0, err
    rc, out, err = run(capsys, *addr, "status", model_id)
    assert (rc == 0 and json.loads(out)["status"] == "NOT_FOUND") or err.startswith("error: NOT_FOUND: ")


def test_ensure_loaded_and_load_now(cluster, samples, capsys):
    _, models = samples
    m = models[-1]
    addr = ["--address", cluster.addresses[0]]
    model_id = f"cli-now-{m['id']}"
    rc, out, err = run(
        capsys, *addr, "register", model_id, "--type", m["type"], "--path", m["path"], "--load-now", "--sync"
    )
    assert rc == 0, err
    assert json.loads(out)["status"] in ("LOADED", "LOADING")
    rc, out, err = run(capsys, *addr, "ensure-loaded", model_id, "--sync")
    assert rc == 0, err
    assert json.loads(out)["status"] == "LOADED"
    assert run(capsys, *addr, "unregister", model_id)[0] == 0


def test_unknown_model_is_not_found(cluster, capsys):
    rc, _, err = run(capsys, "--address", cluster.addresses[0], "infer", "no-such-model", "--data", "[[1.0]]")
    assert rc == 1
    assert err.startswith("error: NOT_FOUND: ")


def test_bad_model_id_is_invalid_argument(cluster, capsys):
    rc, _, err = run(
        capsys, "--address", cluster.addresses[0], "register", "a/b", "--type", "sklearn", "--path", "x"
    )
    assert rc == 1
    assert err.startswith("error: INVALID_ARGUMENT: ")
