"""Bounds on what the runtime accepts over the ``mmesh.ModelRuntime`` SPI, checked before any work.

Owns the field limits of ``loadModel`` / ``predictModelSize`` requests. The mesh bounds the same
registration fields at its API (it stores them in etcd); these are the runtime's own, so a runtime
behind any mesh refuses oversized input with INVALID_ARGUMENT naming the field and the limit instead of
carrying it into the puller, a log line or a file name. Model ids are bounded by ``mesh.ids.check_id``
(``MAX_ID_LENGTH``). Lengths are in characters of the decoded string.
"""

from __future__ import annotations

from mesh.errors import InvalidRequest
from mesh.ids import MAX_KEY_LENGTH, MAX_PATH_LENGTH, MAX_TYPE_LENGTH

# The same bounds as the mesh's registration API (one set of numbers, in mesh.ids).
MAX_MODEL_TYPE_CHARS = MAX_TYPE_LENGTH
"""``modelType``: a type name or a ModelMesh label such as ``mt:sklearn:1|pv:grpc-v2``."""

MAX_MODEL_PATH_CHARS = MAX_PATH_LENGTH
"""``modelPath``: a storage path, object key or URL (Linux PATH_MAX; common URL limits are 2-8 KiB)."""

MAX_MODEL_KEY_CHARS = MAX_KEY_LENGTH
"""``modelKey``: the JSON model key with its ``storage_params``."""

LIMITS: dict[str, int] = {
    "modelType": MAX_MODEL_TYPE_CHARS,
    "modelPath": MAX_MODEL_PATH_CHARS,
    "modelKey": MAX_MODEL_KEY_CHARS,
}


def check_field_sizes(request: object) -> None:
    """Raise InvalidRequest for the first bounded string field of ``request`` that is too long."""
    for name, limit in LIMITS.items():
        value = getattr(request, name, "")
        if len(value) > limit:
            raise InvalidRequest(f"{name} is too long ({len(value)} > {limit} characters)")
