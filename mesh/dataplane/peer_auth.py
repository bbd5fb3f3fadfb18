"""PeerAuth: internal metadata (``mm-internal``, ``mm-hop``, ``mm-exclude``, ``mm-lu``) is honoured only from
the pods of this cluster.

Those headers steer loads (load here, exclude pods) and set last-used times, so a client that could send them
could pin models in cache or push loads where it likes. Every pod of a cluster shares one secret (from
``MM_PEER_SECRET_PATH``, or created once in etcd by the first pod: ``mesh.cluster.peer_secret``); pods send it
in ``mm-peer-token`` on every call to a peer, and a request carrying internal metadata without the right token
is refused with PERMISSION_DENIED naming the header. The token is compared in constant time, never logged, and
never passed to runtimes (``mm-*`` headers are dropped on the way). A last-used time from a peer is also
clamped to the present, so nothing can be pinned in the future.

Without TLS the token crosses the network in the clear like everything else; use TLS between pods
(``MM_TLS_*``) where the network is not trusted. See docs/security.md.
"""

from __future__ import annotations

import hmac

from mesh.clock import Clock
from mesh.dataplane.headers import PEER_TOKEN, RequestInfo
from mesh.errors import PermissionDenied


class PeerAuth:
    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("the peer secret must not be empty")
        self._secret = secret.encode()
        self.metadata: tuple[tuple[str, str], ...] = ((PEER_TOKEN, secret),)

    def __repr__(self) -> str:  # never shows the secret
        return "PeerAuth(<secret>)"

    def is_peer(self, info: RequestInfo) -> bool:
        return bool(info.peer_token) and hmac.compare_digest(info.peer_token.encode(), self._secret)

    def check(self, info: RequestInfo, clock: Clock) -> None:
        """Refuse internal metadata from a caller that is not a peer; clamp a peer's last-used time to now."""
        header = info.internal_header()
        if not header:
            return
        if not self.is_peer(info):
            raise PermissionDenied(f"header {header} is accepted only from the pods of this mesh cluster")
        if info.last_used:
            info.last_used = min(info.last_used, clock.now_ms())
