"""BuiltinAdapter: the models loaded in this process, as a ``RuntimeAdapter``; owns the loaded-model table.

Loading (``rt-load`` executor): find the model file in the artifact, import the library (outside the
measurement), then load under ``sizing.RssMeter`` so the RSS delta is this model's alone. The loaded
model is registered only after the executor returns to the event loop; when the server cancels a load
(deadline or client cancel) the thread finishes on its own and its result is dropped, unregistered.
Inference (``rt-predict`` executor) looks the model up in a plain dict: an unload during a prediction lets
that prediction finish with the object it already holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import numpy as np

from mesh.errors import ModelLoadFailed
from runtime_adapters.base import AdapterState, AdapterStatus, RuntimeAdapter
from runtime_adapters.builtin import formats, models
from runtime_adapters.errors import ModelNotLoaded
from runtime_adapters.sizing import Measurement, RssMeter, SizeModel

if TYPE_CHECKING:
    from puller.pull import LocalArtifact

log = logging.getLogger("runtime_adapters.builtin")

V2_SERVICE = "inference.GRPCInferenceService"
# Where the mesh writes the concrete model id: field 1 of each request (model_name / name).
METHOD_INFOS = {f"{V2_SERVICE}/{m}": [1] for m in ("ModelInfer", "ModelMetadata", "ModelReady")}


@dataclass(frozen=True, slots=True)
class LoadedModel:
    model_id: str
    model_type: str
    model: models.ServedModel
    file: Path
    size: Measurement
    disk_size_bytes: int
    load_seconds: float


class BuiltinAdapter(RuntimeAdapter):
    def __init__(
        self,
        *,
        capacity_bytes: int,
        runtime_version: str,
        sizes: SizeModel,
        load_threads: int = 2,
        predict_threads: int = 2,
        measure_wait_s: float = 30.0,
    ) -> None:
        self.capacity_bytes = capacity_bytes
        self.runtime_version = runtime_version
        self.sizes = sizes
        self.measure_wait_s = measure_wait_s
        self._meter = RssMeter()
        self._models: dict[str, LoadedModel] = {}
        # Extra load threads so a load stuck past its deadline does not block the next ones.
        self._load_pool = ThreadPoolExecutor(max_workers=load_threads, thread_name_prefix="rt-load")
        self._predict_pool = ThreadPoolExecutor(max_workers=predict_threads, thread_name_prefix="rt-predict")

    # -- RuntimeAdapter -------------------------------------------------------------------------------

    def supported_types(self) -> tuple[str, ...]:
        return formats.SUPPORTED_TYPES

    def canonical_type(self, model_type: str) -> str:
        return formats.canonical_type(model_type)

    async def status(self) -> AdapterStatus:
        return AdapterStatus(AdapterState.READY, self.capacity_bytes, self.runtime_version)

    async def load(self, model_id: str, model_type: str, artifact: LocalArtifact, model_key: str) -> int:
        existing = self._models.get(model_id)
        if existing is not None:
            return existing.size.size_bytes
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        file, served, delta = await loop.run_in_executor(
            self._load_pool, self._load_blocking, model_id, model_type, artifact
        )
        size = self.sizes.measured(model_type, artifact.disk_size_bytes, delta)
        entry = LoadedModel(
            model_id, model_type, served, file, size, artifact.disk_size_bytes, time.monotonic() - started
        )
        self._models[model_id] = entry
        log.info(
            "loaded model %s (%s, %s) in %.3fs: %d bytes (%s, rss delta %s, disk %d)",
            model_id, model_type, file.name, entry.load_seconds, size.size_bytes, size.source,
            delta, artifact.disk_size_bytes,
        )  # fmt: skip
        return size.size_bytes

    def _load_blocking(self, model_id: str, model_type: str, artifact: LocalArtifact):
        try:
            # Resolved inside the artifact's root; the library opens exactly this real path.
            file = formats.find_model_file(Path(artifact.path), model_type, artifact.confining_root())
        except formats.ArtifactProblem as exc:
            raise ModelLoadFailed(model_id, str(exc)) from exc
        models.import_library(model_type)
        try:
            served, delta = self._meter.run(lambda: models.load(model_type, file), wait_s=self.measure_wait_s)
        except Exception as exc:
            cause = (
                f"cannot read {model_type} model file {file.name}: {type(exc).__name__}: {models._short(exc)}"
            )
            raise ModelLoadFailed(model_id, cause) from exc
        return file, served, delta

    async def unload(self, model_id: str) -> bool:
        entry = self._models.pop(model_id, None)
        if entry is not None:
            log.info("unloaded model %s (%s)", model_id, entry.model_type)
        return entry is not None

    def loaded_models(self) -> list[str]:
        return list(self._models)

    def predict_size(self, model_type: str, disk_size_bytes: int | None) -> int:
        return self.sizes.predict(model_type, disk_size_bytes)

    def model_size(self, model_id: str) -> int:
        return self.get(model_id).size.size_bytes

    def method_infos(self) -> dict[str, list[int]]:
        return {k: list(v) for k, v in METHOD_INFOS.items()}

    def serving_handlers(self) -> Sequence[grpc.GenericRpcHandler]:
        from runtime_adapters.builtin.inference import InferenceServicer

        return (InferenceServicer(self).generic_handler(),)

    async def close(self) -> None:
        self._models.clear()
        self._load_pool.shutdown(wait=False, cancel_futures=True)
        self._predict_pool.shutdown(wait=False, cancel_futures=True)

    # -- data plane -----------------------------------------------------------------------------------

    def get(self, model_id: str) -> LoadedModel:
        entry = self._models.get(model_id)
        if entry is None:
            raise ModelNotLoaded(model_id)
        return entry

    def is_loaded(self, model_id: str) -> bool:
        return model_id in self._models

    async def predict(
        self, model_id: str, inputs: Mapping[str, np.ndarray], requested: Sequence[str]
    ) -> dict[str, np.ndarray]:
        entry = self.get(model_id)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._predict_pool, entry.model.predict, inputs, requested)
