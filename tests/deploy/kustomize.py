"""A tiny kustomize for the subset that deploy/kubernetes uses, so the tests render every overlay without a
kustomize binary (none is installed by the project; when ``kubectl`` is on the PATH a test compares the two).

Supported ``kustomization.yaml`` fields: ``resources`` (YAML files, or directories holding a
kustomization), ``namespace``, ``patches`` (``path:`` a strategic-merge patch, matched to its resource by
kind and name) and ``images`` (``name`` with ``newName``/``newTag``). Any other field raises
``KustomizeError``: a new feature in an overlay cannot be silently ignored here.

Strategic merge, as Kubernetes defines it for the fields used: maps merge key by key (a ``null`` value
deletes the key); lists of objects merge item by item on the field's patch merge key (containers, volumes,
env, imagePullSecrets by ``name``; volumeMounts by ``mountPath``; container ports by ``containerPort``,
Service ports by ``port``), and the patch's items come first, in its order, then the others (as
kustomize's kyaml orders them: order matters for ``$(VAR)`` references in ``env``); an item with
``$patch: delete`` removes its match; every other list is replaced.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "patches", "images"}
# field name -> patch merge key of its list items (Kubernetes' x-kubernetes-patch-merge-key)
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "volumeMounts": "mountPath",
}
# Kinds whose pod template lives at these paths (for ``images``).
POD_SPEC_PATHS = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}


class KustomizeError(Exception):
    pass


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The non-empty YAML documents of a file."""
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def build(directory: Path) -> list[dict[str, Any]]:
    """Render the kustomization in ``directory`` (like ``kustomize build``), resources in input order."""
    directory = Path(directory)
    kfile = directory / "kustomization.yaml"
    if not kfile.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported fields {sorted(unknown)} (tests/deploy/kustomize.py)")
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        objects.extend(build(target) if target.is_dir() else load_documents(target))
    for patch in spec.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{kfile}: only `patches: - path: FILE` is supported, got {patch}")
        for doc in load_documents(directory / patch["path"]):
            _apply_patch(objects, doc, where=f"{kfile.parent.name}/{patch['path']}")
    for image in spec.get("images", []):
        _set_image(objects, image)
    if "namespace" in spec:
        for obj in objects:
            obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return objects


def _apply_patch(objects: list[dict[str, Any]], patch: dict[str, Any], *, where: str) -> None:
    kind, name = patch.get("kind"), patch.get("metadata", {}).get("name")
    matches = [o for o in objects if o.get("kind") == kind and o.get("metadata", {}).get("name") == name]
    if len(matches) != 1:
        raise KustomizeError(f"{where}: patch for {kind}/{name} matches {len(matches)} resources, not 1")
    merged = strategic_merge(matches[0], patch)
    matches[0].clear()
    matches[0].update(merged)


def strategic_merge(base: Any, patch: Any, field: str = "") -> Any:
    """``patch`` merged into a copy of ``base`` (strategic merge for the fields listed in the docstring)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, key)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = _merge_key(field, base + patch)
        if key is None:
            return copy.deepcopy(patch)
        rest = copy.deepcopy(base)
        head = []
        for item in patch:
            index = next((i for i, b in enumerate(rest) if b.get(key) == item.get(key)), None)
            match = rest.pop(index) if index is not None else None
            if item.get("$patch") == "delete":
                continue
            head.append(copy.deepcopy(item) if match is None else strategic_merge(match, item))
        return head + rest  # kustomize (kyaml) lists the patch's items first, in the patch's order
    return copy.deepcopy(patch)


def _merge_key(field: str, items: list[Any]) -> str | None:
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    if field == "ports":
        return "containerPort" if all("containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(field)


def _set_image(objects: list[dict[str, Any]], image: dict[str, Any]) -> None:
    unknown = set(image) - {"name", "newName", "newTag"}
    if unknown:
        raise KustomizeError(f"images: unsupported fields {sorted(unknown)}")
    for container in containers(objects, include_init=True):
        ref = container.get("image", "")
        name, _, tag = ref.partition(":")
        if name != image["name"]:
            continue
        container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}".rstrip(":")


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    path = POD_SPEC_PATHS.get(obj.get("kind", ""))
    node: Any = obj
    for part in path or ():
        node = node.get(part) if isinstance(node, dict) else None
    return node if path and isinstance(node, dict) else None


def containers(objects: list[dict[str, Any]], *, include_init: bool = False) -> list[dict[str, Any]]:
    """Every container (and init container) of every pod template, as live references."""
    out = []
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        out.extend(spec.get("containers", []))
        if include_init:
            out.extend(spec.get("initContainers", []))
    return out


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(matches) != 1:
        raise KeyError(f"{kind}/{name}: {len(matches)} matches")
    return matches[0]
