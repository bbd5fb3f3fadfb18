"""What happens after each inference request, whatever its transport (gRPC or REST): metrics and the request log.

``RequestNote`` is filled by ``Router.handle`` as it decides (which model, which vModel, whether the request came
from a peer, which route it took); the transport then calls ``RequestObserver.done`` once with the outcome.

- Metrics: external requests only (a request forwarded by a peer is counted by the pod that received it from
  the client, as ModelMesh counts ``api_request`` at the ingress), so summing over pods counts client requests.
- Request log (``MM_LOG_REQUESTS``): one INFO line per request on the ``mesh.requests`` logger with model id,
  vModel id, pod, route (hit / load / forward / forward-load / absent), transport, method, status and duration,
  and the trace id when the request carried a W3C ``traceparent``. With it off, ``done`` does not build the line
  at all (one attribute test); the hot path pays nothing else for it. No header value or payload is logged, so
  nothing secret can reach the line (and the pod's log handlers redact anyway).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mesh.metrics import MeshMetrics

REQUEST_LOG = logging.getLogger("mesh.requests")


@dataclass(slots=True)
class RequestNote:
    model_id: str = ""
    vmodel_id: str = ""
    internal: bool = False  # forwarded by a peer (mm-internal)
    route: str = ""  # hit | load | forward | forward-load | absent
    trace_id: str = ""
    code: str = "OK"  # the gRPC status name it ended with (the request's span takes it)


class RequestObserver:
    def __init__(self, metrics: MeshMetrics, *, pod: str, log_requests: bool = False) -> None:
        self.metrics = metrics
        self.pod = pod
        self.log_requests = log_requests

    def done(
        self,
        transport: str,
        method: str,
        code: str,
        elapsed_s: float,
        request_bytes: int,
        response_bytes: int,
        note: RequestNote,
    ) -> None:
        elapsed_ms = elapsed_s * 1000.0
        if not note.internal:
            self.metrics.request(
                method, code, elapsed_ms, request_bytes, response_bytes, note.model_id, note.vmodel_id
            )
        if self.log_requests:
            self._log(transport, method, code, elapsed_ms, request_bytes, response_bytes, note)

    def _log(
        self,
        transport: str,
        method: str,
        code: str,
        elapsed_ms: float,
        request_bytes: int,
        response_bytes: int,
        note: RequestNote,
    ) -> None:
        fields = {
            "model_id": note.model_id,
            "vmodel_id": note.vmodel_id,
            "pod": self.pod,
            "route": note.route or "none",
            "internal": note.internal,
            "transport": transport,
            "method": method,
            "status": code,
            "duration_ms": round(elapsed_ms, 3),
            "request_bytes": request_bytes,
            "response_bytes": max(0, response_bytes),
        }
        if note.trace_id:
            fields["trace_id"] = note.trace_id
        REQUEST_LOG.info(
            "%s %s model=%s route=%s status=%s %.1fms",
            transport,
            method,
            note.model_id or "-",
            fields["route"],
            code,
            elapsed_ms,
            extra={"request": fields},
        )


def trace_id_of(metadata) -> str:
    """The trace id of a W3C ``traceparent`` in ``metadata`` ("" if none or malformed)."""
    for key, value in metadata or ():
        if key == "traceparent":
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
            parts = text.split("-")
            if len(parts) == 4 and len(parts[1]) == 32:
                return parts[1]
    return ""
