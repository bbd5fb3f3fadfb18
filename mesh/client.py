"""MeshClient: the synchronous Python client of a mesh pod (management, cluster status and V2 inference).

Owns the client side of the three services a pod serves on its external port: ``mmesh.ModelMesh``
(register/unregister/status/ensureLoaded/vModels), ``meshadmin.MeshAdmin`` (cluster-wide status) and
``inference.GRPCInferenceService`` (ModelInfer). It also owns the conversion between Python/numpy values and
V2 tensors, kept as pure functions (``encode_inputs``, ``decode_outputs``) so they are tested without a server.

Management calls return plain dicts (JSON-printable, so the CLI prints them as they are); every gRPC failure
surfaces as one ``MeshClientError(code, message)`` carrying the server's status code name and details.
``MeshClient`` is synchronous (scripts, the CLI, tests); ``mesh.aio_client.AsyncMeshClient`` has the same
methods for asyncio. Both build their requests with the ``*_call`` functions here, take several pod
addresses and move to the next one when a call fails with UNAVAILABLE.
"""

from __future__ import annotations

import inspect
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from mesh.v2types import CONTENTS_FIELD, DTYPES
from protos.inference import grpc_predict_v2_pb2 as v2
from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc
from protos.meshadmin import admin_pb2, admin_pb2_grpc
from protos.mmesh import model_mesh_pb2 as mm
from protos.mmesh import model_mesh_pb2_grpc as mm_grpc

MODEL_ID_HEADER = "mm-model-id"
VMODEL_ID_HEADER = "mm-vmodel-id"
DEFAULT_INPUT_NAME = "input-0"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# V2 datatype -> (numpy dtype, its typed InferTensorContents field or None: FP16 travels raw only), and numpy
# dtype name -> (V2 datatype, field); from the one table in mesh.v2types. Narrow ints travel widened in the
# typed fields, as the V2 protocol prescribes (INT8/16 in int_contents, UINT8/16 in uint_contents).
_V2_TO_DTYPE: dict[str, tuple[np.dtype, str | None]] = {
    name: (dtype, CONTENTS_FIELD.get(name)) for name, dtype in DTYPES.items()
}
_DTYPE_TO_V2: dict[str, tuple[str, str | None]] = {
    dtype.name: (name, fld) for name, (dtype, fld) in _V2_TO_DTYPE.items()
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
        "total_models": resp.total_models,
        "load_timeout_ms": resp.load_timeout_ms,
        "next_page_token": resp.next_page_token,
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
                "size_bytes": m.size_bytes,
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


def merge_pages(pages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One status dict from consecutive pages: the last page's pods and counts, every page's models (and the
    vmodels, which come with the first page)."""
    if not pages:
        raise ValueError("no pages")
    out = dict(pages[-1])
    out["models"] = [m for page in pages for m in page["models"]]
    out["vmodels"] = [v for page in pages for v in page["vmodels"]]
    out["next_page_token"] = ""
    return out


# --------------------------------------------------------------------------------------------------------
# Requests (shared by MeshClient and mesh.aio_client.AsyncMeshClient: one place builds each call)


@dataclass(frozen=True)
class Call:
    """One unary call: which stub (``mm``, ``admin``, ``v2``), method, request and metadata."""

    stub: str
    method: str
    request: Any
    metadata: tuple[tuple[str, str], ...] = ()


class Rpc:
    """A client method declared once for both clients: ``build`` makes the ``Call`` from the method's
    arguments (its signature and docstring are the method's), ``convert`` turns the response into what the
    method returns. ``MeshClient`` runs it and returns the result; ``AsyncMeshClient`` returns a coroutine."""

    def __init__(self, build: Callable[..., Call], convert: Callable[[Any], Any] | None = None) -> None:
        self.build = build
        self.convert = convert or _nothing
        returns = "None" if convert is None else inspect.signature(convert).return_annotation
        self.signature = inspect.signature(build).replace(return_annotation=returns)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, client: ClientCore | None, owner: type | None = None) -> Any:
        if client is None:
            return self
        method = client._method(self)
        method.__name__ = method.__qualname__ = self.name
        method.__doc__ = self.build.__doc__
        method.__signature__ = self.signature
        return method


def _nothing(response: Any) -> None:
    return None


def _response(response: v2.ModelInferResponse) -> v2.ModelInferResponse:
    return response


def parse_addresses(addresses: str | Sequence[str]) -> list[str]:
    """``"a:1,b:2"`` or ``["a:1", "b:2"]`` → ``["a:1", "b:2"]`` (blanks dropped; at least one)."""
    items = addresses.split(",") if isinstance(addresses, str) else [str(a) for a in addresses]
    out = [a.strip() for a in items if a.strip()]
    if not out:
        raise MeshClientError("CLIENT", "no pod address given")
    return out


def register_call(
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
) -> Call:
    """Register a model. ``min_copies``/``max_copies`` (0 = default) bound how many copies the mesh keeps;
    they travel as the ``mm-min-copies``/``mm-max-copies`` headers (a mesh extension), as does ``owner``
    (``mm-owner``: who manages the registration; ``mesh apply`` sets it). Returns the model's status."""
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
    return Call("mm", "registerModel", req, tuple(md))


def unregister_call(model_id: str) -> Call:
    """Unregister a model (its copies are unloaded)."""
    return Call("mm", "unregisterModel", mm.UnregisterModelRequest(modelId=model_id))


def status_call(model_id: str) -> Call:
    """The model's status and its copies."""
    return Call("mm", "getModelStatus", mm.GetStatusRequest(modelId=model_id))


def ensure_loaded_call(model_id: str, sync: bool = False) -> Call:
    """Load the model somewhere if no copy is loaded (``sync``: answer once it is); returns its status."""
    return Call("mm", "ensureLoaded", mm.EnsureLoadedRequest(modelId=model_id, sync=sync))


def set_vmodel_call(
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
) -> Call:
    """Create or move a vModel (an alias) to ``target_model_id``, registering that model first when its
    ``model_type``/``path``/``key`` are given. Returns the vModel's status."""
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
    return Call("mm", "setVModel", req)


def delete_vmodel_call(vmodel_id: str, owner: str = "") -> Call:
    """Delete a vModel (and its target model when it was set with ``auto_delete_target``)."""
    return Call("mm", "deleteVModel", mm.DeleteVModelRequest(vModelId=vmodel_id, owner=owner))


def vmodel_status_call(vmodel_id: str, owner: str = "") -> Call:
    """The vModel's status: its active and target models."""
    return Call("mm", "getVModelStatus", mm.GetVModelStatusRequest(vModelId=vmodel_id, owner=owner))


def cluster_status_call(
    include_models: bool = True,
    *,
    page_size: int = 0,
    page_token: str = "",
    model_id_glob: str = "",
    model_type: str = "",
    status: str = "",
    pod: str = "",
) -> Call:
    """One page of models (``next_page_token`` continues it; empty on the last page), with the pods."""
    req = admin_pb2.ClusterStatusRequest(
        include_models=include_models,
        page_size=page_size,
        page_token=page_token,
        model_id_glob=model_id_glob,
        type=model_type,
        status=status,
        instance_id=pod,
    )
    return Call("admin", "ClusterStatus", req)


def infer_call(
    model_id: str,
    inputs: Any,
    *,
    vmodel: bool = False,
    raw: bool = False,
    datatype: str | None = None,
    input_name: str = DEFAULT_INPUT_NAME,
) -> Call:
    """Run ModelInfer on ``model_id`` (a vModel id with ``vmodel=True``) through the mesh and return the
    outputs as numpy arrays by name. ``inputs`` is ``{name: array-like}`` or one array-like (a list of rows),
    sent as ``input_name``."""
    req = build_infer_request(model_id, inputs, raw=raw, datatype=datatype, input_name=input_name)
    header = VMODEL_ID_HEADER if vmodel else MODEL_ID_HEADER
    return Call("v2", "ModelInfer", req, ((header, model_id),))


def infer_raw_call(request: v2.ModelInferRequest, *, vmodel: bool = False) -> Call:
    """Send a prepared ModelInferRequest (its ``model_name`` names the model) and return the response."""
    header = VMODEL_ID_HEADER if vmodel else MODEL_ID_HEADER
    return Call("v2", "ModelInfer", request, ((header, request.model_name),))


def fails_over(exc: grpc.RpcError) -> bool:
    """Whether a failed call may be tried on the next address: UNAVAILABLE, which a pod answers when it
    cannot be reached (connection refused or lost) or cannot act (shutting down, no etcd, no pod for the
    load); any other status is the pod's answer and goes back to the caller."""
    code = exc.code() if hasattr(exc, "code") else None
    return code == grpc.StatusCode.UNAVAILABLE


def channel_credentials(tls_ca: str | None, tls_cert: str | None, tls_key: str | None):
    if not (tls_ca or tls_cert or tls_key):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls_ca), private_key=_read(tls_key), certificate_chain=_read(tls_cert)
    )


CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Reconnect soon to a pod that comes back; a dead one fails fast (no wait_for_ready) in the meantime.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


# --------------------------------------------------------------------------------------------------------
# The client core (shared by MeshClient and mesh.aio_client.AsyncMeshClient, which differ only in how a call
# is sent and awaited)


class ClientCore:
    """Addresses, TLS credentials, the channel and stubs per address, and which address answered last.

    ``target`` is ``host:port``, a comma-separated list of them, or a sequence. Any of
    ``tls_ca``/``tls_cert``/``tls_key`` (PEM file paths) switches to TLS; ``tls_cert`` + ``tls_key`` present a
    client certificate (mTLS). ``timeout`` (seconds) is every call's deadline, failovers included."""

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        timeout: float = 30,
    ) -> None:
        self.addresses = parse_addresses(target)
        self.timeout = timeout
        self._creds = channel_credentials(tls_ca, tls_cert, tls_key)
        self._channels: dict[int, Any] = {}
        self._stubs: dict[int, dict[str, Any]] = {}
        self._current = 0
        self.failovers = 0  # calls that moved on to another address (observability, tests)
        self._lock = threading.Lock()  # the channel table, for MeshClient's callers on several threads

    @property
    def target(self) -> str:
        """The address calls go to now."""
        return self.addresses[self._current]

    def _open(self, index: int, api: Any) -> dict[str, Any]:
        """A channel to address ``index`` through ``api`` (``grpc`` or ``grpc.aio``) and its three stubs."""
        address = self.addresses[index]
        if self._creds is None:
            channel = api.insecure_channel(address, options=CHANNEL_OPTIONS)
        else:
            channel = api.secure_channel(address, self._creds, options=CHANNEL_OPTIONS)
        self._channels[index] = channel
        stubs = self._stubs[index] = {
            "mm": mm_grpc.ModelMeshStub(channel),
            "admin": admin_pb2_grpc.MeshAdminStub(channel),
            "v2": v2_grpc.GRPCInferenceServiceStub(channel),
        }
        return stubs

    def _take_channels(self) -> list[Any]:
        channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        return channels

    def _failover(self, timeout: float | None) -> Failover:
        return Failover(self, self.timeout if timeout is None else timeout)

    def _method(self, rpc: Rpc) -> Callable[..., Any]:
        """``rpc`` as this client's method: sent and converted, or a coroutine doing so (asyncio)."""
        raise NotImplementedError

    # --- the API: one declaration per method, for both clients (the docs are the builders')

    register = Rpc(register_call, model_status_dict)
    unregister = Rpc(unregister_call)
    status = Rpc(status_call, model_status_dict)
    ensure_loaded = Rpc(ensure_loaded_call, model_status_dict)
    set_vmodel = Rpc(set_vmodel_call, vmodel_status_dict)
    delete_vmodel = Rpc(delete_vmodel_call)
    vmodel_status = Rpc(vmodel_status_call, vmodel_status_dict)
    cluster_status_page = Rpc(cluster_status_call, cluster_status_dict)
    infer = Rpc(infer_call, decode_outputs)
    infer_raw = Rpc(infer_raw_call, _response)


class Failover:
    """One call's walk over a client's addresses: the one that answered last first, then the next ones, each
    at most once, all within one deadline. The client sends; this decides what comes next:

        walk = client._failover(timeout)
        for index, remaining in walk:
            try:
                response = send(index, remaining)
            except grpc.RpcError as exc:
                walk.failed(exc)  # raises MeshClientError unless the status is UNAVAILABLE
                continue
            return walk.answered(index, response)
        raise walk.exhausted()
    """

    def __init__(self, client: ClientCore, timeout: float) -> None:
        self._client = client
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout
        self._start = client._current
        self._step = 0
        self._last: grpc.RpcError | None = None

    def __iter__(self) -> Iterator[tuple[int, float]]:
        count = len(self._client.addresses)
        for step in range(count):
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                return
            self._step = step
            yield (self._start + step) % count, remaining

    def failed(self, exc: grpc.RpcError) -> None:
        if not fails_over(exc):
            raise MeshClientError.from_rpc(exc) from exc
        self._last = exc
        self._client.failovers += self._step < len(self._client.addresses) - 1

    def answered(self, index: int, response: Any) -> Any:
        self._client._current = index
        return response

    def exhausted(self) -> MeshClientError:
        """The error to raise when no address answered: the last UNAVAILABLE, or the deadline."""
        if self._last is None:
            return MeshClientError("DEADLINE_EXCEEDED", f"no answer within {self._timeout}s")
        self._client._current = (self._start + 1) % len(self._client.addresses)  # start elsewhere next time
        error = MeshClientError.from_rpc(self._last)
        error.__cause__ = self._last
        return error


# --------------------------------------------------------------------------------------------------------
# The client


class MeshClient(ClientCore):
    """Synchronous client of a mesh: one or several pod addresses. Use as a context manager, or ``close()``.

    Arguments as ``ClientCore``. Calls go to the address that answered last; a call that fails with
    UNAVAILABLE (the pod is gone, unreachable or cannot act) is tried on the next address, each address at
    most once per call, all within the call's deadline. Thread-safe.
    """

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            channels = self._take_channels()
        for ch in channels:
            ch.close()

    def _stub(self, index: int, name: str):
        with self._lock:
            stubs = self._stubs.get(index) or self._open(index, grpc)
            return stubs[name]

    def _run(self, call: Call, timeout: float | None = None) -> Any:
        """``call`` on the current address, then (on UNAVAILABLE) on the next ones, within one deadline."""
        walk = self._failover(timeout)
        for index, remaining in walk:
            try:
                fn = getattr(self._stub(index, call.stub), call.method)
                response = fn(call.request, metadata=call.metadata, timeout=remaining)
            except grpc.RpcError as exc:
                walk.failed(exc)
                continue
            return walk.answered(index, response)
        raise walk.exhausted()

    def _method(self, rpc: Rpc) -> Callable[..., Any]:
        def method(*args: Any, **kwargs: Any) -> Any:
            return rpc.convert(self._run(rpc.build(*args, **kwargs)))

        return method

    def cluster_status(
        self,
        include_models: bool = True,
        *,
        page_size: int = 0,
        model_id_glob: str = "",
        model_type: str = "",
        status: str = "",
        pod: str = "",
    ) -> dict[str, Any]:
        """The whole cluster status: every page of models (matching the filters), merged."""
        pages, token = [], ""
        while True:
            page = self.cluster_status_page(
                include_models, page_size=page_size, page_token=token, model_id_glob=model_id_glob,
                model_type=model_type, status=status, pod=pod,
            )  # fmt: skip
            pages.append(page)
            token = page["next_page_token"]
            if not token or not include_models:
                return merge_pages(pages)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until a channel to one of the addresses connects (not the same as health SERVING)."""
        deadline = time.monotonic() + timeout
        while True:
            for index in range(len(self.addresses)):
                self._stub(index, "mm")
                try:
                    grpc.channel_ready_future(self._channels[index]).result(timeout=0.2)
                except grpc.FutureTimeoutError:
                    continue
                self._current = index
                return
            if time.monotonic() > deadline:
                shown = ",".join(self.addresses)
                raise MeshClientError("UNAVAILABLE", f"{shown} not reachable within {timeout}s")
