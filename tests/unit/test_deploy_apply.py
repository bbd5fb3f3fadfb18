"""mesh apply without a cluster: the file's validation (every problem, with its line and field) and the plan
(a pure function of the file and the cluster state), as tables."""

from __future__ import annotations

import json
import textwrap

import pytest

from mesh.apply import (
    CHANGED,
    CREATED,
    REMOVED,
    ApplyFileError,
    ClusterState,
    CurrentModel,
    CurrentVModel,
    ModelDecl,
    ModelSet,
    VModelDecl,
    parse_model_set,
    plan,
    storage_key_json,
)
from mesh.spec_digest import spec_digest

GOOD = """\
owner: team-a
models:
  - id: iris
    type: sklearn
    path: sklearn/iris-lr
    storageKey: s3main
    storageParams: {bucket: models}
    minCopies: 1
    maxCopies: 2
  - id: raw
    type: onnx
    path: onnx/iris
    key: '{"storage_key": "web"}'
  - id: plain
    type: xgboost
vmodels:
  - id: iris-prod
    target: iris
  - id: other
    target: raw
    owner: someone-else
"""


def test_good_file_parses_with_defaults_and_key_json() -> None:
    ms = parse_model_set(GOOD)
    assert ms.owner == "team-a"
    iris, raw, plain = ms.models
    assert (iris.id, iris.type, iris.path, iris.min_copies, iris.max_copies) == (
        "iris", "sklearn", "sklearn/iris-lr", 1, 2,
    )  # fmt: skip
    assert json.loads(iris.key) == {"storage_key": "s3main", "storage_params": {"bucket": "models"}}
    assert raw.key == '{"storage_key": "web"}'  # a raw key is passed through unchanged
    assert (plain.path, plain.key, plain.min_copies, plain.max_copies) == ("", "", 0, 0)
    assert [(v.id, v.target, v.owner) for v in ms.vmodels] == [
        ("iris-prod", "iris", "team-a"),  # the file's owner by default
        ("other", "raw", "someone-else"),
    ]
    assert iris.line == 3 and ms.vmodels[1].line == 19


def test_key_json_is_stable() -> None:
    a = storage_key_json("s3", {"bucket": "b", "a": 1})
    assert (
        a
        == storage_key_json("s3", {"a": 1, "bucket": "b"})
        == '{"storage_key":"s3","storage_params":{"a":1,"bucket":"b"}}'
    )
    assert storage_key_json("", {}) == ""


def test_default_owner_and_empty_lists() -> None:
    ms = parse_model_set("models: []\nvmodels:\n")
    assert (ms.owner, ms.models, ms.vmodels) == ("mesh-apply", (), ())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models:\n  - id: a\n    type: t\n    colour: red\n", "4: models[0].colour: unknown field"),
        ("models:\n  - type: t\n", "2: models[0].id: is required"),
        ("models:\n  - id: a\n", "2: models[0].type: is required"),
        ("models:\n  - id: a/b\n    type: t\n", "2: models[0].id: model id 'a/b' must not contain '/'"),
        (
            "models:\n  - id: a\n    type: t\n    minCopies: many\n",
            "4: models[0].minCopies: must be an integer",
        ),
        (
            "models:\n  - id: a\n    type: t\n    maxCopies: 5000\n",
            "4: models[0].maxCopies: must be an integer",
        ),
        (
            "models:\n  - id: a\n    type: t\n    minCopies: 3\n    maxCopies: 2\n",
            "must not exceed maxCopies",
        ),
        ("models:\n  - id: a\n    type: t\n    key: k\n    storageKey: s\n", "4: models[0].key: give either"),
        (
            "models:\n  - id: a\n    type: t\n    storageParams: [1]\n",
            "4: models[0].storageParams: must be a map",
        ),
        ("models:\n  - id: a\n    type: 3\n", "3: models[0].type: must be a string"),
        ("models:\n  - {id: a, type: t}\n  - {id: a, type: u}\n", "3: model 'a': also defined at line 2"),
        ("vmodels:\n  - id: v\n", "2: vmodels[0].target: is required"),
        ("vmodels:\n  - {id: v, target: m, owner: 'x/y'}\n", "2: vmodels[0].owner: owner 'x/y'"),
        ("models: {id: a}\n", "1: models: must be a list"),
        ("model:\n  - id: a\n", "1: file.model: unknown field"),
        ("owner: a\nowner: b\n", "2: file.owner: appears twice"),
        ("models:\n  - id: a\n   type: t\n", "not valid YAML"),
        ("", "file: is empty"),
        ("- a\n", "1: file: must be a mapping"),
    ],
)
def test_invalid_files_name_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(ApplyFileError) as err:
        parse_model_set(text, "models.yaml")
    assert expected in str(err.value), str(err.value)
    assert all(str(err.value).startswith("models.yaml:") for _ in [0])


def test_every_problem_is_reported_at_once() -> None:
    text = textwrap.dedent(
        """\
        models:
          - id: a
          - id: b
            type: t
            extra: 1
        vmodels:
          - target: x
        """
    )
    with pytest.raises(ApplyFileError) as err:
        parse_model_set(text)
    lines = err.value.problems
    assert len(lines) == 3, lines
    assert lines[0].startswith("2: models[0].type") and lines[1].startswith("5: models[1].extra")
    assert lines[2].startswith("7: vmodels[0].id")


# ---------------------------------------------------------------------------------------------------------
# plan


def model(mid, type_="sklearn", path="p", key="", lo=0, hi=0) -> ModelDecl:
    return ModelDecl(mid, type_, path, key, lo, hi)


def current(mid, owner="me", type_="sklearn", path="p", key="", lo=0, hi=0) -> CurrentModel:
    return CurrentModel(mid, type_, owner, lo, hi, spec_digest(type_, path, key))


def state(models=(), vmodels=()) -> ClusterState:
    return ClusterState({m.id: m for m in models}, {v.id: v for v in vmodels})


def cv(vid, target, owner="me", active=None, status="DEFINED") -> CurrentVModel:
    return CurrentVModel(vid, owner, active or target, target, status)


def summary(p) -> list[tuple[str, str, str]]:
    return [(f"{a.kind}/{a.id}", a.verb, a.category) for a in p.actions]


def test_plan_creates_what_is_missing_and_keeps_what_matches() -> None:
    desired = ModelSet("me", (model("a"), model("b", lo=1)), (VModelDecl("v", "a", "me"),))
    p = plan(desired, state([current("b", lo=1)]), prune=False)
    assert summary(p) == [("model/a", "created", CREATED), ("vmodel/v", "created", CREATED)]
    assert p.unchanged == [("model/b", "")] and p.conflicts == []


def test_plan_second_run_changes_nothing() -> None:
    desired = ModelSet("me", (model("a", lo=1, hi=2),), (VModelDecl("v", "a", "me"),))
    p = plan(desired, state([current("a", lo=1, hi=2)], [cv("v", "a")]), prune=True)
    assert p.actions == [] and p.conflicts == []
    assert [u[0] for u in p.unchanged] == ["model/a", "vmodel/v"]


def test_plan_copy_bounds_change_in_place() -> None:
    p = plan(ModelSet("me", (model("a", lo=2, hi=3),)), state([current("a", lo=1)]), prune=False)
    assert summary(p) == [("model/a", "configured", CHANGED)]
    assert p.actions[0].detail == "minCopies 1 -> 2, maxCopies 0 -> 3" and p.actions[0].op == "register"


def test_plan_replaces_an_unreferenced_managed_model_whose_spec_changed() -> None:
    p = plan(ModelSet("me", (model("a", path="new"),)), state([current("a", path="old")]), prune=False)
    assert summary(p) == [("model/a", "replaced", CHANGED)] and p.actions[0].op == "replace"
    assert "path/key changed" in p.actions[0].detail


def test_plan_refuses_to_replace_a_model_a_vmodel_points_at() -> None:
    desired = ModelSet("me", (model("a", type_="onnx"),), (VModelDecl("v", "a", "me"),))
    p = plan(desired, state([current("a")], [cv("v", "a")]), prune=False)
    assert p.actions == []
    assert p.conflicts[0].startswith("model/a: its type changed but vmodel(s) v point at it")
    assert p.conflicts[1] == "vmodel/v: skipped: its target model 'a' has a conflict"


def test_plan_never_touches_hand_registered_models_with_another_spec() -> None:
    p = plan(
        ModelSet("me", (model("a", path="mine"),)), state([current("a", owner="", path="theirs")]), prune=True
    )
    assert p.actions == []
    assert "registered outside mesh apply with a different path/key; not touched" in p.conflicts[0]


def test_plan_adopts_hand_registered_models_with_the_same_spec() -> None:
    p = plan(ModelSet("me", (model("a", hi=2),)), state([current("a", owner="")]), prune=False)
    assert summary(p) == [("model/a", "adopted", CHANGED)]
    assert p.actions[0].detail == "registered by hand with the same spec; maxCopies 0 -> 2"


def test_plan_reports_models_and_vmodels_of_another_owner() -> None:
    desired = ModelSet("me", (model("a"),), (VModelDecl("v", "b", "me"),))
    p = plan(
        desired,
        state([current("a", owner="other"), current("b", owner="")], [cv("v", "b", owner="x")]),
        prune=False,
    )
    assert p.actions == []
    assert p.conflicts == ["model/a: owned by 'other', not by 'me'", "vmodel/v: owned by 'x', not by 'me'"]


def test_plan_vmodel_target_must_exist() -> None:
    p = plan(ModelSet("me", (), (VModelDecl("v", "nowhere", "me"),)), state(), prune=False)
    assert p.conflicts == ["vmodel/v: target model 'nowhere' is neither in the file nor registered"]


def test_plan_vmodel_moves_and_retries_a_failed_transition() -> None:
    desired = ModelSet(
        "me", (model("a"), model("b")), (VModelDecl("v", "b", "me"), VModelDecl("w", "b", "me"))
    )
    cur = state(
        [current("a"), current("b")], [cv("v", "a"), cv("w", "b", active="a", status="TRANSITION_FAILED")]
    )
    p = plan(desired, cur, prune=False)
    assert summary(p) == [("vmodel/v", "configured", CHANGED), ("vmodel/w", "configured", CHANGED)]
    assert p.actions[0].detail == "target a -> b; traffic stays on a until b is loaded"
    assert p.actions[1].detail == "retrying the failed transition to b"


def test_plan_prunes_only_what_this_owner_manages() -> None:
    cur = state(
        [current("keep"), current("gone"), current("hand", owner=""), current("theirs", owner="x")],
        [cv("v-gone", "gone"), cv("v-hand", "hand", owner=""), cv("v-theirs", "theirs", owner="x")],
    )
    p = plan(ModelSet("me", (model("keep"),)), cur, prune=True)
    assert summary(p) == [("vmodel/v-gone", "pruned", REMOVED), ("model/gone", "pruned", REMOVED)]
    assert p.conflicts == []
    assert plan(ModelSet("me", (model("keep"),)), cur, prune=False).actions == []


def test_plan_does_not_prune_a_model_still_referenced() -> None:
    # v moves from old to new in this run: old stays referenced until the transition completes
    cur = state([current("old"), current("new")], [cv("v", "old"), cv("hand", "new", owner="")])
    p = plan(ModelSet("me", (model("x"),), (VModelDecl("v", "x", "me"),)), cur, prune=True)
    assert ("model/old", "pruned", REMOVED) not in summary(p)
    assert any(c.startswith("model/old: not pruned: still referenced by vmodel(s) v") for c in p.conflicts)
    assert any(c.startswith("model/new: not pruned: still referenced by vmodel(s) hand") for c in p.conflicts)


def test_cluster_state_from_status_and_refusal_of_a_pod_without_digests() -> None:
    from mesh.errors import MeshError

    status = {
        "models": [
            {
                "model_id": "a",
                "type": "t",
                "owner": "me",
                "min_copies": 1,
                "max_copies": 0,
                "spec_digest": "d",
            }
        ],
        "vmodels": [
            {
                "vmodel_id": "v",
                "owner": "me",
                "active_model_id": "a",
                "target_model_id": "a",
                "status": "DEFINED",
            }
        ],
    }
    st = ClusterState.from_status(status)
    assert st.models["a"] == CurrentModel("a", "t", "me", 1, 0, "d") and st.referrers("a") == ["v"]
    status["models"][0]["spec_digest"] = ""  # what a pod older than mesh apply answers
    with pytest.raises(MeshError, match="upgrade it first"):
        ClusterState.from_status(status)
