"""Reading rendered manifests the way the kubelet would: a container's environment (envFrom, then env in
order, ``$(VAR)`` expanded against names defined before it), downward-API values, quantities, and the
Dockerfile's ENTRYPOINT of the image a container runs. Used by the manifest tests and by the test that runs
a pod's containers as local processes."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from tests.deploy.kustomize import build, find, pod_spec

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
TARGETS = ("base", "overlays/dev", "overlays/tls", "overlays/mlserver")
IMAGE_PREFIX = "modelmesh-py/"

_QUANTITY = re.compile(r"^([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T|m)?$")
_SUFFIX = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6,
           "G": 10**9, "T": 10**12, "m": 0.001}  # fmt: skip
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@cache
def _rendered(target: str) -> str:
    return json.dumps(build(KUBE / target))


def rendered(target: str) -> list[dict[str, Any]]:
    """A fresh copy of the rendered objects of ``target`` (rendered once per session)."""
    return json.loads(_rendered(target))


def quantity(value: str | int) -> float:
    m = _QUANTITY.match(str(value))
    if not m:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined names are replaced, others stay as written."""
    return _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def container_env(
    container: dict[str, Any], objects: list[dict[str, Any]], field_values: dict[str, str]
) -> dict[str, str]:
    """The environment the kubelet would give ``container``; ``field_values`` maps fieldRef paths
    (``status.podIP`` …) to values. Secret values are read from ``stringData``."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        env.update({k: str(v) for k, v in find(objects, "ConfigMap", ref).get("data", {}).items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[item["name"]] = field_values[source["fieldRef"]["fieldPath"]]
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            owner = next(c for c in pod_containers(objects, container) if c["name"] == ref["containerName"])
            kind, _, res = ref["resource"].partition(".")
            raw = quantity(owner["resources"][kind][res]) / quantity(ref.get("divisor", "1"))
            env[item["name"]] = str(int(raw))
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[item["name"]] = str(find(objects, "ConfigMap", ref["name"])["data"][ref["key"]])
        else:
            raise AssertionError(f"unsupported valueFrom in {item}")
    return env


def env_helpers(container: dict[str, Any]) -> set[str]:
    """Env names that only feed ``$(VAR)`` references of later entries (wiring, not settings)."""
    values = [str(i.get("value", "")) for i in container.get("env", [])] + list(container.get("args", []))
    referenced = {m for v in values for m in _VAR_REF.findall(v)}
    return {i["name"] for i in container.get("env", []) if "valueFrom" in i and i["name"] in referenced}


def pod_containers(objects: list[dict[str, Any]], container: dict[str, Any]) -> list[dict[str, Any]]:
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None and any(c is container or c == container for c in spec.get("containers", [])):
            return spec["containers"]
    raise KeyError(container.get("name"))


def workload(objects: list[dict[str, Any]], kind: str, name: str) -> tuple[dict, dict[str, dict]]:
    """(pod spec, containers by name) of one workload."""
    spec = pod_spec(find(objects, kind, name))
    assert spec is not None
    return spec, {c["name"]: c for c in spec["containers"]}


def image_target(image: str) -> str:
    """``modelmesh-py/runtime-builtin:dev`` → ``runtime-builtin`` (the Dockerfile target building it)."""
    assert image.startswith(IMAGE_PREFIX), image
    return image[len(IMAGE_PREFIX) :].split(":", 1)[0]


def dockerfile_stages(text: str | None = None) -> dict[str, list[tuple[str, str]]]:
    """Stage name → its instructions ``(KEYWORD, rest)`` with line continuations joined; a stage's
    ``FROM`` is its first instruction."""
    text = DOCKERFILE.read_text() if text is None else text
    joined = re.sub(r"\\\n", " ", text)
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, line
            current = stages.setdefault(m.group(2) or f"stage{len(stages)}", [])
        if current is not None:
            current.append((keyword, rest.strip()))
    return stages


def entrypoint(target: str) -> list[str]:
    """The exec-form ENTRYPOINT of a final Dockerfile target."""
    for keyword, rest in reversed(dockerfile_stages()[target]):
        if keyword == "ENTRYPOINT":
            return json.loads(rest)
    raise AssertionError(f"target {target} has no ENTRYPOINT")
