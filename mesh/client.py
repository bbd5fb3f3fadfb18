"""MeshClient: the synchronous Python client of a mesh pod (management, cluster status and V2 inference).

Owns the client side of the three services a pod serves on its external port: ``mmesh.ModelMesh``
(register/unregister/status/ensureLoaded/vModels), ``meshadmin.MeshAdmin`` (cluster-wide status) and
``inference.GRPCInferenceService`` (ModelInfer). It also owns the conversion between Python/numpy values and
V2 tensors, kept as pure functions (``encode_inputs``, ``decode_outputs``) so they are tested without a server.

Management calls return plain dicts (JSON-printable, so the CLI prints them as they are); every gRPC failure
surfaces as one ``MeshClientError(code, message)`` carrying the server's status code name and details.
The client is synchronous on purpose: it serves scripts, the CLI and tests; the benchmarks use ``grpc.aio``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from protos.inference import grpc_predict_v2_pb2 as v2
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from protos.meshadmin import admin_pb2, admin_pb2_grpc
from protos.mmesh import model_mesh_pb2 as mm
from protos.mmesh import model_mesh_pb2_grpc as mm_grpc

MODEL_ID_HEADER = "mm-model-id"
VMODEL_ID_HEADER = "mm-vmodel-id"
DEFAULT_INPUT_NAME = "input-0"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# numpy dtype -> (V2 datatype, InferTensorContents field). Typed contents of narrow ints travel widened,
# as the V2 protocol prescribes (INT8/16 in int_contents, UINT8/16 in uint_contents).
_DTYPE_TO_V2: dict[str, tuple[str, str | None]] = {
    "bool": ("BOOL", "bool_contents"),
    "int8": ("INT8", "int_contents"),
    "int16": ("INT16", "int_contents"),
    "int32": ("INT32", "int_contents"),
    "int64": ("INT64", "int64_contents"),
    "uint8": ("UINT8", "uint_contents"),
    "uint16": ("UINT16", "uint_contents"),
    "uint32": ("UINT32", "uint_contents"),
    "uint64": ("UINT64", "uint64_contents"),
    "float16": ("FP16", None),  # no typed field: raw only
    "float32": ("FP32", "fp32_contents"),
    "float64": ("FP64", "fp64_contents"),
}
_V2_TO_DTYPE: dict[str, tuple[np.dtype, str | None]] = {
    v2name: (np.dtype(dt), fld) for dt, (v2name, fld) in _DTYPE_TO_V2.items()
}


class MeshClientError(Exception):
    """A failed call: ``code`` is the gRPC status name (``NOT_FOUND``, ``UNAVAILABLE``, …) or ``CLIENT``
    for errors found before anything was sent (bad input)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @classmethod
    def from_rpc(cls, exc: grpc.RpcError) -> MeshClientError:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        return cls(code.name if code is not None else "UNKNOWN", details or "")


# --------------------------------------------------------------------------------------------------------
# Tensor conversion (pure)


def _to_array(value: Any) -> np.ndarray:
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.dtype.kind in ("U", "S", "O"):
        return np.asarray([_as_bytes(v) for v in arr.reshape(-1)], dtype=object).reshape(arr.shape)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    return arr


def _as_bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    raise MeshClientError("CLIENT", f"cannot send {type(v).__name__} in a BYTES tensor")


def v2_datatype(arr: np.ndarray) -> str:
    """The V2 datatype of an array (FP32/FP64/INT64/… from its numpy dtype; BYTES for strings)."""
    if arr.dtype == object:
        return "BYTES"
    try:
        return _DTYPE_TO_V2[arr.dtype.name][0]
    except KeyError:
        raise MeshClientError("CLIENT", f"unsupported numpy dtype {arr.dtype}") from None


def _named_inputs(inputs: Any, input_name: str) -> dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        return {str(k): _to_array(v) for k, v in inputs.items()}
    return {input_name: _to_array(inputs)}


def encode_inputs(
    inputs: Mapping[str, Any] | Sequence[Any] | np.ndarray,
    *,
    raw: bool = False,
    datatype: str | None = None,
    input_name: str = DEFAULT_INPUT_NAME,
) -> tuple[list[v2.ModelInferRequest.InferInputTensor], list[bytes]]:
    """Turn ``{name: array-like}`` (or one array-like / list of rows, named ``input_name``) into V2 input
    tensors. With ``raw`` the data goes into ``raw_input_contents`` (little-endian, row-major; BYTES as
    4-byte length-prefixed elements), otherwise into the typed ``contents`` field. ``datatype`` (e.g.
    ``FP32``) casts every numeric input first; by default it follows the numpy dtype."""
    tensors: list[v2.ModelInferRequest.InferInputTensor] = []
    raws: list[bytes] = []
    for name, arr in _named_inputs(inputs, input_name).items():
        if datatype and datatype != "BYTES" and arr.dtype != object:
            if datatype not in _V2_TO_DTYPE:
                raise MeshClientError("CLIENT", f"unsupported datatype {datatype}")
            arr = arr.astype(_V2_TO_DTYPE[datatype][0])
        dt = v2_datatype(arr)
        tensor = v2.ModelInferRequest.InferInputTensor(name=name, datatype=dt, shape=list(arr.shape))
        if raw:
            raws.append(_raw_bytes(arr, dt))
        elif dt == "BYTES":
            tensor.contents.bytes_contents.extend(arr.reshape(-1).tolist())
        else:
            fld = _DTYPE_TO_V2[arr.dtype.name][1]
            if fld is None:
                raise MeshClientError("CLIENT", f"{dt} can only be sent raw (use raw=True)")
            getattr(tensor.contents, fld).extend(arr.reshape(-1).tolist())
        tensors.append(tensor)
    return tensors, raws


def _raw_bytes(arr: np.ndarray, dt: str) -> bytes:
    if dt == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in arr.reshape(-1).tolist())
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _split_bytes(buf: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(buf):
        if i + 4 > len(buf):
            raise MeshClientError("CLIENT", "truncated BYTES tensor")
        (n,) = struct.unpack_from("<I", buf, i)
        out.append(bytes(buf[i + 4 : i + 4 + n]))
        i += 4 + n
    return out


def decode_tensor(
    datatype: str, shape: Sequence[int], contents: Any = None, raw: bytes | None = None
) -> np.ndarray:
    """Decode one V2 tensor (typed ``contents`` or ``raw`` bytes) into a numpy array of ``shape``."""
    shape = tuple(int(s) for s in shape)
    if datatype == "BYTES":
        items = _split_bytes(raw) if raw is not None else list(contents.bytes_contents)
        return np.asarray(items, dtype=object).reshape(shape)
    if datatype not in _V2_TO_DTYPE:
        raise MeshClientError("CLIENT", f"unsupported output datatype {datatype}")
    dtype, fld = _V2_TO_DTYPE[datatype]
    if raw is not None:
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    if fld is None:
        raise MeshClientError("CLIENT", f"{datatype} output without raw contents")
    return np.asarray(list(getattr(contents, fld)), dtype=dtype).reshape(shape)


def decode_outputs(response: v2.ModelInferResponse) -> dict[str, np.ndarray]:
    """Outputs of a ModelInferResponse by name, from raw_output_contents when present, else typed."""
    raws = list(response.raw_output_contents)
    out: dict[str, np.ndarray] = {}
    for i, t in enumerate(response.outputs):
        raw = raws[i] if raws else None
        out[t.name] = decode_tensor(t.datatype, t.shape, t.contents, raw)
    return out


def build_infer_request(
    model_id: str,
    inputs: Any,
    *,
    raw: bool = False,
    datatype: str | None = None,
    input_name: str = DEFAULT_INPUT_NAME,
) -> v2.ModelInferRequest:
    tensors, raws = encode_inputs(inputs, raw=raw, datatype=datatype, input_name=input_name)
    req = v2.ModelInferRequest(model_name=model_id, inputs=tensors)
    if raws:
        req.raw_input_contents.extend(raws)
    return req


# --------------------------------------------------------------------------------------------------------
# Status conversion (protobuf -> dict)


def model_status_dict(info: mm.ModelStatusInfo) -> dict[str, Any]:
    return {
        "status": mm.ModelStatusInfo.ModelStatus.Name(info.status),
        "errors": list(info.errors),
        "copies": [
            {
                "location": c.location,
                "status": mm.ModelStatusInfo.ModelStatus.Name(c.copyStatus),
                "time_ms": c.time,
            }
            for c in info.modelCopyInfos
        ],
    }


def vmodel_status_dict(info: mm.VModelStatusInfo) -> dict[str, Any]:
    return {
        "status": mm.VModelStatusInfo.VModelStatus.Name(info.status),
        "active_model_id": info.activeModelId,
        "target_model_id": info.targetModelId,
        "owner": info.owner,
        "active_model_status": model_status_dict(info.activeModelStatus)
        if info.HasField("activeModelStatus")
        else None,
        # set only while the target differs from the active model (as ModelMesh)
        "target_model_status": model_status_dict(info.targetModelStatus)
        if info.HasField("targetModelStatus")
        else None,
    }


def cluster_status_dict(resp: admin_pb2.ClusterStatusResponse) -> dict[str, Any]:
    return {
        "responding_instance": resp.responding_instance,
        "instances": [
            {
                "instance_id": i.instance_id,
                "address": i.address,
                "zone": i.zone,
                "labels": list(i.labels),
                "capacity_bytes": i.capacity_bytes,
                "used_bytes": i.used_bytes,
                "lru_age_ms": i.lru_age_ms,
                "model_count": i.model_count,
                "loads_in_progress": i.loads_in_progress,
                "rpm": i.rpm,
                "shutting_down": i.shutting_down,
                "leader": i.leader,
            }
            for i in resp.instances
        ],
        "models": [
            {
                "model_id": m.model_id,
                "type": m.type,
                "status": m.status,
                "loaded_on": list(m.loaded_on),
                "loading_on": list(m.loading_on),
                "failed_on": list(m.failed_on),
                "last_used_ms": m.last_used_ms,
                "errors": list(m.errors),
                "owner": m.owner,
                "min_copies": m.min_copies,
                "max_copies": m.max_copies,
                "spec_digest": m.spec_digest,
            }
            for m in resp.models
        ],
        "vmodels": [
            {
                "vmodel_id": v.vmodel_id,
                "owner": v.owner,
                "active_model_id": v.active_model_id,
                "target_model_id": v.target_model_id,
                "status": v.status,
            }
            for v in resp.vmodels
        ],
    }


# --------------------------------------------------------------------------------------------------------
# The client


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


class MeshClient:
    """Synchronous client of one mesh pod. Use as a context manager, or call ``close()``.

    ``target`` is ``host:port``. Any of ``tls_ca``/``tls_cert``/``tls_key`` (PEM file paths) switches to a
    TLS channel; ``tls_cert`` + ``tls_key`` present a client certificate (mTLS). ``timeout`` is the
    deadline of each call in seconds.
    """

    def __init__(
        self,
        target: str,
        *,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        timeout: float = 30,
    ) -> None:
        self.target = target
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if tls_ca or tls_cert or tls_key:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca), private_key=_read(tls_key), certificate_chain=_read(tls_cert)
            )
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._mm = mm_grpc.ModelMeshStub(self._channel)
        self._admin = admin_pb2_grpc.MeshAdminStub(self._channel)
        self._v2 = v2_grpc.GRPCInferenceServiceStub(self._channel)

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    @contextmanager
    def _call(self) -> Iterator[None]:
        try:
            yield
        except grpc.RpcError as exc:
            raise MeshClientError.from_rpc(exc) from exc

    # --- models

    def register(
        self,
        model_id: str,
        model_type: str,
        path: str,
        key: str = "",
        load_now: bool = False,
        sync: bool = False,
        *,
        min_copies: int = 0,
        max_copies: int = 0,
        owner: str = "",
    ) -> dict[str, Any]:
        """Register a model. ``min_copies``/``max_copies`` (0 = default) bound how many copies the mesh
        keeps; they travel as the ``mm-min-copies``/``mm-max-copies`` headers (a mesh extension), as does
        ``owner`` (``mm-owner``: who manages the registration; ``mesh apply`` sets it)."""
        req = mm.RegisterModelRequest(
            modelId=model_id,
            modelInfo=mm.ModelInfo(type=model_type, path=path, key=key),
            loadNow=load_now,
            sync=sync,
        )
        md = []
        if min_copies:
            md.append(("mm-min-copies", str(min_copies)))
        if max_copies:
            md.append(("mm-max-copies", str(max_copies)))
        if owner:
            md.append(("mm-owner", owner))
        with self._call():
            return model_status_dict(self._mm.registerModel(req, metadata=md, timeout=self.timeout))

    def unregister(self, model_id: str) -> None:
        with self._call():
            self._mm.unregisterModel(mm.UnregisterModelRequest(modelId=model_id), timeout=self.timeout)

    def status(self, model_id: str) -> dict[str, Any]:
        with self._call():
            return model_status_dict(
                self._mm.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=self.timeout)
            )

    def ensure_loaded(self, model_id: str, sync: bool = False) -> dict[str, Any]:
        req = mm.EnsureLoadedRequest(modelId=model_id, sync=sync)
        with self._call():
            return model_status_dict(self._mm.ensureLoaded(req, timeout=self.timeout))

    # --- vmodels

    def set_vmodel(
        self,
        vmodel_id: str,
        target_model_id: str,
        model_type: str | None = None,
        path: str | None = None,
        key: str | None = None,
        *,
        owner: str = "",
        auto_delete_target: bool = False,
        load_now: bool = False,
        sync: bool = False,
        expected_target: str = "",
        update_only: bool = False,
        force: bool = False,
    ) -> dict[str, Any]:
        req = mm.SetVModelRequest(
            vModelId=vmodel_id,
            targetModelId=target_model_id,
            updateOnly=update_only,
            autoDeleteTargetModel=auto_delete_target,
            loadNow=load_now,
            force=force,
            sync=sync,
            expectedTargetModelId=expected_target,
            owner=owner,
        )
        if model_type or path or key:
            req.modelInfo.CopyFrom(mm.ModelInfo(type=model_type or "", path=path or "", key=key or ""))
        with self._call():
            return vmodel_status_dict(self._mm.setVModel(req, timeout=self.timeout))

    def delete_vmodel(self, vmodel_id: str, owner: str = "") -> None:
        with self._call():
            self._mm.deleteVModel(
                mm.DeleteVModelRequest(vModelId=vmodel_id, owner=owner), timeout=self.timeout
            )

    def vmodel_status(self, vmodel_id: str, owner: str = "") -> dict[str, Any]:
        req = mm.GetVModelStatusRequest(vModelId=vmodel_id, owner=owner)
        with self._call():
            return vmodel_status_dict(self._mm.getVModelStatus(req, timeout=self.timeout))

    # --- cluster

    def cluster_status(self, include_models: bool = True) -> dict[str, Any]:
        req = admin_pb2.ClusterStatusRequest(include_models=include_models)
        with self._call():
            return cluster_status_dict(self._admin.ClusterStatus(req, timeout=self.timeout))

    # --- inference

    def infer(
        self,
        model_id: str,
        inputs: Mapping[str, Any] | Sequence[Any] | np.ndarray,
        *,
        vmodel: bool = False,
        raw: bool = False,
        datatype: str | None = None,
        input_name: str = DEFAULT_INPUT_NAME,
    ) -> dict[str, np.ndarray]:
        """Run ModelInfer on ``model_id`` (a vModel id with ``vmodel=True``) through the mesh and return
        the outputs as numpy arrays by name. ``inputs`` is ``{name: array-like}`` or one array-like (a list
        of rows), sent as ``input_name``."""
        req = build_infer_request(model_id, inputs, raw=raw, datatype=datatype, input_name=input_name)
        header = VMODEL_ID_HEADER if vmodel else MODEL_ID_HEADER
        with self._call():
            resp = self._v2.ModelInfer(req, metadata=[(header, model_id)], timeout=self.timeout)
        return decode_outputs(resp)

    def infer_raw(self, request: v2.ModelInferRequest, *, vmodel: bool = False) -> v2.ModelInferResponse:
        """Send a prepared ModelInferRequest (its ``model_name`` names the model) and return the response."""
        header = VMODEL_ID_HEADER if vmodel else MODEL_ID_HEADER
        with self._call():
            return self._v2.ModelInfer(request, metadata=[(header, request.model_name)], timeout=self.timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel connects (not the same as health SERVING; see devcluster)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise MeshClientError("UNAVAILABLE", f"{self.target} not reachable within {timeout}s") from None
