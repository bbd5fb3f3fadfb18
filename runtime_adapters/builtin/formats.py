"""Model type names and artifact files of the built-in runtime. No library imports, no network.

Owns which types exist (``sklearn``, ``xgboost``, ``lightgbm``, ``onnx``), how requested type strings map
to them (case-insensitive; ModelMesh labels such as ``mt:sklearn`` and versioned names such as
``sklearn:1``; common aliases) and how the model file is found when the puller hands over a directory.
"""

from __future__ import annotations

from pathlib import Path

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


def find_model_file(path: Path, model_type: str) -> Path:
    """The model file for ``model_type`` at ``path``: the file itself, or the single file with a matching
    extension in the directory (searched a few levels deep; a file named ``model.*`` wins a tie)."""
    exts = EXTENSIONS[model_type]
    if path.is_file():
        return path
    if not path.is_dir():
        raise ArtifactProblem(f"artifact path {path} does not exist")
    found: list[Path] = []
    for depth in range(_MAX_DEPTH + 1):
        pattern = "/".join(["*"] * (depth + 1))
        found = sorted(
            p
            for p in path.glob(pattern)
            if p.is_file()
            and p.suffix.lower() in exts
            and p.name not in _NOT_MODELS
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if found:
            break
    if not found:
        raise ArtifactProblem(f"no {model_type} model file ({', '.join(exts)}) in directory {path}")
    if len(found) > 1:
        named_model = [p for p in found if p.stem.lower() == "model"]
        if len(named_model) == 1:
            return named_model[0]
        names = ", ".join(str(p.relative_to(path)) for p in found[:5])
        raise ArtifactProblem(
            f"ambiguous {model_type} artifact: directory {path} holds several model files ({names})"
        )
    return found[0]
