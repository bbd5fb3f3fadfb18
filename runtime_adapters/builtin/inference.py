"""The KServe V2 inference servicer of the built-in runtime, served on the same port as the SPI.

Every method takes raw bytes and parses them here, so a malformed payload becomes INVALID_ARGUMENT naming
the problem instead of grpc's generic deserialization failure. The model id comes from the ``mm-model-id``
metadata (or ``mm-model-id-bin``) first, then from field 1 of the request (``model_name`` / ``name``),
which is where the mesh injects it (``METHOD_INFOS``). Unknown models are NOT_FOUND "model 'x' is not
loaded", which tells the mesh to drop its copy and retry elsewhere; ModelReady answers ``ready=false``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from mesh.errors import InvalidRequest
from mesh.tracing import TRACING
from protos.inference import grpc_predict_v2_pb2 as pb
from runtime_adapters.builtin import tensors
from runtime_adapters.rpc import unary_handler

if TYPE_CHECKING:
    from runtime_adapters.builtin.adapter import BuiltinAdapter

log = logging.getLogger("runtime_adapters.builtin.inference")

SERVICE = "inference.GRPCInferenceService"
SERVER_NAME = "modelmesh-py-builtin"


def model_id_from(context: grpc.aio.ServicerContext, body_id: str) -> str:
    """``mm-model-id`` (or ``-bin``) metadata first, else the id in the request body."""
    for key, value in context.invocation_metadata() or ():
        if key == "mm-model-id" and value:
            return value
        if key == "mm-model-id-bin" and value:
            try:
                return value.decode("utf-8") if isinstance(value, bytes) else value
            except UnicodeDecodeError as exc:
                raise InvalidRequest("mm-model-id-bin is not valid UTF-8") from exc
    if not body_id:
        raise InvalidRequest("no model id: set the mm-model-id metadata or the request's model name")
    return body_id


def _parse(message_type: type, data: bytes) -> Any:
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        raise InvalidRequest(f"malformed {message_type.__name__} payload: {exc}") from exc


class InferenceServicer:
    def __init__(self, adapter: BuiltinAdapter, *, version: str = "") -> None:
        self.adapter = adapter
        self.version = version or adapter.runtime_version

    def generic_handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, Callable] = {
            "ModelInfer": self.model_infer,
            "ModelMetadata": self.model_metadata,
            "ModelReady": self.model_ready,
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ServerMetadata": self.server_metadata,
        }
        return grpc.method_handlers_generic_handler(
            SERVICE, {name: unary_handler(fn, name=f"{SERVICE}/{name}") for name, fn in methods.items()}
        )

    async def model_infer(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if TRACING.enabled:  # a child of the pod's mesh.route span (its traceparent came with the request)
            with TRACING.server_span("runtime.ModelInfer", context.invocation_metadata()):
                return await self._model_infer(data, context)
        return await self._model_infer(data, context)

    async def _model_infer(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = _parse(pb.ModelInferRequest, data)
        model_id = model_id_from(context, request.model_name)
        self.adapter.get(model_id)  # NOT_FOUND before any decoding work
        inputs, raw = tensors.decode_inputs(request)
        requested = [o.name for o in request.outputs]
        outputs = await self.adapter.predict(model_id, inputs, requested)
        response = pb.ModelInferResponse(
            model_name=model_id, model_version=request.model_version, id=request.id
        )
        return tensors.encode_outputs(response, outputs, raw=raw).SerializeToString()

    async def model_metadata(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = _parse(pb.ModelMetadataRequest, data)
        entry = self.adapter.get(model_id_from(context, request.name))
        response = pb.ModelMetadataResponse(name=entry.model_id, platform=entry.model_type)
        for meta in entry.model.inputs():
            response.inputs.add(name=meta.name, datatype=meta.datatype, shape=list(meta.shape))
        for meta in entry.model.outputs():
            response.outputs.add(name=meta.name, datatype=meta.datatype, shape=list(meta.shape))
        return response.SerializeToString()

    async def model_ready(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request = _parse(pb.ModelReadyRequest, data)
        ready = self.adapter.is_loaded(model_id_from(context, request.name))
        return pb.ModelReadyResponse(ready=ready).SerializeToString()

    async def server_live(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerLiveResponse(live=True).SerializeToString()

    async def server_ready(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerReadyResponse(ready=True).SerializeToString()

    async def server_metadata(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=self.version).SerializeToString()
