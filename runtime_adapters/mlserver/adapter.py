"""MLServerAdapter: MLServer's model repository layout (``<repo>/<model id>/model-settings.json``).

MLServer's RepositoryModelLoad takes only a model name and rescans ``model_repository_root`` for
``model-settings.json`` files on every load (reference/deps.md §4, gotcha 2), so a load is: write the
folder, then call load by name. The settings point ``parameters.uri`` at the pulled file in place (no
copy). Implementations by type: ``sklearn`` -> ``mlserver_sklearn.SKLearnModel``, ``xgboost`` ->
``mlserver_xgboost.XGBoostModel``. An artifact directory that brings its own ``model-settings.json``
(any implementation installed in MLServer's venv: type ``mlserver`` or one of the above) is used as is,
with ``name`` set to the model id and ``uri`` resolved to a real path.

Every path written for MLServer (the model file, the settings file read, its ``uri``) is resolved inside
the artifact's root by ``puller.confine`` first, so MLServer opens only confined real paths; a ``uri``
that leaves the root, or names a scheme (``s3://…``), is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from puller.confine import Root, resolve_beneath
from runtime_adapters.builtin.formats import ArtifactProblem, find_model_file
from runtime_adapters.repository_adapter import LayoutProblem, RepositoryAdapter

IMPLEMENTATIONS: dict[str, str] = {
    "sklearn": "mlserver_sklearn.SKLearnModel",
    "xgboost": "mlserver_xgboost.XGBoostModel",
}
SETTINGS_FILE = "model-settings.json"


class MLServerAdapter(RepositoryAdapter):
    server_name = "mlserver"
    aliases = {
        "sklearn": "sklearn",
        "scikit-learn": "sklearn",
        "scikit_learn": "sklearn",
        "xgboost": "xgboost",
        "xgb": "xgboost",
        "mlserver": "mlserver",
        "custom": "mlserver",
    }

    def write_layout(
        self, model_id: str, model_type: str, artifact_path: Path, folder: Path, root: Root | None = None
    ) -> None:
        settings = model_settings(model_id, model_type, artifact_path, root)
        folder.mkdir(parents=True)
        tmp = folder / f".{SETTINGS_FILE}.tmp"
        tmp.write_text(json.dumps(settings, indent=1))
        os.replace(tmp, folder / SETTINGS_FILE)


def model_settings(model_id: str, model_type: str, artifact_path: Path, root: Root | None = None) -> dict:
    """The ``model-settings.json`` content for a pulled artifact (raises LayoutProblem, or
    ``puller.errors.PathEscapesRoot`` for a path leaving ``root``; default root: the artifact itself)."""
    artifact_path = Path(os.path.abspath(artifact_path))
    if root is None:
        root = Root.of(artifact_path if artifact_path.is_dir() else artifact_path.parent)
    real = resolve_beneath(root, artifact_path)
    own = resolve_beneath(root, real / SETTINGS_FILE) if real.is_dir() else None
    if own is not None and own.is_file():
        try:
            settings = json.loads(own.read_text())
        except (OSError, ValueError, RecursionError) as exc:
            raise LayoutProblem(f"cannot read {artifact_path / SETTINGS_FILE}: {exc}") from exc
        if not isinstance(settings, dict) or not settings.get("implementation"):
            raise LayoutProblem(f"{artifact_path / SETTINGS_FILE} has no 'implementation'")
        settings["name"] = model_id
        params = settings.setdefault("parameters", {})
        if not isinstance(params, dict):
            raise LayoutProblem(f"{artifact_path / SETTINGS_FILE}: 'parameters' must be an object")
        uri = params.get("uri")
        if uri in (None, ""):
            params["uri"] = str(real)
        elif not isinstance(uri, str) or "://" in uri:
            raise LayoutProblem(
                f"{artifact_path / SETTINGS_FILE}: parameters.uri must be a path inside the artifact"
            )
        else:
            target = uri if os.path.isabs(uri) else str(real / uri)
            params["uri"] = str(resolve_beneath(root, target, shown=uri))
        return settings
    if model_type not in IMPLEMENTATIONS:
        raise LayoutProblem(
            f"model type '{model_type}' needs a {SETTINGS_FILE} in the artifact directory {artifact_path}"
        )
    try:
        file = find_model_file(real, model_type, root)
    except ArtifactProblem as exc:
        raise LayoutProblem(str(exc)) from exc
    return {
        "name": model_id,
        "implementation": IMPLEMENTATIONS[model_type],
        "parameters": {"uri": str(file)},
    }
