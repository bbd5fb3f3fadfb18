"""Sample models for demos and tests, built from datasets shipped inside scikit-learn (no downloads).

``python -m runtime_adapters.builtin.samples --out DIR [--many N] [--force]`` writes one model per
supported format plus DIR/manifest.json:

    sklearn/iris-lr/model.joblib        LogisticRegression (labels + probabilities)
    sklearn/iris-rf-small/model.joblib  RandomForest, 4 shallow trees   (size tests: small)
    sklearn/iris-rf-large/model.joblib  RandomForest, 800 full trees    (size tests: large)
    sklearn/diabetes-ridge/model.joblib Ridge regression (FP64 outputs)
    sklearn/cancer-lr/model.joblib      breast_cancer pipeline (scaler + LogisticRegression, 30 features)
    xgboost/iris/model.json             multi:softprob Booster (predict = class probabilities)
    lightgbm/iris/model.txt             multiclass Booster (predict = class probabilities)
    onnx/iris/model.onnx                skl2onnx LogisticRegression, FP32 [N, 4] input, no ZipMap
    many/m0000 ... m{N-1}/model.joblib  Ridge on distinct bootstrap samples of diabetes (density tests)

manifest.json: ``{"version": 1, "spec": {...}, "models": [entry, ...]}`` where each entry is
``{"id", "type", "group" ("default"|"many"), "path" (dir relative to DIR, what loadModel gets),
"file" (model file relative to DIR), "disk_size_bytes", "input": {"name", "datatype", "shape", "data"}
(one row, flattened), "expected": {output name: {"datatype", "shape", "data"}}}``, the expected values
computed from the in-memory model (not re-read from disk) so a load or tensor bug shows up as a mismatch.
Float outputs should be compared with a tolerance (1e-5 relative); labels exactly.

Deterministic (fixed seeds, single-threaded training); files are written atomically; when the manifest
already matches the requested spec and every file is present with its recorded size, nothing is rebuilt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
VERSION = 1


def _spec(many: int) -> dict[str, Any]:
    import lightgbm
    import onnxruntime
    import sklearn
    import xgboost

    return {
        "generator": VERSION,
        "many": many,
        "sklearn": sklearn.__version__,
        "xgboost": xgboost.__version__,
        "lightgbm": lightgbm.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _tensor(arr: Any) -> dict[str, Any]:
    arr = np.asarray(arr)
    kind = arr.dtype.kind
    bits = arr.dtype.itemsize * 8
    datatype = {"b": "BOOL", "i": f"INT{bits}", "u": f"UINT{bits}", "f": f"FP{bits}"}.get(kind, "BYTES")
    return {
        "datatype": datatype or "BYTES",
        "shape": list(arr.shape),
        "data": [x.decode() if isinstance(x, bytes) else x for x in arr.ravel().tolist()],
    }


def _entry(out: Path, model_id: str, mtype: str, group: str, file: Path, row: np.ndarray, expected) -> dict:
    return {
        "id": model_id,
        "type": mtype,
        "group": group,
        "path": str(file.parent.relative_to(out)),
        "file": str(file.relative_to(out)),
        "disk_size_bytes": file.stat().st_size,
        "input": {
            "name": "input-0",
            "datatype": "FP32",
            "shape": [1, row.shape[1]],
            "data": row.ravel().tolist(),
        },
        "expected": {name: _tensor(value) for name, value in expected.items()},
    }


def _sklearn(out: Path, model_id: str, rel: str, est: Any, row: np.ndarray, group: str = "default") -> dict:
    import joblib

    file = out / rel / "model.joblib"
    _atomic_write(file, lambda tmp: joblib.dump(est, tmp))
    expected = {"predict": est.predict(row)}
    if hasattr(est, "predict_proba"):
        expected["predict_proba"] = est.predict_proba(row)
    return _entry(out, model_id, "sklearn", group, file, row, expected)


def build(out: Path, *, many: int = 0, force: bool = False) -> dict[str, Any]:
    """Write the samples under ``out`` and return the manifest."""
    out = out.resolve()
    spec = _spec(many)
    current = _current(out, spec)
    if current is not None and not force:
        return current

    import lightgbm
    import onnxruntime as ort
    import xgboost
    from skl2onnx import to_onnx
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xi, yi = load_iris(return_X_y=True)
    xi = xi.astype(np.float32)
    iris_row = xi[[60]]  # a versicolor row
    xd, yd = load_diabetes(return_X_y=True)
    xd = xd.astype(np.float32)
    diab_row = xd[[7]]
    xc, yc = load_breast_cancer(return_X_y=True)
    xc = xc.astype(np.float32)
    cancer_row = xc[[13]]

    models: list[dict] = []
    lr = LogisticRegression(max_iter=1000).fit(xi, yi)
    models.append(_sklearn(out, "sklearn-iris-lr", "sklearn/iris-lr", lr, iris_row))
    small = RandomForestClassifier(n_estimators=4, max_depth=2, random_state=0, n_jobs=1).fit(xi, yi)
    models.append(_sklearn(out, "sklearn-iris-rf-small", "sklearn/iris-rf-small", small, iris_row))
    large = RandomForestClassifier(n_estimators=800, random_state=0, n_jobs=1).fit(xi, yi)
    models.append(_sklearn(out, "sklearn-iris-rf-large", "sklearn/iris-rf-large", large, iris_row))
    ridge = Ridge(alpha=0.5).fit(xd, yd)
    models.append(_sklearn(out, "sklearn-diabetes-ridge", "sklearn/diabetes-ridge", ridge, diab_row))
    cancer = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(xc, yc)
    models.append(_sklearn(out, "sklearn-cancer-lr", "sklearn/cancer-lr", cancer, cancer_row))

    xgb = xgboost.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1, random_state=0).fit(xi, yi)
    file = out / "xgboost/iris/model.json"

    def save_json(tmp: str) -> None:  # xgboost picks the format from the extension
        xgb.get_booster().save_model(tmp + ".json")
        os.replace(tmp + ".json", tmp)

    _atomic_write(file, save_json)
    expected = {"predict": xgb.get_booster().inplace_predict(iris_row)}
    models.append(_entry(out, "xgboost-iris", "xgboost", "default", file, iris_row, expected))

    lgb = lightgbm.LGBMClassifier(
        n_estimators=20, num_leaves=8, min_child_samples=5, n_jobs=1, random_state=0, verbose=-1
    ).fit(xi, yi)
    file = out / "lightgbm/iris/model.txt"
    _atomic_write(file, lambda tmp: lgb.booster_.save_model(tmp))
    expected = {"predict": lgb.booster_.predict(iris_row)}
    models.append(_entry(out, "lightgbm-iris", "lightgbm", "default", file, iris_row, expected))

    onx = to_onnx(lr, xi[:1], options={id(lr): {"zipmap": False}}, target_opset=17)
    blob = onx.SerializeToString()
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(names, {session.get_inputs()[0].name: iris_row}), strict=True))
    file = out / "onnx/iris/model.onnx"
    _atomic_write(file, lambda tmp: Path(tmp).write_bytes(blob))
    models.append(_entry(out, "onnx-iris", "onnx", "default", file, iris_row, expected))

    rng = np.random.default_rng(1234)
    for i in range(many):
        idx = rng.choice(len(xd), size=len(xd) // 2, replace=True)
        est = Ridge(alpha=float(rng.uniform(0.01, 2.0))).fit(xd[idx], yd[idx])
        models.append(_sklearn(out, f"many-m{i:04d}", f"many/m{i:04d}", est, diab_row, group="many"))

    _drop_stale_many(out / "many", keep=many)
    manifest = {"version": VERSION, "spec": spec, "models": models}
    _atomic_write(out / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    return manifest


def _drop_stale_many(root: Path, *, keep: int) -> None:
    """Remove many/mNNNN dirs left by an earlier, larger --many so the tree matches the manifest."""
    if not root.is_dir():
        return
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("m") and d.name[1:].isdigit() and int(d.name[1:]) >= keep:
            for f in d.iterdir():
                f.unlink()
            d.rmdir()


def _current(out: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The existing manifest when it matches ``spec`` and all its files are intact, else None."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        if manifest.get("spec") != spec:
            return None
        for m in manifest["models"]:
            if (out / m["file"]).stat().st_size != m["disk_size_bytes"]:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m runtime_adapters.builtin.samples", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--many", type=int, default=0, help="also write N small distinct sklearn models")
    p.add_argument("--force", action="store_true", help="rebuild even when the manifest is current")
    args = p.parse_args(argv)
    if args.many < 0:
        p.error("--many must be >= 0")
    manifest = build(args.out, many=args.many, force=args.force)
    print(
        f"{len(manifest['models'])} sample models in {args.out.resolve()} (manifest {MANIFEST})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
