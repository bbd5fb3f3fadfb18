"""The cluster's peer secret: owns ``config/peer-secret`` (see ``mesh.dataplane.peer_auth`` for its use).

An administrator may give it as a file (``MM_PEER_SECRET_PATH``, e.g. a Kubernetes Secret); otherwise the
first pod of a cluster creates a random one in etcd with a create-if-absent transaction and every other pod
reads it, so a cluster is protected with no configuration. Whoever can read etcd can read it, and whoever can
read etcd is an administrator already (the registry, leases and vModels live there too).
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from mesh.errors import InvalidRequest
from mesh.kv.client import KvClient
from mesh.kv.keys import Keys

SECRET_BYTES = 32
MIN_FILE_SECRET = 16


async def peer_secret(kv: KvClient, keys: Keys, *, path: str = "") -> str:
    """The cluster's peer secret: from ``path`` when given, else etcd (created by the first pod)."""
    if path:
        secret = await asyncio.to_thread(lambda: Path(path).read_text().strip())
        if len(secret) < MIN_FILE_SECRET:
            raise InvalidRequest(f"the peer secret in {path} must have at least {MIN_FILE_SECRET} characters")
        return secret
    key = keys.config("peer-secret")
    _won, entry = await kv.cas_put(key, secrets.token_hex(SECRET_BYTES).encode(), 0)
    if entry is None:  # the put did not report the key back: read it
        entry = await kv.get(key)
    if entry is None or not entry.value:
        raise InvalidRequest("the cluster's peer secret is missing from etcd")
    return entry.value.decode()
