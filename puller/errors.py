"""The puller's errors: every way a pull can fail, as ``MeshError`` subclasses.

Owns the wording of storage failures. Each class builds its message from keyword-only fields that are
safe to show (storage key names, buckets, object keys, hosts), never from credentials, header values or
URLs with their query strings: these messages travel to clients through ``loadModel`` and end up in logs.
The gRPC code and ``retryable`` flag say whether trying again (here, later, or on another pod) may help.
"""

from __future__ import annotations

import grpc

from mesh.errors import MeshError


class PullError(MeshError):
    """Base of every puller failure."""

    grpc_code = grpc.StatusCode.INTERNAL


class InvalidModelKey(PullError):
    """The model key is not valid JSON, or its fields have the wrong types."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, *, reason: str) -> None:
        super().__init__(f"invalid model key: {reason}")
        self.reason = reason


class InvalidModelPath(PullError):
    """The model path (or model id, as a directory name) cannot be used at all."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, *, path: str, reason: str) -> None:
        super().__init__(f"invalid model path '{path}': {reason}")
        self.path = path
        self.reason = reason


class PathEscapesRoot(PullError):
    """A local path, ``file://`` URI, object key or a symbolic link met on the way would leave its
    confining root. ``via`` names the link (relative to the root), never where it points."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, *, path: str, root: str, via: str = "") -> None:
        how = f": '{via}' is a symbolic link to a place outside it" if via else ""
        super().__init__(f"path '{path}' escapes its allowed root {root}{how}")
        self.path = path
        self.root = root
        self.via = via


class UnknownStorageKey(PullError):
    """The model key names a storage entry that the storage config does not hold (or nothing matches)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, *, storage_key: str, known: list[str] | None = None, detail: str = "") -> None:
        names = ", ".join(sorted(known or [])) or "none"
        msg = detail or f"storage key '{storage_key}' is not in the storage config"
        super().__init__(f"{msg} (configured keys: {names})")
        self.storage_key = storage_key


class StorageParamNotAllowed(PullError):
    """A registration's ``storage_params`` (or model key ``bucket``, or ``s3://`` URI bucket) would change
    a storage entry field that the administrator's entry does not open to registrations."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, *, storage_key: str, param: str, allowed: list[str]) -> None:
        names = ", ".join(sorted(allowed)) or "none"
        super().__init__(
            f"storage_params '{param}' may not be set for storage key '{storage_key}': the storage config "
            f"entry does not allow it (allowed_params: {names})"
        )
        self.storage_key = storage_key
        self.param = param


class InvalidStorageConfig(PullError):
    """A storage config entry is malformed (unknown type, missing field, unreadable file)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, *, storage_key: str, reason: str) -> None:
        super().__init__(f"storage config entry '{storage_key}' is invalid: {reason}")
        self.storage_key = storage_key
        self.reason = reason


class ClientNotInstalled(PullError):
    """A storage entry needs an optional client library that is not installed (the ``minio`` extra)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, *, storage_key: str, client: str, extra: str) -> None:
        super().__init__(
            f"storage '{storage_key}' uses the {client} client, which is not installed in this runtime: "
            f"install the '{extra}' extra (pip install 'modelmesh-py[{extra}]'), or use an s3 entry with the "
            "default boto3 client"
        )
        self.storage_key = storage_key
        self.client = client


class BucketNotFound(PullError):
    """The bucket does not exist, or no bucket was given at all."""

    grpc_code = grpc.StatusCode.NOT_FOUND

    def __init__(self, *, storage_key: str, bucket: str) -> None:
        if bucket:
            msg = f"bucket '{bucket}' does not exist (storage key '{storage_key}')"
        else:
            msg = (
                f"no bucket: storage key '{storage_key}' has no bucket/default_bucket "
                "and the model key gives none"
            )
        super().__init__(msg)
        self.storage_key = storage_key
        self.bucket = bucket


class ArtifactNotFound(PullError):
    """No object, no object under the prefix, no file: nothing to pull."""

    grpc_code = grpc.StatusCode.NOT_FOUND

    def __init__(self, *, where: str, path: str) -> None:
        super().__init__(f"model artifact '{path}' not found in {where} (no object, and no objects under it)")
        self.where = where
        self.path = path


class AccessDenied(PullError):
    """The storage rejected the credentials (AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch, 401/403)."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED

    def __init__(self, *, where: str, code: str) -> None:
        super().__init__(f"access denied by {where} ({code}): check the storage credentials")
        self.where = where
        self.code = code


class StorageUnavailable(PullError):
    """The storage could not be reached (``unreachable``) or kept failing transiently after the retries.

    FAILED_PRECONDITION, not UNAVAILABLE: over the runtime SPI, UNAVAILABLE from ``loadModel`` means "the
    runtime itself is down" to the mesh, which would blame a healthy runtime and peer. A storage outage is
    a load failure whose fix lies outside this pod (the endpoint, the network); the mesh records it in
    the model's status with this message. ``retryable`` stays True: a later load may succeed."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    retryable = True

    def __init__(self, *, where: str, cause: str, attempts: int = 1, unreachable: bool = False) -> None:
        state = "unreachable" if unreachable else "unavailable"
        super().__init__(f"{where} {state} after {attempts} attempt(s): {cause}")
        self.where = where
        self.cause = cause
        self.attempts = attempts
        self.unreachable = unreachable


class ObjectTooLarge(PullError):
    """An object (or the whole model) is larger than ``max_object_bytes``."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, *, path: str, size: int, limit: int) -> None:
        super().__init__(f"'{path}' is {size} bytes, more than the limit of {limit} bytes")
        self.path = path
        self.size = size
        self.limit = limit


class DiskBudgetExceeded(PullError):
    """The model does not fit in the disk budget even after deleting every model that is not in use."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True

    def __init__(self, *, model_id: str, needed: int, available: int, budget: int) -> None:
        super().__init__(
            f"model '{model_id}' needs {needed} bytes on disk but only {available} of the "
            f"{budget}-byte disk budget are free (the rest belongs to models in use)"
        )
        self.model_id = model_id
        self.needed = needed
        self.available = available
        self.budget = budget


class DiskFull(PullError):
    """The model directory's filesystem ran out of space (ENOSPC, or a quota: EDQUOT) while the model was being
    written; the partial download was deleted. Retryable: other models' unloads, or another pod, may have room."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True

    def __init__(self, *, model_id: str, free: int, total: int) -> None:
        super().__init__(
            f"no space left on device for model '{model_id}': it does not fit on the model directory's "
            f"filesystem ({free} of {total} bytes free without it)"
        )
        self.model_id = model_id
        self.free = free
        self.total = total


class TruncatedDownload(PullError):
    """The storage sent fewer bytes than it announced."""

    grpc_code = grpc.StatusCode.DATA_LOSS
    retryable = True

    def __init__(self, *, path: str, expected: int, received: int) -> None:
        super().__init__(f"download of '{path}' was truncated: got {received} of {expected} bytes")
        self.path = path
        self.expected = expected
        self.received = received


class VerificationFailed(PullError):
    """The downloaded bytes do not match the size or checksum (ETag/MD5) the storage announced."""

    grpc_code = grpc.StatusCode.DATA_LOSS
    retryable = True

    def __init__(self, *, path: str, reason: str) -> None:
        super().__init__(f"verification of '{path}' failed: {reason}")
        self.path = path
        self.reason = reason
