"""The Ray Serve application of the peer comparison: the sample models behind ``@serve.multiplexed``.

Runs only in the Ray venv (``scripts/ray_venv.sh``). ``build_app`` returns a bound deployment whose
``ModelInfer`` method is what Ray's gRPC proxy calls for ``/inference.GRPCInferenceService/ModelInfer`` (the
proxy routes by method name and deserialises the request with the V2 classes compiled in that venv, module
``grpc_predict_v2_pb2``). The model id comes from ``serve.get_multiplexed_model_id()``, which the proxy sets from
the client's ``multiplexed_model_id`` metadata; Ray's router prefers a replica that already holds that model.

Each replica keeps at most ``max_models`` models in Ray's own LRU (``_ModelMultiplexWrapper``: loads on a
replica are serialised under one lock, the least recently used model is dropped when full). A load is a bare
``joblib.load`` of the same file the mesh's built-in runtime loads, done inline on the replica's event loop,
and prediction is the estimator's ``predict`` (+ ``predict_proba``) inline too: the cheapest form Ray allows,
no executor hop. A request that ran a load returns trailing metadata ``x-load-ms`` (the load's duration) and
``x-replica`` so the client can count misses per request without a side channel; hits carry nothing extra.
Per-request access logs are off (``enable_access_log=False``, level WARNING): tuning in Ray's favour.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any

# The Ray venv's own compiled V2 proto (scripts/ray_venv.sh puts it on sys.path); not the mesh's protos.
import grpc
import grpc_predict_v2_pb2 as pb
import joblib
from ray import serve
from ray.serve.schema import LoggingConfig

from loadtests.ray_serve import LOAD_MS_KEY, REPLICA_KEY, codec

# Set by the loader, read by the request that awaited it: the multiplex wrapper awaits the loader inside the
# caller's task, so a context variable carries "this request ran the load" back without shared state. Used
# through module-level functions: the deployment class is built in build_app, so cloudpickle ships it by value,
# and a ContextVar cannot be pickled while a module function is shipped by reference.
_load_ms: contextvars.ContextVar[float | None] = contextvars.ContextVar("load_ms", default=None)


def mark_load(ms: float | None) -> None:
    _load_ms.set(ms)


def load_ms_of_this_request() -> float | None:
    return _load_ms.get()


def build_app(
    files: dict[str, str], *, replicas: int, max_models: int, max_ongoing: int, name: str = "V2Multiplexed"
) -> Any:
    """A bound deployment serving ``files`` (model id -> model.joblib path) with the given Ray settings."""

    @serve.deployment(
        name=name,
        num_replicas=replicas,
        max_ongoing_requests=max_ongoing,
        ray_actor_options={"num_cpus": 0},
        logging_config=LoggingConfig(log_level="WARNING", enable_access_log=False),
    )
    class V2Multiplexed:
        def __init__(self, model_files: dict[str, str]) -> None:
            self.files = dict(model_files)
            self.replica = serve.get_replica_context().replica_id.unique_id

        @serve.multiplexed(max_num_models_per_replica=max_models)
        async def get_model(self, model_id: str) -> Any:
            t0 = time.perf_counter()
            estimator = joblib.load(self.files[model_id])
            mark_load((time.perf_counter() - t0) * 1e3)
            return estimator

        # Named after the gRPC method: Ray's proxy calls the deployment method of that name.
        async def ModelInfer(self, request: pb.ModelInferRequest, grpc_context=None) -> pb.ModelInferResponse:
            model_id = serve.get_multiplexed_model_id()
            if model_id not in self.files:
                if grpc_context is not None:
                    grpc_context.set_code(grpc.StatusCode.NOT_FOUND)
                    grpc_context.set_details(f"model {model_id!r} is not known to this deployment")
                return pb.ModelInferResponse()
            mark_load(None)
            estimator = await self.get_model(model_id)
            x, raw = codec.decode_input(request)
            response = pb.ModelInferResponse(
                model_name=model_id, model_version=request.model_version, id=request.id
            )
            codec.encode_outputs(response, codec.predict(estimator, x), raw=raw)
            load_ms = load_ms_of_this_request()
            if load_ms is not None and grpc_context is not None:
                grpc_context.set_trailing_metadata(
                    [(LOAD_MS_KEY, f"{load_ms:.3f}"), (REPLICA_KEY, self.replica)]
                )
            return response

    return V2Multiplexed.bind(files)
