"""`mesh apply` end to end: a real 2-pod cluster on the session etcd with built-in runtimes, driven through
``mesh.cli.main`` in-process. Covers create, a second apply that changes nothing, dry run, in-place copy
bounds, a vModel move, replacement of a changed model, prune (only what the file's owner manages), conflicts
with hand-registered models, and invalid files."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from mesh.cli import main
from mesh.spec_digest import spec_digest
from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(300)  # hang guard only; nothing here asserts on speed


@pytest.fixture(scope="module")
def cluster(etcd_server, samples):  # noqa: F811
    c = make_cluster(etcd_server.endpoint, samples, pods=2, capacity=2_000_000)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def sample(samples, model_id):  # noqa: F811
    return samples["by_id"][model_id]


def write(tmp_path, text: str):
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def apply(capsys, cluster, path, *flags, pod=0):
    rc = main(["--address", cluster.addresses[pod], "apply", "-f", path, *flags])
    out = capsys.readouterr()
    return rc, out.out, out.err


def state(cluster, pod=0):
    st = cluster.client(pod).cluster_status()
    return {m["model_id"]: m for m in st["models"]}, {v["vmodel_id"]: v for v in st["vmodels"]}


def infer_ok(cluster, s, name, *, vmodel=False):
    inp = s["input"]
    data = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
    out = cluster.client(0).infer(name, {inp["name"]: data}, vmodel=vmodel)
    np.testing.assert_allclose(
        np.asarray(out["predict"]).ravel(), s["expected"]["predict"]["data"], rtol=1e-4
    )


def test_apply_creates_then_changes_nothing_then_reconciles_changes(cluster, samples, capsys, tmp_path):  # noqa: F811
    lr, rf, xgb = (sample(samples, i) for i in ("sklearn-iris-lr", "sklearn-iris-rf-small", "xgboost-iris"))
    first = f"""\
        owner: team-a
        models:
          - {{id: a-lr, type: {lr["type"]}, path: {lr["path"]}, minCopies: 1}}
          - {{id: a-rf, type: {rf["type"]}, path: {rf["path"]}}}
          - {{id: a-xgb, type: {xgb["type"]}, path: {xgb["path"]}, maxCopies: 1}}
        vmodels:
          - {{id: a-iris, target: a-lr}}
        """
    path = write(tmp_path, first)

    rc, out, err = apply(capsys, cluster, path)
    assert rc == 0, err
    assert (
        "model/a-lr created" in out
        and "model/a-xgb created" in out
        and "vmodel/a-iris created (-> a-lr)" in out
    )
    assert out.strip().endswith("4 created, 0 changed, 0 removed, 0 unchanged")
    models, vmodels = state(cluster)
    assert {
        k: (m["owner"], m["min_copies"], m["max_copies"]) for k, m in models.items() if k.startswith("a-")
    } == {
        "a-lr": ("team-a", 1, 0),
        "a-rf": ("team-a", 0, 0),
        "a-xgb": ("team-a", 0, 1),
    }
    assert models["a-rf"]["spec_digest"] == spec_digest(rf["type"], rf["path"], "")
    assert (vmodels["a-iris"]["owner"], vmodels["a-iris"]["target_model_id"]) == ("team-a", "a-lr")
    infer_ok(cluster, lr, "a-iris", vmodel=True)  # the registrations are real: the vmodel serves

    # the same file again, from either pod: nothing to do
    wait_for(lambda: "a-iris" in state(cluster, 1)[1], what="pod 1 sees the vmodel")
    for pod in (0, 1):
        rc, out, err = apply(capsys, cluster, path, pod=pod)
        assert rc == 0, err
        assert out.strip().endswith("0 created, 0 changed, 0 removed, 4 unchanged"), out

    # a hand-registered model (no owner) that --prune must never remove
    cluster.client(0).register("hand-made", rf["type"], rf["path"])

    second = f"""\
        owner: team-a
        models:
          - {{id: a-rf, type: {rf["type"]}, path: {rf["path"]}, minCopies: 1, maxCopies: 2}}
          - {{id: a-xgb, type: {rf["type"]}, path: {rf["path"]}}}
          - {{id: a-rf2, type: {rf["type"]}, path: {rf["path"]}}}
        vmodels:
          - {{id: a-iris, target: a-rf2}}
        """
    path = write(tmp_path, second)
    before = state(cluster)
    rc, out, err = apply(capsys, cluster, path, "--prune", "--dry-run")
    # a-lr left the file, but a-iris points at it until its move to a-rf2 is done: reported, not pruned
    assert rc == 1
    assert "model/a-lr: not pruned: still referenced by vmodel(s) a-iris" in err
    assert "model/a-rf configured (minCopies 0 -> 1, maxCopies 0 -> 2) (dry run)" in out
    assert "model/a-xgb replaced (type changed: unregistered and registered again" in out
    assert "model/a-rf2 created (dry run)" in out
    assert (
        "vmodel/a-iris configured (target a-lr -> a-rf2; traffic stays on a-lr until a-rf2 is loaded)" in out
    )
    assert "hand-made" not in out + err
    assert "nothing was changed" in out
    assert state(cluster) == before

    rc, out, err = apply(capsys, cluster, path, "--prune")
    assert rc == 1 and "model/a-lr: not pruned: still referenced by vmodel(s) a-iris" in err
    assert "model/a-rf configured" in out and "model/a-xgb replaced" in out and "model/a-rf2 created" in out
    models, vmodels = state(cluster)
    assert (models["a-rf"]["min_copies"], models["a-rf"]["max_copies"]) == (1, 2)
    assert models["a-xgb"]["spec_digest"] == spec_digest(rf["type"], rf["path"], "")
    assert vmodels["a-iris"]["target_model_id"] == "a-rf2"
    infer_ok(cluster, rf, "a-xgb")  # the replaced model serves its new path

    # once the move is done, the same file converges (a-lr goes), and then nothing changes
    wait_for(lambda: state(cluster)[1]["a-iris"]["active_model_id"] == "a-rf2", timeout=60, what="transition")
    rc, out, err = apply(capsys, cluster, path, "--prune")
    assert rc == 0, err
    assert "model/a-lr pruned" in out and out.strip().endswith("0 created, 0 changed, 1 removed, 4 unchanged")
    rc, out, err = apply(capsys, cluster, path, "--prune")
    assert rc == 0 and out.strip().endswith("0 created, 0 changed, 0 removed, 4 unchanged"), out + err
    models, _ = state(cluster)
    assert "a-lr" not in models and "hand-made" in models and models["hand-made"]["owner"] == ""


def test_apply_adopts_identical_and_refuses_different_hand_registrations(cluster, samples, capsys, tmp_path):  # noqa: F811
    lr, rf = sample(samples, "sklearn-iris-lr"), sample(samples, "sklearn-iris-rf-small")
    c = cluster.client(0)
    c.register("b-same", lr["type"], lr["path"])
    c.register("b-diff", lr["type"], lr["path"])
    c.register("b-other-owner", lr["type"], lr["path"], owner="someone")
    path = write(
        tmp_path,
        f"""\
        owner: team-b
        models:
          - {{id: b-same, type: {lr["type"]}, path: {lr["path"]}}}
          - {{id: b-diff, type: {rf["type"]}, path: {rf["path"]}}}
          - {{id: b-other-owner, type: {lr["type"]}, path: {lr["path"]}}}
        vmodels:
          - {{id: b-v, target: b-diff}}
        """,
    )
    rc, out, err = apply(capsys, cluster, path, "--prune")
    assert rc == 1
    assert "model/b-same adopted (registered by hand with the same spec)" in out
    assert "model/b-diff: registered outside mesh apply with a different path/key; not touched" in err
    assert "model/b-other-owner: owned by 'someone', not by 'team-b'" in err
    assert "vmodel/b-v: skipped: its target model 'b-diff' has a conflict" in err
    models, vmodels = state(cluster)
    assert models["b-same"]["owner"] == "team-b"
    assert models["b-diff"]["owner"] == "" and models["b-diff"]["spec_digest"] == spec_digest(
        lr["type"], lr["path"], ""
    )
    assert models["b-other-owner"]["owner"] == "someone"
    assert "b-v" not in vmodels
    # registering by hand over a model owned by apply with another owner is refused by the mesh itself
    with pytest.raises(Exception, match="owned by 'team-b'"):
        c.register("b-same", lr["type"], lr["path"], owner="intruder")
    c.register("b-same", lr["type"], lr["path"])  # a ModelMesh client naming no owner is still fine
    assert state(cluster)[0]["b-same"]["owner"] == "team-b"


def test_apply_rejects_an_invalid_file_and_changes_nothing(cluster, capsys, tmp_path):
    path = write(
        tmp_path,
        """\
        models:
          - id: c-one
            type: sklearn
            minCopies: lots
          - id: c-one
            type: sklearn
            path: x
        """,
    )
    before = state(cluster)
    rc, _out, err = apply(capsys, cluster, path)
    assert rc == 2
    assert f"{path}:4: models[0].minCopies: must be an integer from 0 to 1000 (got 'lots')" in err
    assert f"{path}:5: model 'c-one': also defined at line 2" in err
    assert state(cluster) == before
