"""Model type names and artifact files of the built-in runtime. No library imports, no network.

Owns which types exist (``sklearn``, ``xgboost``, ``lightgbm``, ``onnx``), how requested type strings map
to them (case-insensitive; ModelMesh labels such as ``mt:sklearn`` and versioned names such as
``sklearn:1``; common aliases) and how the model file is found when the puller hands over a directory.
The finder follows the link rule of ``puller.confine``: every path it looks at is resolved inside the
artifact's root first, and the file it returns is that real path (the one the library then opens).
"""

from __future__ import annotations

import os
from pathlib import Path

from puller.confine import Root, resolve_beneath, walk_beneath
from runtime_adapters.errors import UnsupportedModelType

EXTENSIONS: dict[str, tuple[str, ...]] = {
    "sklearn": (".joblib", ".pkl", ".pickle"),
    "xgboost": (".json", ".ubj", ".bst", ".model"),
    "lightgbm": (".txt", ".lgb", ".model"),
    "onnx": (".onnx",),
}
SUPPORTED_TYPES: tuple[str, ...] = tuple(EXTENSIONS)

_ALIASES = {
    "sklearn": "sklearn",
    "scikit-learn": "sklearn",
    "scikit_learn": "sklearn",
    "scikitlearn": "sklearn",
    "xgboost": "xgboost",
    "xgb": "xgboost",
    "lightgbm": "lightgbm",
    "lgbm": "lightgbm",
    "lgb": "lightgbm",
    "onnx": "onnx",
}
# Files an artifact directory may hold next to the model that share a model extension.
_NOT_MODELS = frozenset({"model-settings.json", "settings.json", "manifest.json", "config.json"})
_MAX_DEPTH = 3


class ArtifactProblem(Exception):
    """The artifact cannot be used; the message names the file or directory and the reason."""


def canonical_type(model_type: str) -> str:
    """``"mt:SKLearn"``, ``"sklearn:1"``, ``"scikit-learn"`` -> ``"sklearn"``; raise UnsupportedModelType."""
    parts = [p for p in model_type.strip().lower().split(":") if p]
    if parts and parts[0] == "mt":
        parts = parts[1:]
    name = _ALIASES.get(parts[0]) if parts else None
    if name is None:
        raise UnsupportedModelType(model_type=model_type, supported=SUPPORTED_TYPES)
    return name


def find_model_file(path: Path, model_type: str, root: Root | None = None) -> Path:
    """The real path of the model file for ``model_type`` at ``path``: the file itself, or the single file
    with a matching extension in the directory (searched a few levels deep; a file named ``model.*`` wins
    a tie). Everything is resolved inside ``root`` (default: ``path`` itself, or its directory for a
    file); a link leaving it raises ``puller.errors.PathEscapesRoot``."""
    exts = EXTENSIONS[model_type]
    path = Path(os.path.abspath(path))
    if root is None:
        root = Root.of(path if path.is_dir() else path.parent)
    real = resolve_beneath(root, path)
    if real.is_file():
        return real
    if not real.is_dir():
        raise ArtifactProblem(f"artifact path {path} does not exist")
    by_depth: dict[int, list[tuple[str, Path]]] = {}
    for f in walk_beneath(root, real, max_depth=_MAX_DEPTH, skip_hidden=True):
        if f.rel.suffix.lower() in exts and f.rel.name not in _NOT_MODELS:
            by_depth.setdefault(len(f.rel.parts), []).append((str(f.rel), f.real))
    if not by_depth:
        raise ArtifactProblem(f"no {model_type} model file ({', '.join(exts)}) in directory {path}")
    found = sorted(by_depth[min(by_depth)])
    if len(found) > 1:
        named_model = [real for rel, real in found if Path(rel).stem.lower() == "model"]
        if len(named_model) == 1:
            return named_model[0]
        names = ", ".join(rel for rel, _ in found[:5])
        raise ArtifactProblem(
            f"ambiguous {model_type} artifact: directory {path} holds several model files ({names})"
        )
    return found[0][1]
