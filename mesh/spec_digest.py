"""The identity of a model registration, as a digest: what ``mesh apply`` compares to decide whether a
registered model still matches its file, without the admin API ever printing a path or storage key (a path
may carry URL credentials, a key storage parameters). The server (``mesh/api/admin.py``) and the client
(``mesh/apply.py``) both call this one function, so they cannot disagree on it."""

from __future__ import annotations

import hashlib
import json


def spec_digest(model_type: str, path: str, key: str) -> str:
    """A stable digest of (type, path, key): 32 hex characters of SHA-256."""
    raw = json.dumps([model_type, path, key], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]
