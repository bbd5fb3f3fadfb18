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

Every link this adapter creates points at a real path resolved inside the artifact's root by
``puller.confine`` (and a linked version folder is walked with the same rule), so Triton never reaches
outside the root through the repository; an artifact link leaving it is ``PathEscapesRoot``.

Types: ``onnx``, ``pytorch`` (TorchScript ``model.pt``; libtorch needs a ``config.pbtxt`` with inputs
and outputs in the artifact), ``tensorflow`` (SavedModel, or ``model.graphdef``), ``tensorrt``
(``model.plan``). No Triton binary is available on our machines: the layout and the repository protocol
are tested against ``tests/support/v2repo_server.py`` only (docs/runtimes.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from puller.confine import Root, resolve_beneath, walk_beneath
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

    def write_layout(
        self, model_id: str, model_type: str, artifact_path: Path, folder: Path, root: Root | None = None
    ) -> None:
        build_layout(model_type, artifact_path, folder, root)


def build_layout(model_type: str, artifact: Path, folder: Path, root: Root | None = None) -> None:
    """Create ``folder`` as a Triton model directory for ``artifact`` (raises LayoutProblem, or
    ``puller.errors.PathEscapesRoot``; default root: the artifact itself, or its directory)."""
    artifact = Path(os.path.abspath(artifact))
    if root is None:
        root = Root.of(artifact if artifact.is_dir() else artifact.parent)
    real = resolve_beneath(root, artifact)
    if real.is_dir() and _is_triton_dir(real, root):
        _link_triton_dir(real, folder, root)
        return
    if model_type not in FORMATS:
        raise LayoutProblem(f"model type '{model_type}' needs a Triton model directory (with {CONFIG})")
    exts, target_name, config_line = FORMATS[model_type]
    source = _find_source(real, exts, model_type, root, shown=artifact)
    if model_type == "tensorflow" and source.is_file() and source.suffix in (".graphdef", ".pb"):
        target_name, config_line = "model.graphdef", 'platform: "tensorflow_graphdef"'
    version = folder / "1"
    version.mkdir(parents=True)
    os.symlink(source, version / target_name)
    own_config = resolve_beneath(root, real / CONFIG) if real.is_dir() else None
    if own_config is not None and own_config.is_file():
        (folder / CONFIG).write_text(strip_name(own_config.read_text()))
    else:
        (folder / CONFIG).write_text(config_line + "\n")


def _children(path: Path, root: Root) -> list[tuple[str, Path]]:
    """(name, real path) of each entry of the real directory ``path``, links resolved inside ``root``."""
    with os.scandir(path) as it:
        names = sorted(e.name for e in it)
    return [(name, resolve_beneath(root, path / name, shown=name)) for name in names]


def _is_triton_dir(path: Path, root: Root) -> bool:
    if not resolve_beneath(root, path / CONFIG).is_file():
        return False
    return any(name.isdigit() and real.is_dir() for name, real in _children(path, root))


def _link_triton_dir(artifact: Path, folder: Path, root: Root) -> None:
    folder.mkdir(parents=True)
    for name, real in _children(artifact, root):
        if name.isdigit() and real.is_dir():
            for _ in walk_beneath(root, real):  # Triton reads the whole version folder: confine it all
                pass
            os.symlink(real, folder / name, target_is_directory=True)
        elif name != CONFIG and not name.startswith(".") and real.is_file():
            os.symlink(real, folder / name)  # e.g. labels.txt next to the config
    (folder / CONFIG).write_text(strip_name(resolve_beneath(root, artifact / CONFIG).read_text()))


def _find_source(artifact: Path, exts: tuple[str, ...], model_type: str, root: Root, *, shown: Path) -> Path:
    if artifact.is_file() or (artifact.is_dir() and artifact.suffix in exts):
        return artifact
    if model_type == "tensorflow" and artifact.is_dir():
        if resolve_beneath(root, artifact / "saved_model.pb").is_file():
            return artifact
    if not artifact.is_dir():
        raise LayoutProblem(f"artifact path {shown} does not exist")
    files = list(walk_beneath(root, artifact, skip_hidden=True))
    found = {
        (str(f.rel), f.real) for f in files if f.rel.suffix.lower() in exts and f.rel.name != "saved_model.pb"
    }
    if model_type == "tensorflow":
        found |= {(str(f.rel.parent), f.real.parent) for f in files if f.rel.name == "saved_model.pb"}
    if not found:
        raise LayoutProblem(f"no {model_type} model ({', '.join(exts)}) in directory {shown}")
    ordered = sorted(found)
    named = [real for rel, real in ordered if Path(rel).stem == "model"]
    if len(ordered) > 1 and len(named) != 1:
        raise LayoutProblem(f"ambiguous {model_type} artifact: {shown} holds several model files")
    return named[0] if len(ordered) > 1 else ordered[0][1]


def strip_name(config: str) -> str:
    """Remove the top-level ``name: "..."`` line of a config.pbtxt (Triton takes the folder name)."""
    return _NAME_LINE.sub("", config).lstrip("\n")
