"""MLServerAdapter: MLServer's model repository layout (``<repo>/<model id>/model-settings.json``).

MLServer's RepositoryModelLoad takes only a model name and rescans ``model_repository_root`` for
``model-settings.json`` files on every load (reference/deps.md §4, gotcha 2), so a load is: write the
folder, then call load by name. The settings point ``parameters.uri`` at the pulled file in place (no
copy). Implementations by type: ``sklearn`` -> ``mlserver_sklearn.SKLearnModel``, ``xgboost`` ->
``mlserver_xgboost.XGBoostModel``. An artifact directory that brings its own ``model-settings.json``
(any implementation installed in MLServer's venv: type ``mlserver`` or one of the above) is used as is,
with ``name`` set to the model id and a relative ``uri`` made absolute.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

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

    def write_layout(self, model_id: str, model_type: str, artifact_path: Path, folder: Path) -> None:
        settings = model_settings(model_id, model_type, artifact_path)
        folder.mkdir(parents=True)
        tmp = folder / f".{SETTINGS_FILE}.tmp"
        tmp.write_text(json.dumps(settings, indent=1))
        os.replace(tmp, folder / SETTINGS_FILE)


def model_settings(model_id: str, model_type: str, artifact_path: Path) -> dict:
    """The ``model-settings.json`` content for a pulled artifact (raises LayoutProblem)."""
    own = artifact_path / SETTINGS_FILE if artifact_path.is_dir() else None
    if own is not None and own.is_file():
        try:
            settings = json.loads(own.read_text())
        except (OSError, ValueError) as exc:
            raise LayoutProblem(f"cannot read {own}: {exc}") from exc
        if not isinstance(settings, dict) or not settings.get("implementation"):
            raise LayoutProblem(f"{own} has no 'implementation'")
        settings["name"] = model_id
        params = settings.setdefault("parameters", {})
        uri = params.get("uri")
        if isinstance(uri, str) and uri and "://" not in uri and not os.path.isabs(uri):
            params["uri"] = str((artifact_path / uri).resolve())
        elif not uri:
            params["uri"] = str(artifact_path.resolve())
        return settings
    if model_type not in IMPLEMENTATIONS:
        raise LayoutProblem(
            f"model type '{model_type}' needs a {SETTINGS_FILE} in the artifact directory {artifact_path}"
        )
    try:
        file = find_model_file(artifact_path, model_type)
    except ArtifactProblem as exc:
        raise LayoutProblem(str(exc)) from exc
    return {
        "name": model_id,
        "implementation": IMPLEMENTATIONS[model_type],
        "parameters": {"uri": str(file.resolve())},
    }
