"""``mesh apply``: reconcile a file of models and vModels with a running mesh, idempotently.

Owns the declarative model file (its schema and strict validation, with line numbers), the plan (a pure
function of the file and the cluster's current state) and its execution through the public management API
(``mmesh.ModelMesh`` via ``mesh.client.MeshClient``). The current state comes from one
``meshadmin.MeshAdmin/ClusterStatus`` call: every model with its owner, copy bounds and spec digest, and
every vModel.

The file (YAML)::

    owner: team-a                  # optional; marks what this file manages (default "mesh-apply")
    models:
      - id: iris                   # required, a model id
        type: sklearn              # required
        path: sklearn/iris-lr      # storage path (default "")
        storageKey: s3main         # storage-config entry; with storageParams: {bucket: ...}
        # key: '<raw model key>'   # instead of storageKey/storageParams
        minCopies: 1               # optional, 0..1000
        maxCopies: 2               # optional, 0..1000 (0 = no limit)
    vmodels:
      - id: iris-prod              # required, a vModel id
        target: iris               # required: a model in this file or already registered
        owner: team-a              # optional; default: the file's owner

What it manages, and so what ``--prune`` may remove: registrations whose owner is the file's owner (a vModel
given an ``owner`` of its own in the file is created and updated, but never pruned).
ModelMesh has no labels, so the owner travels with the registration: vModels have an owner field of their
own, and models get one through the ``mm-owner`` registration header (a mesh extension, like
``mm-min-copies``). A model or vModel registered by hand has no owner (or another one) and is never changed
or removed: a hand-registered model with exactly the file's spec is *adopted* (it gets the owner); one with
a different spec, or another owner, is reported as a conflict.

Changes: copy bounds change in place (registerModel with the new headers). A changed type, path or key
cannot change in place (ModelMesh refuses it), so the model is *replaced*: unregistered and registered again,
which drops its loaded copies (the next request loads the new version). That happens only when no vModel
references the model; otherwise it is a conflict, and the safe way is ModelMesh's own: give the new version
a new model id and move the vModel's target to it (the vModel keeps serving the old model until the new one
is loaded), then prune the old one. vModels move to a new target with setVModel (a transition); a vModel
whose transition failed is retried when the file still names that target.

Order of execution: models (create, configure, adopt, replace), then vModels, then pruned vModels, then
pruned models (a model still referenced by a vModel is not pruned: run apply again once the vModel's
transition has finished). Everything that can be done is done; conflicts and errors are reported at the end
and make the exit status 1. A second apply of the same file changes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mesh.errors import MeshError
from mesh.ids import check_id
from mesh.spec_digest import spec_digest

DEFAULT_OWNER = "mesh-apply"
MAX_COPIES = 1000
MAX_FILE_BYTES = 4 << 20

_TOP_FIELDS = {"owner", "models", "vmodels"}
_MODEL_FIELDS = {"id", "type", "path", "key", "storageKey", "storageParams", "minCopies", "maxCopies"}
_VMODEL_FIELDS = {"id", "target", "owner"}


# ---------------------------------------------------------------------------------------------------------
# The file


class ApplyFileError(ValueError):
    """The file is invalid; ``problems`` lists every problem found, each with its line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__("\n".join(f"{source}:{p}" for p in problems))
        self.source = source
        self.problems = problems


@dataclass(frozen=True)
class ModelDecl:
    id: str
    type: str
    path: str = ""
    key: str = ""
    min_copies: int = 0
    max_copies: int = 0
    line: int = 0

    @property
    def digest(self) -> str:
        return spec_digest(self.type, self.path, self.key)


@dataclass(frozen=True)
class VModelDecl:
    id: str
    target: str
    owner: str
    line: int = 0


@dataclass(frozen=True)
class ModelSet:
    owner: str
    models: tuple[ModelDecl, ...] = ()
    vmodels: tuple[VModelDecl, ...] = ()


def storage_key_json(storage_key: str, params: dict[str, Any]) -> str:
    """The model key ModelMesh-style runtimes read: ``{"storage_key": ..., "storage_params": {...}}``,
    compact with sorted keys so the same file always gives the same key (and so the same digest)."""
    out: dict[str, Any] = {}
    if storage_key:
        out["storage_key"] = storage_key
    if params:
        out["storage_params"] = params
    return json.dumps(out, sort_keys=True, separators=(",", ":")) if out else ""


class _Reader:
    """Turns a composed YAML node tree into a ModelSet, collecting problems with their lines."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self._constructor = yaml.SafeLoader("")

    def problem(self, node: yaml.Node, where: str, message: str) -> None:
        self.problems.append(f"{node.start_mark.line + 1}: {where}: {message}")

    def mapping(self, node: yaml.Node, where: str, allowed: set[str]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, where, "must be a mapping")
            return {}
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.problem(key_node, where, "keys must be strings")
            elif key in out:
                self.problem(key_node, f"{where}.{key}", "appears twice")
            elif key not in allowed:
                self.problem(
                    key_node, f"{where}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})"
                )
            else:
                out[key] = value_node
        return out

    def sequence(self, node: yaml.Node, where: str) -> list[yaml.Node]:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.problem(node, where, "must be a list")
            return []
        return list(node.value)

    def value(self, node: yaml.Node) -> Any:
        return self._constructor.construct_object(node, deep=True)

    def string(self, node: yaml.Node | None, where: str, *, required: bool = False, default: str = "") -> str:
        if node is None:
            return default
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, str):
            self.problem(node, where, "must be a string")
            return default
        if required and not value:
            self.problem(node, where, "must not be empty")
        return value

    def ident(self, node: yaml.Node | None, where: str, what: str, parent: yaml.Node) -> str:
        if node is None:
            self.problem(parent, where, "is required")
            return ""
        value = self.string(node, where)
        if value:
            try:
                check_id(value, what=what)
            except MeshError as exc:
                self.problem(node, where, exc.message)
        return value

    def copies(self, node: yaml.Node | None, where: str) -> int:
        if node is None:
            return 0
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COPIES:
            self.problem(node, where, f"must be an integer from 0 to {MAX_COPIES} (got {node_text(node)})")
            return 0
        return value

    def model(self, node: yaml.Node, where: str) -> ModelDecl | None:
        fields = self.mapping(node, where, _MODEL_FIELDS)
        if not fields and not isinstance(node, yaml.MappingNode):
            return None
        model_id = self.ident(fields.get("id"), f"{where}.id", "model id", node)
        model_type = self.string(fields.get("type"), f"{where}.type", required=True)
        if "type" not in fields:
            self.problem(node, f"{where}.type", "is required")
        path = self.string(fields.get("path"), f"{where}.path")
        key = self.string(fields.get("key"), f"{where}.key")
        storage_key = self.string(fields.get("storageKey"), f"{where}.storageKey")
        params: dict[str, Any] = {}
        if "storageParams" in fields:
            params_node = fields["storageParams"]
            value = self.value(params_node)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                self.problem(params_node, f"{where}.storageParams", "must be a mapping with string keys")
            else:
                params = value
        if "key" in fields and ("storageKey" in fields or "storageParams" in fields):
            self.problem(
                fields["key"], f"{where}.key", "give either key or storageKey/storageParams, not both"
            )
        elif "key" not in fields:
            key = storage_key_json(storage_key, params)
        lo = self.copies(fields.get("minCopies"), f"{where}.minCopies")
        hi = self.copies(fields.get("maxCopies"), f"{where}.maxCopies")
        if hi and lo > hi:
            self.problem(node, where, f"minCopies ({lo}) must not exceed maxCopies ({hi})")
        return ModelDecl(model_id, model_type, path, key, lo, hi, node.start_mark.line + 1)

    def vmodel(self, node: yaml.Node, where: str, default_owner: str) -> VModelDecl | None:
        fields = self.mapping(node, where, _VMODEL_FIELDS)
        if not fields and not isinstance(node, yaml.MappingNode):
            return None
        vmodel_id = self.ident(fields.get("id"), f"{where}.id", "vmodel id", node)
        target = self.ident(fields.get("target"), f"{where}.target", "target model id", node)
        owner = default_owner
        if "owner" in fields:
            owner = self.ident(fields["owner"], f"{where}.owner", "owner", node)
        return VModelDecl(vmodel_id, target, owner, node.start_mark.line + 1)


def node_text(node: yaml.Node) -> str:
    return repr(node.value) if isinstance(node, yaml.ScalarNode) else f"a {node.id}"


def parse_model_set(text: str, source: str = "<file>") -> ModelSet:
    """Parse and validate the file; raises ApplyFileError naming every problem (line and field)."""
    if len(text.encode()) > MAX_FILE_BYTES:
        raise ApplyFileError(source, [f"1: file: larger than {MAX_FILE_BYTES} bytes"])
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ApplyFileError(source, [f"{line}: not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if root is None:
        raise ApplyFileError(source, ["1: file: is empty (expected owner/models/vmodels)"])
    r = _Reader()
    top = r.mapping(root, "file", _TOP_FIELDS)
    owner = DEFAULT_OWNER
    if "owner" in top:
        owner = r.ident(top["owner"], "owner", "owner", root)
    models = [m for i, n in enumerate(r.sequence(top.get("models", _null()), "models"))
              if (m := r.model(n, f"models[{i}]")) is not None]  # fmt: skip
    vmodels = [v for i, n in enumerate(r.sequence(top.get("vmodels", _null()), "vmodels"))
               if (v := r.vmodel(n, f"vmodels[{i}]", owner)) is not None]  # fmt: skip
    for kind, items in (("model", models), ("vmodel", vmodels)):
        seen: dict[str, int] = {}
        for item in items:
            if item.id and item.id in seen:
                r.problems.append(f"{item.line}: {kind} '{item.id}': also defined at line {seen[item.id]}")
            seen.setdefault(item.id, item.line)
    if r.problems:
        raise ApplyFileError(source, r.problems)
    return ModelSet(owner, tuple(models), tuple(vmodels))


def _null() -> yaml.Node:
    return yaml.ScalarNode("tag:yaml.org,2002:null", "")


# ---------------------------------------------------------------------------------------------------------
# The cluster as it is


@dataclass(frozen=True)
class CurrentModel:
    id: str
    type: str
    owner: str
    min_copies: int
    max_copies: int
    digest: str


@dataclass(frozen=True)
class CurrentVModel:
    id: str
    owner: str
    active: str
    target: str
    status: str


@dataclass(frozen=True)
class ClusterState:
    models: dict[str, CurrentModel] = field(default_factory=dict)
    vmodels: dict[str, CurrentVModel] = field(default_factory=dict)

    @classmethod
    def from_status(cls, status: dict[str, Any]) -> ClusterState:
        """From ``MeshClient.cluster_status()``."""
        if any(not m.get("spec_digest") for m in status["models"]):
            # A pod from before mesh apply answers without digests, owners or vmodels: planning on that would
            # take every model for a hand-registered one.
            raise MeshError("the pod answering does not report model digests and owners; upgrade it first")
        models = {
            m["model_id"]: CurrentModel(
                m["model_id"], m["type"], m["owner"], m["min_copies"], m["max_copies"], m["spec_digest"]
            )
            for m in status["models"]
        }
        vmodels = {
            v["vmodel_id"]: CurrentVModel(
                v["vmodel_id"], v["owner"], v["active_model_id"], v["target_model_id"], v["status"]
            )
            for v in status["vmodels"]
        }
        return cls(models, vmodels)

    def referrers(self, model_id: str) -> list[str]:
        return sorted(v.id for v in self.vmodels.values() if model_id in (v.active, v.target))


# ---------------------------------------------------------------------------------------------------------
# The plan (pure)

CREATED, CHANGED, REMOVED = "created", "changed", "removed"


@dataclass(frozen=True)
class Action:
    """One change. ``kind`` is model/vmodel; ``op`` is what the executor calls; ``verb`` is what is printed."""

    kind: str
    id: str
    op: str  # register | replace | set_vmodel | delete_vmodel | unregister
    verb: str  # created | configured | adopted | replaced | pruned
    category: str  # CREATED | CHANGED | REMOVED
    detail: str = ""
    model: ModelDecl | None = None
    vmodel: VModelDecl | None = None

    def describe(self) -> str:
        return f"{self.kind}/{self.id} {self.verb}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class Plan:
    owner: str
    actions: list[Action] = field(default_factory=list)
    unchanged: list[tuple[str, str]] = field(default_factory=list)  # (kind/id, note)
    conflicts: list[str] = field(default_factory=list)


def plan(desired: ModelSet, current: ClusterState, *, prune: bool) -> Plan:
    """What to change so the cluster matches ``desired``, in execution order (see the module docstring)."""
    out = Plan(desired.owner)
    blocked: set[str] = set()  # model ids in conflict: vmodels pointing at them are skipped
    for m in desired.models:
        action, note = _plan_model(m, current.models.get(m.id), current, desired.owner)
        if action is not None:
            out.actions.append(action)
        elif note.startswith("conflict: "):
            out.conflicts.append(f"model/{m.id}: {note.removeprefix('conflict: ')}")
            blocked.add(m.id)
        else:
            out.unchanged.append((f"model/{m.id}", note))
    desired_models = {m.id for m in desired.models}
    for v in desired.vmodels:
        if v.target in blocked:
            out.conflicts.append(f"vmodel/{v.id}: skipped: its target model '{v.target}' has a conflict")
            continue
        if v.target not in desired_models and v.target not in current.models:
            out.conflicts.append(
                f"vmodel/{v.id}: target model '{v.target}' is neither in the file nor registered"
            )
            continue
        action, note = _plan_vmodel(v, current.vmodels.get(v.id))
        if action is not None:
            out.actions.append(action)
        elif note.startswith("conflict: "):
            out.conflicts.append(f"vmodel/{v.id}: {note.removeprefix('conflict: ')}")
        else:
            out.unchanged.append((f"vmodel/{v.id}", note))
    if prune:
        wanted_vmodels = {v.id for v in desired.vmodels}
        pruned_vmodels = {
            vid
            for vid, cur in current.vmodels.items()
            if cur.owner == desired.owner and vid not in wanted_vmodels
        }
        for vid in sorted(pruned_vmodels):
            out.actions.append(Action("vmodel", vid, "delete_vmodel", "pruned", REMOVED))
        still_referenced: dict[str, list[str]] = {}
        for vid, cur in current.vmodels.items():
            if vid not in pruned_vmodels:
                for mid in {cur.active, cur.target}:
                    still_referenced.setdefault(mid, []).append(vid)
        for v in desired.vmodels:
            still_referenced.setdefault(v.target, []).append(v.id)
        for mid, cur in sorted(current.models.items()):
            if cur.owner != desired.owner or mid in desired_models:
                continue
            refs = sorted(set(still_referenced.get(mid, [])))
            if refs:
                out.conflicts.append(
                    f"model/{mid}: not pruned: still referenced by vmodel(s) {', '.join(refs)} "
                    "(run apply again once their transitions have finished)"
                )
            else:
                out.actions.append(Action("model", mid, "unregister", "pruned", REMOVED))
    return out


def _plan_model(
    m: ModelDecl, cur: CurrentModel | None, current: ClusterState, owner: str
) -> tuple[Action | None, str]:
    if cur is None:
        return Action("model", m.id, "register", "created", CREATED, model=m), ""
    if cur.owner not in ("", owner):
        return None, f"conflict: owned by '{cur.owner}', not by '{owner}'"
    bounds = _bounds_change(cur, m)
    if cur.digest == m.digest:
        if cur.owner == "":
            detail = "registered by hand with the same spec" + (f"; {bounds}" if bounds else "")
            return Action("model", m.id, "register", "adopted", CHANGED, detail, model=m), ""
        if bounds:
            return Action("model", m.id, "register", "configured", CHANGED, bounds, model=m), ""
        return None, ""
    what = "type" if cur.type != m.type else "path/key"
    if cur.owner == "":
        return None, (
            f"conflict: registered outside mesh apply with a different {what}; not touched "
            "(unregister it by hand, or use another id in the file)"
        )
    refs = current.referrers(m.id)
    if refs:
        return None, (
            f"conflict: its {what} changed but vmodel(s) {', '.join(refs)} point at it, so it cannot be "
            "replaced; give the new version a new model id and move the vmodel's target to it"
        )
    detail = f"{what} changed: unregistered and registered again; loaded copies dropped"
    return Action("model", m.id, "replace", "replaced", CHANGED, detail, model=m), ""


def _bounds_change(cur: CurrentModel, m: ModelDecl) -> str:
    parts = []
    if cur.min_copies != m.min_copies:
        parts.append(f"minCopies {cur.min_copies} -> {m.min_copies}")
    if cur.max_copies != m.max_copies:
        parts.append(f"maxCopies {cur.max_copies} -> {m.max_copies}")
    return ", ".join(parts)


def _plan_vmodel(v: VModelDecl, cur: CurrentVModel | None) -> tuple[Action | None, str]:
    if cur is None:
        return Action("vmodel", v.id, "set_vmodel", "created", CREATED, f"-> {v.target}", vmodel=v), ""
    if cur.owner not in ("", v.owner):
        return None, f"conflict: owned by '{cur.owner}', not by '{v.owner}'"
    if cur.target != v.target:
        detail = (
            f"target {cur.target} -> {v.target}; traffic stays on {cur.active} until {v.target} is loaded"
        )
        verb = "adopted" if cur.owner == "" else "configured"
        return Action("vmodel", v.id, "set_vmodel", verb, CHANGED, detail, vmodel=v), ""
    if cur.owner == "":
        return Action(
            "vmodel", v.id, "set_vmodel", "adopted", CHANGED, "set by hand to the same target", vmodel=v
        ), ""
    if cur.status == "TRANSITION_FAILED":
        detail = f"retrying the failed transition to {v.target}"
        return Action("vmodel", v.id, "set_vmodel", "configured", CHANGED, detail, vmodel=v), ""
    note = "" if cur.status == "DEFINED" else f"{cur.status} to {cur.target}"
    return None, note


# ---------------------------------------------------------------------------------------------------------
# Execution


@dataclass
class Result:
    lines: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {CREATED: 0, CHANGED: 0, REMOVED: 0})
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)

    def summary(self, dry_run: bool) -> str:
        c = self.counts
        text = f"{c[CREATED]} created, {c[CHANGED]} changed, {c[REMOVED]} removed, {self.unchanged} unchanged"
        if self.errors:
            text += f", {len(self.errors)} failed"
        return text + (" (dry run: nothing was changed)" if dry_run else "")


def execute(p: Plan, client, *, dry_run: bool = False, echo: Callable[[str], None] | None = None) -> Result:
    """Carry out the plan through ``client`` (a ``MeshClient``); with ``dry_run`` only report it."""
    from mesh.client import MeshClientError

    res = Result(unchanged=len(p.unchanged), errors=list(p.conflicts))
    for ref, note in p.unchanged:
        res.lines.append(f"{ref} unchanged" + (f" ({note})" if note else ""))
    for a in p.actions:
        if not dry_run:
            try:
                _run_action(a, client, p.owner)
            except MeshClientError as exc:
                res.errors.append(f"{a.kind}/{a.id}: {a.op} failed: {exc.code}: {exc.message}")
                continue
        res.counts[a.category] += 1
        res.lines.append(a.describe() + (" (dry run)" if dry_run else ""))
        if echo is not None:
            echo(res.lines[-1])
    return res


def _run_action(a: Action, client, owner: str) -> None:
    if a.op in ("register", "replace"):
        m = a.model
        assert m is not None
        if a.op == "replace":
            client.unregister(m.id)
        client.register(
            m.id, m.type, m.path, m.key, min_copies=m.min_copies, max_copies=m.max_copies, owner=owner
        )
    elif a.op == "set_vmodel":
        v = a.vmodel
        assert v is not None
        client.set_vmodel(v.id, v.target, owner=v.owner)
    elif a.op == "delete_vmodel":
        client.delete_vmodel(a.id, owner=owner)
    elif a.op == "unregister":
        client.unregister(a.id)
    else:  # pragma: no cover - plan() only makes the ops above
        raise ValueError(f"unknown op {a.op}")


# ---------------------------------------------------------------------------------------------------------
# Command line (``mesh apply``; mesh/cli.py adds the subcommand and the connection flags)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", required=True, help="the models file (YAML); - reads stdin")
    parser.add_argument(
        "--prune", action="store_true", help="remove models/vmodels of this owner not in the file"
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")


def read_file(name: str) -> tuple[str, str]:
    if name == "-":
        return sys.stdin.read(), "<stdin>"
    return Path(name).read_text(), name


def run(args: argparse.Namespace, client) -> int:
    """The ``mesh apply`` command against a connected ``MeshClient``. Exit status 0, 1 (conflicts or
    failed calls) or 2 (invalid file)."""
    try:
        text, source = read_file(args.filename)
        desired = parse_model_set(text, source)
    except ApplyFileError as exc:
        print(f"error: invalid models file:\n{exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot read {args.filename}: {exc}", file=sys.stderr)
        return 2
    try:
        current = ClusterState.from_status(client.cluster_status(include_models=True))
    except MeshError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    p = plan(desired, current, prune=args.prune)
    result = execute(p, client, dry_run=args.dry_run)
    for line in result.lines:
        print(line)
    for err in result.errors:
        print(f"error: {err}", file=sys.stderr)
    print(f"apply (owner {desired.owner}): {result.summary(args.dry_run)}")
    return 1 if result.errors else 0
