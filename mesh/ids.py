"""Identifiers: typed ids and the one validator for every id that becomes part of an etcd key.

Ids end up inside keys (``…/registry/<modelId>``), gRPC metadata and file names, so they are checked at
every entry point: non-empty, bounded length, no ``/``, no control characters, no leading/trailing space,
and not ``.``/``..`` (which would be path components on the runtime side).
"""

from __future__ import annotations

import socket
import uuid
from typing import NewType

from mesh.errors import InvalidRequest

ModelId = NewType("ModelId", str)
VModelId = NewType("VModelId", str)
InstanceId = NewType("InstanceId", str)

MAX_ID_LENGTH = 256
#: Bounds of the other client-chosen strings that become state (registry records, runtime calls). A record
#: stays far below etcd's request limit (1.5 MiB), and a runtime never gets an unbounded path or key.
MAX_TYPE_LENGTH = 256
MAX_PATH_LENGTH = 4096
MAX_KEY_LENGTH = 16 * 1024
MAX_OWNER_LENGTH = 256


def check_id(value: str, *, what: str = "model id") -> str:
    """Return ``value`` if it is a valid id, else raise InvalidRequest naming the problem."""
    if not isinstance(value, str) or value == "":
        raise InvalidRequest(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidRequest(f"{what} is too long ({len(value)} > {MAX_ID_LENGTH} characters)")
    if "/" in value:
        raise InvalidRequest(f"{what} '{_printable(value)}' must not contain '/'")
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in value):
        raise InvalidRequest(f"{what} '{_printable(value)}' must not contain control characters")
    if value != value.strip():
        raise InvalidRequest(f"{what} '{value}' must not start or end with whitespace")
    if value in (".", ".."):
        raise InvalidRequest(f"{what} must not be '.' or '..'")
    return value


def check_length(value: str, limit: int, *, what: str) -> str:
    """``value`` if it has at most ``limit`` characters, else InvalidRequest naming the field and the limit."""
    if len(value) > limit:
        raise InvalidRequest(f"{what} is too long ({len(value)} > {limit} characters)")
    return value


def check_model_info(model_type: str, path: str, key: str) -> None:
    """Validate a registration's ModelInfo (type required; every field bounded)."""
    if not model_type:
        raise InvalidRequest("modelInfo.type must not be empty")
    check_length(model_type, MAX_TYPE_LENGTH, what="modelInfo.type")
    check_length(path, MAX_PATH_LENGTH, what="modelInfo.path")
    check_length(key, MAX_KEY_LENGTH, what="modelInfo.key")


def model_id(value: str) -> ModelId:
    return ModelId(check_id(value, what="model id"))


def vmodel_id(value: str) -> VModelId:
    return VModelId(check_id(value, what="vmodel id"))


def instance_id(value: str) -> InstanceId:
    return InstanceId(check_id(value, what="instance id"))


def default_instance_id(hostname: str = "") -> InstanceId:
    """ModelMesh uses the last 12 characters of the pod name; we use the host name (settings pass HOSTNAME
    when set), plus a suffix that keeps two processes on one host (``mesh up``) apart."""
    host = hostname or socket.gethostname() or "pod"
    return InstanceId(f"{host[-12:]}-{uuid.uuid4().hex[:6]}")


def _printable(value: str) -> str:
    return value.encode("unicode_escape").decode("ascii")[:80]
