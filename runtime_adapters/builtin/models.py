"""One loader and predictor per library: sklearn (joblib/pickle), xgboost and lightgbm Boosters, onnxruntime.

A ``ServedModel`` is what the adapter keeps per loaded model: ``predict`` (called in the ``rt-predict``
executor, so it must be thread-safe; every library here releases the GIL in its numeric core) and V2
metadata. Libraries are imported lazily by ``import_library`` so a runtime that only serves onnx never
pays for sklearn; the adapter calls it before it starts measuring a load, so import memory is not charged
to the first model of a type.

Outputs: tree/linear libraries return ``predict`` (sklearn also ``predict_proba`` when the estimator has
it); xgboost and lightgbm return the Booster's raw ``predict`` (probabilities for multi-class objectives);
onnx returns the session's outputs under their own names. Note that loading a pickle runs code from the
file: only serve artifacts from storage you trust (the same holds for MLServer's sklearn runtime).
"""

from __future__ import annotations

import importlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mesh.errors import InvalidRequest, MeshError
from runtime_adapters.builtin import tensors

log = logging.getLogger("runtime_adapters.builtin.models")

_LIBRARIES = {
    "sklearn": ("sklearn", "joblib"),
    "xgboost": ("xgboost",),
    "lightgbm": ("lightgbm",),
    "onnx": ("onnxruntime",),
}


@dataclass(frozen=True, slots=True)
class TensorMeta:
    name: str
    datatype: str
    shape: tuple[int, ...]


class PredictionFailed(MeshError):
    """The library failed on input that passed our checks (INTERNAL, with the library's message)."""


class ServedModel(ABC):
    model_type: str

    @abstractmethod
    def predict(
        self, inputs: Mapping[str, np.ndarray], requested: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        """Run the model; ``requested`` limits the outputs (all when empty)."""

    @abstractmethod
    def inputs(self) -> list[TensorMeta]: ...

    @abstractmethod
    def outputs(self) -> list[TensorMeta]: ...


_warmed: set[str] = set()
_warm_lock = threading.Lock()


def import_library(model_type: str) -> None:
    """Import the type's library and run its one-time initialisation (thread pools, arenas, lazily
    loaded kernels) on a throwaway model, so none of that is measured as the first model's size."""
    with _warm_lock:
        if model_type in _warmed:
            return
        for name in _LIBRARIES[model_type]:
            importlib.import_module(name)
        try:
            _WARM_UPS.get(model_type, lambda: None)()
        except Exception:  # a failed warm-up only costs measurement accuracy
            log.debug("warm-up of %s failed", model_type, exc_info=True)
        _warmed.add(model_type)


def _warm_xgboost() -> None:
    import xgboost

    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    booster = xgboost.train({"nthread": 1, "max_depth": 1}, xgboost.DMatrix(x, label=[0, 1, 0, 1]), 1)
    booster.inplace_predict(x)


def _warm_lightgbm() -> None:
    import lightgbm

    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    params = {"num_threads": 1, "verbose": -1, "min_data_in_leaf": 1, "min_data_in_bin": 1}
    text = lightgbm.train(params, lightgbm.Dataset(x, label=np.arange(20) % 2), 1).model_to_string()
    for _ in range(2):
        lightgbm.Booster(model_str=text).predict(x, num_threads=1)


def _warm_onnx() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "warm-up",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = _ort_options()
    session = ort.InferenceSession(
        model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    session.run(None, {"x": np.zeros(1, np.float32)})


_WARM_UPS = {"xgboost": _warm_xgboost, "lightgbm": _warm_lightgbm, "onnx": _warm_onnx}


def load(model_type: str, file: Path) -> ServedModel:
    """Load ``file`` as ``model_type``; library exceptions propagate (the adapter words them)."""
    return _LOADERS[model_type](file)


def _single_input(inputs: Mapping[str, np.ndarray], n_features: int | None, what: str) -> np.ndarray:
    if len(inputs) != 1:
        raise InvalidRequest(f"{what} models take exactly 1 input tensor, got {len(inputs)}")
    ((name, x),) = inputs.items()
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2:
        raise InvalidRequest(f"input '{name}' must be 2-D [rows, features], got shape {list(x.shape)}")
    if x.dtype.kind not in "biuf":
        raise InvalidRequest(f"input '{name}' must be numeric or boolean for {what} models")
    if n_features is not None and x.shape[1] != n_features:
        raise InvalidRequest(
            f"input '{name}' has {x.shape[1]} features per row but the model expects {n_features}"
        )
    return x


def _select(outputs: Sequence[str], requested: Sequence[str]) -> list[str]:
    if not requested:
        return list(outputs)
    unknown = [r for r in requested if r not in outputs]
    if unknown:
        raise InvalidRequest(f"unknown output(s) {unknown}; this model has {list(outputs)}")
    return list(requested)


def _call(what: str, fn: Any, *args: Any, **kwargs: Any) -> np.ndarray:
    try:
        return np.asarray(fn(*args, **kwargs))
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"{what} rejected the input: {_short(exc)}") from exc
    except MeshError:
        raise
    except Exception as exc:
        raise PredictionFailed(f"{what} prediction failed: {type(exc).__name__}: {_short(exc)}") from exc


def _short(exc: BaseException, limit: int = 400) -> str:
    text = str(exc).strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


class SklearnModel(ServedModel):
    model_type = "sklearn"

    def __init__(self, estimator: Any) -> None:
        if not callable(getattr(estimator, "predict", None)):
            raise TypeError(f"the pickled object ({type(estimator).__name__}) has no predict method")
        self.estimator = estimator
        self.n_features: int | None = getattr(estimator, "n_features_in_", None)
        self._outputs = ["predict"]
        if hasattr(estimator, "predict_proba"):  # False where sklearn's available_if hides it
            self._outputs.append("predict_proba")

    def predict(self, inputs, requested=()):
        x = _single_input(inputs, self.n_features, "sklearn")
        return {
            name: _call("sklearn", getattr(self.estimator, name), x)
            for name in _select(self._outputs, requested)
        }

    def inputs(self):
        return [TensorMeta("input-0", "FP64", (-1, self.n_features if self.n_features else -1))]

    def outputs(self):
        classes = getattr(self.estimator, "classes_", None)
        kind = np.asarray(classes).dtype.kind if classes is not None else "f"
        datatype = {"b": "BOOL", "i": "INT64", "u": "INT64", "f": "FP64"}.get(kind, "BYTES")
        metas = [TensorMeta("predict", datatype, (-1,))]
        if "predict_proba" in self._outputs:
            n = len(getattr(self.estimator, "classes_", ())) or -1
            metas.append(TensorMeta("predict_proba", "FP64", (-1, n)))
        return metas


class XGBoostModel(ServedModel):
    model_type = "xgboost"

    def __init__(self, booster: Any) -> None:
        booster.set_param({"nthread": 1})  # one request, one core: concurrency comes from the executor
        self.booster = booster
        self.n_features = booster.num_features() or None

    def predict(self, inputs, requested=()):
        _select(["predict"], requested)
        x = _single_input(inputs, self.n_features, "xgboost")
        return {"predict": _call("xgboost", self.booster.inplace_predict, x)}

    def inputs(self):
        return [TensorMeta("input-0", "FP32", (-1, self.n_features or -1))]

    def outputs(self):
        return [TensorMeta("predict", "FP32", (-1,))]


class LightGBMModel(ServedModel):
    model_type = "lightgbm"

    def __init__(self, booster: Any) -> None:
        self.booster = booster
        self.n_features = booster.num_feature() or None

    def predict(self, inputs, requested=()):
        _select(["predict"], requested)
        x = _single_input(inputs, self.n_features, "lightgbm")
        return {"predict": _call("lightgbm", self.booster.predict, x, num_threads=1)}

    def inputs(self):
        return [TensorMeta("input-0", "FP64", (-1, self.n_features or -1))]

    def outputs(self):
        return [TensorMeta("predict", "FP64", (-1,))]


_ORT_TYPES = {
    "tensor(float)": ("FP32", np.float32),
    "tensor(double)": ("FP64", np.float64),
    "tensor(float16)": ("FP16", np.float16),
    "tensor(int8)": ("INT8", np.int8),
    "tensor(int16)": ("INT16", np.int16),
    "tensor(int32)": ("INT32", np.int32),
    "tensor(int64)": ("INT64", np.int64),
    "tensor(uint8)": ("UINT8", np.uint8),
    "tensor(uint16)": ("UINT16", np.uint16),
    "tensor(uint32)": ("UINT32", np.uint32),
    "tensor(uint64)": ("UINT64", np.uint64),
    "tensor(bool)": ("BOOL", np.bool_),
    "tensor(string)": ("BYTES", None),
}


def _ort_meta(arg: Any) -> TensorMeta:
    datatype = _ORT_TYPES.get(arg.type, ("", None))[0]
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or ()))
    return TensorMeta(arg.name, datatype, shape)


class OnnxModel(ServedModel):
    model_type = "onnx"

    def __init__(self, session: Any) -> None:
        self.session = session
        self._in = session.get_inputs()
        self._out_names = [o.name for o in session.get_outputs()]

    def predict(self, inputs, requested=()):
        names = _select(self._out_names, requested)
        feed = self._feed(inputs)
        results = _call_list("onnxruntime", self.session.run, names, feed)
        return {name: _as_array(value) for name, value in zip(names, results, strict=True)}

    def _feed(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(inputs) != len(self._in):
            raise InvalidRequest(f"the onnx model takes {len(self._in)} input(s), got {len(inputs)}")
        wanted = [i.name for i in self._in]
        by_name = set(inputs) == set(wanted)
        feed = {}
        for pos, arg in enumerate(self._in):
            x = inputs[arg.name] if by_name else list(inputs.values())[pos]
            datatype = _ORT_TYPES.get(arg.type, ("", None))[0]
            if datatype:
                x = tensors.conform(arg.name, x, datatype)
            rank = len(arg.shape or ())
            if rank == 2 and x.ndim == 1:
                x = x.reshape(1, -1)
            if rank and x.ndim != rank:
                raise InvalidRequest(
                    f"onnx input '{arg.name}' must have rank {rank}, got shape {list(x.shape)}"
                )
            for dim, (want, got) in enumerate(zip(arg.shape, x.shape, strict=True)):
                if isinstance(want, int) and want >= 0 and want != got:
                    raise InvalidRequest(
                        f"onnx input '{arg.name}' dimension {dim} must be {want}, got shape {list(x.shape)}"
                    )
            feed[arg.name] = x
        return feed

    def inputs(self):
        return [_ort_meta(i) for i in self._in]

    def outputs(self):
        return [_ort_meta(o) for o in self.session.get_outputs()]


def _call_list(what: str, fn: Any, *args: Any) -> list[Any]:
    try:
        return fn(*args)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(f"{what} rejected the input: {_short(exc)}") from exc
    except Exception as exc:
        if type(exc).__name__ == "InvalidArgument":  # onnxruntime's pybind error for bad feeds
            raise InvalidRequest(f"{what} rejected the input: {_short(exc)}") from exc
        raise PredictionFailed(f"{what} prediction failed: {type(exc).__name__}: {_short(exc)}") from exc


def _as_array(value: Any) -> np.ndarray:
    """onnx outputs may be sequences of maps (sklearn's ZipMap): turn them into [rows, keys] arrays."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = sorted(value[0])
        return np.array([[row[k] for k in keys] for row in value])
    return np.asarray(value)


def _load_sklearn(file: Path) -> ServedModel:
    import joblib

    return SklearnModel(joblib.load(file))


def _load_xgboost(file: Path) -> ServedModel:
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(str(file))
    return XGBoostModel(booster)


def _load_lightgbm(file: Path) -> ServedModel:
    import lightgbm

    return LightGBMModel(lightgbm.Booster(model_file=str(file)))


def _load_onnx(file: Path) -> ServedModel:
    import onnxruntime as ort

    opts = _ort_options()
    return OnnxModel(ort.InferenceSession(str(file), sess_options=opts, providers=["CPUExecutionProvider"]))


def _ort_options():
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return opts


_LOADERS = {
    "sklearn": _load_sklearn,
    "xgboost": _load_xgboost,
    "lightgbm": _load_lightgbm,
    "onnx": _load_onnx,
}
