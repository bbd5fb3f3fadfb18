"""TritonAdapter: Triton's model repository layout for explicit model-control mode.

Triton (``tritonserver --model-control-mode=explicit --model-repository=<repo>``) loads a model by name
from ``<repo>/<name>/``: numbered version folders holding ``model.<ext>`` plus an optional
``config.pbtxt``. For a pulled artifact this adapter builds (as ModelMesh's Triton adapter does, with
symlinks to the pulled files rather than copies):

- a single model file -> ``<repo>/<id>/1/model.<ext>`` and a minimal ``config.pbtxt`` naming the
  platform/backend (Triton auto-completes inputs/outputs for ONNX, TensorRT and TF SavedModel);
- a SavedModel directory -> ``<repo>/<id>/1/model.savedmodel``;
- a directory already in Triton's layout (``config.pbtxt`` and/or numbered version folders) -> the version
  folders linked as they are and the config copied with its top-level ``name`` removed, since Triton
  requires the name to match the folder (the model id).

Types: ``onnx``, ``pytorch`` (TorchScript ``model.pt``; libtorch needs a ``config.pbtxt`` with inputs
and outputs in the artifact), ``tensorflow`` (SavedModel, or ``model.graphdef``), ``tensorrt``
(``model.plan``). No Triton binary is available on our machines: the layout and the repository protocol
are tested against ``tests/support/v2repo_server.py`` only (docs/runtimes.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from runtime_adapters.repository_adapter import LayoutProblem, RepositoryAdapter

# type -> (file extensions accepted, file name inside the version folder, config line)
FORMATS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "onnx": ((".onnx",), "model.onnx", 'platform: "onnxruntime_onnx"'),
    "pytorch": ((".pt", ".pth", ".torchscript"), "model.pt", 'backend: "pytorch"'),
    "tensorflow": (
        (".savedmodel", ".graphdef", ".pb"),
        "model.savedmodel",
        'platform: "tensorflow_savedmodel"',
    ),
    "tensorrt": ((".plan", ".engine", ".trt"), "model.plan", 'platform: "tensorrt_plan"'),
}
CONFIG = "config.pbtxt"
_NAME_LINE = re.compile(r'^name\s*:\s*"(?:[^"\\]|\\.)*"\s*$', re.MULTILINE)


class TritonAdapter(RepositoryAdapter):
    server_name = "triton"
    aliases = {
        "onnx": "onnx",
        "pytorch": "pytorch",
        "torchscript": "pytorch",
        "tensorflow": "tensorflow",
        "tf": "tensorflow",
        "tensorrt": "tensorrt",
        "trt": "tensorrt",
        "triton": "triton",
    }

    def write_layout(self, model_id: str, model_type: str, artifact_path: Path, folder: Path) -> None:
        build_layout(model_type, artifact_path, folder)


def build_layout(model_type: str, artifact: Path, folder: Path) -> None:
    """Create ``folder`` as a Triton model directory for ``artifact`` (raises LayoutProblem)."""
    if artifact.is_dir() and _is_triton_dir(artifact):
        _link_triton_dir(artifact, folder)
        return
    if model_type not in FORMATS:
        raise LayoutProblem(f"model type '{model_type}' needs a Triton model directory (with {CONFIG})")
    exts, target_name, config_line = FORMATS[model_type]
    source = _find_source(artifact, exts, model_type)
    if model_type == "tensorflow" and source.is_file() and source.suffix in (".graphdef", ".pb"):
        target_name, config_line = "model.graphdef", 'platform: "tensorflow_graphdef"'
    version = folder / "1"
    version.mkdir(parents=True)
    os.symlink(source.resolve(), version / target_name)
    own_config = artifact / CONFIG if artifact.is_dir() else None
    if own_config is not None and own_config.is_file():
        (folder / CONFIG).write_text(strip_name(own_config.read_text()))
    else:
        (folder / CONFIG).write_text(config_line + "\n")


def _is_triton_dir(path: Path) -> bool:
    return (path / CONFIG).is_file() and any(c.is_dir() and c.name.isdigit() for c in path.iterdir())


def _link_triton_dir(artifact: Path, folder: Path) -> None:
    folder.mkdir(parents=True)
    for child in artifact.iterdir():
        if child.is_dir() and child.name.isdigit():
            os.symlink(child.resolve(), folder / child.name, target_is_directory=True)
        elif child.name != CONFIG and child.is_file() and not child.name.startswith("."):
            os.symlink(child.resolve(), folder / child.name)  # e.g. labels.txt next to the config
    (folder / CONFIG).write_text(strip_name((artifact / CONFIG).read_text()))


def _find_source(artifact: Path, exts: tuple[str, ...], model_type: str) -> Path:
    if artifact.is_file() or (artifact.is_dir() and artifact.suffix in exts):
        return artifact
    if model_type == "tensorflow" and artifact.is_dir() and (artifact / "saved_model.pb").is_file():
        return artifact
    if not artifact.is_dir():
        raise LayoutProblem(f"artifact path {artifact} does not exist")
    found = sorted(p for p in artifact.rglob("*") if p.suffix.lower() in exts and not p.name.startswith("."))
    if model_type == "tensorflow":
        found += sorted(p.parent for p in artifact.rglob("saved_model.pb"))
    if not found:
        raise LayoutProblem(f"no {model_type} model ({', '.join(exts)}) in directory {artifact}")
    named = [p for p in found if p.stem == "model"]
    if len(found) > 1 and len(named) != 1:
        raise LayoutProblem(f"ambiguous {model_type} artifact: {artifact} holds several model files")
    return named[0] if len(found) > 1 else found[0]


def strip_name(config: str) -> str:
    """Remove the top-level ``name: "..."`` line of a config.pbtxt (Triton takes the folder name)."""
    return _NAME_LINE.sub("", config).lstrip("\n")
