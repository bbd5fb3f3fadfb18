"""RestApi: the KServe V2 REST protocol on a pod, served through the same ``Router.handle`` as gRPC.

Transport-neutral: ``mesh.dataplane.http`` parses HTTP and calls ``RestApi.handle(method, target, headers,
body)``; the answer is a ``RestResponse``. Paths (``{id}`` URL-encoded; ``/versions/{v}`` optional):

| request | answer |
|---|---|
| ``GET /v2/health/live`` | 200 ``{"live": true}`` (answered by the event loop: see ``mesh.health``) |
| ``GET /v2/health/ready`` | 200 ``{"ready": true}``, or 400 ``{"ready": false, "reason": ...}`` (the V2 spec's 4xx) |
| ``GET /v2`` | server metadata |
| ``GET /v2/models/{id}`` | model metadata (V2 ``ModelMetadata`` through the router) |
| ``GET /v2/models/{id}/ready`` | 200 ``{"name", "ready": true}`` or 400 with ``"ready": false``; never loads |
| ``POST /v2/models/{id}/infer`` | V2 JSON tensors (binary-data extension too) → ``ModelInfer`` → JSON |

The id in the path is the request's ``model_name``, so a vModel id resolves to its active model exactly as on
gRPC, and hits, forwards and loads behave the same. Errors go through ``mesh.errors.to_http`` (the gRPC code of
the exception, then one HTTP table) with a JSON body ``{"error": message, "code": grpc status name}``; messages
are redacted (``mesh.redact``) as the gRPC boundary does. Only the W3C trace headers of the HTTP request are
passed on as metadata (``traceparent``, ``tracestate``); mesh-internal headers cannot be sent over REST.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from mesh.clock import SYSTEM_CLOCK, Clock
from mesh.dataplane import v2json
from mesh.dataplane.headers import V2_SERVICE
from mesh.dataplane.observe import RequestNote, RequestObserver, trace_id_of
from mesh.dataplane.router import Router
from mesh.errors import CLIENT_CODES, InvalidRequest, MeshError, ModelNotFound, to_http
from mesh.ids import check_id
from mesh.redact import redact_text
from mesh.tracing import TRACING
from protos.inference import grpc_predict_v2_pb2 as v2

log = logging.getLogger(__name__)

MODEL_INFER = f"/{V2_SERVICE}/ModelInfer"
MODEL_METADATA = f"/{V2_SERVICE}/ModelMetadata"
MODEL_READY = f"/{V2_SERVICE}/ModelReady"
_FORWARDED_HEADERS = ("traceparent", "tracestate")
_CLIENT_CODE_NAMES = frozenset(c.name for c in CLIENT_CODES)
JSON = "application/json"
OCTETS = "application/octet-stream"


@dataclass(slots=True)
class RestResponse:
    status: int
    body: bytes
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


def _json(status: int, doc: object) -> RestResponse:
    return RestResponse(status, json.dumps(doc, separators=(",", ":")).encode())


class NotFoundPath(MeshError):
    """No such REST path (HTTP 404)."""

    grpc_code = ModelNotFound.grpc_code


class RestApi:
    def __init__(
        self,
        router: Router,
        observer: RequestObserver,
        *,
        ready: Callable[[], tuple[bool, str]],
        version: str,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.router = router
        self.observer = observer
        self.ready = ready
        self.version = version
        self.clock = clock

    async def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> RestResponse:
        """Answer one HTTP request (``target`` is the raw request target; ``headers`` keys are lower-case)."""
        path = target.split("?", 1)[0]
        parts = [p for p in path.split("/") if p]
        try:
            if not parts or parts[0] != "v2":
                raise NotFoundPath(f"no such path: {path[:200]}")
            if len(parts) == 1:
                self._expect(method, "GET", path)
                return _json(200, {"name": "modelmesh-py", "version": self.version, "extensions": []})
            if parts[1] == "health" and len(parts) == 3 and parts[2] in ("live", "ready"):
                self._expect(method, "GET", path)
                if parts[2] == "live":
                    return _json(200, {"live": True})
                ready, reason = self.ready()
                return (
                    _json(200, {"ready": True}) if ready else _json(400, {"ready": False, "reason": reason})
                )
            if parts[1] == "models" and len(parts) >= 3:
                return await self._model(method, path, parts[2:], headers, body)
            raise NotFoundPath(f"no such path: {path[:200]}")
        except Exception as exc:
            return self.error(exc, f"{method} {path[:200]}")

    @staticmethod
    def _expect(method: str, allowed: str, path: str) -> None:
        if method != allowed:
            raise MethodNotAllowed(f"{method} is not allowed on {path[:200]} (use {allowed})")

    async def _model(
        self, method: str, path: str, rest: list[str], headers: Mapping[str, str], body: bytes
    ) -> RestResponse:
        model = check_id(unquote(rest[0]), what="model name in the path")
        version = ""
        rest = rest[1:]
        if len(rest) >= 2 and rest[0] == "versions":
            version = unquote(rest[1])
            rest = rest[2:]
        action = rest[0] if len(rest) == 1 else ("" if not rest else None)
        if action == "":
            self._expect(method, "GET", path)
            payload = v2.ModelMetadataRequest(name=model, version=version).SerializeToString()
            answer = await self._route("ModelMetadata", MODEL_METADATA, payload, headers)
            return RestResponse(200, v2json.model_metadata(answer))
        if action == "ready":
            self._expect(method, "GET", path)
            payload = v2.ModelReadyRequest(name=model, version=version).SerializeToString()
            ready = v2json.model_ready(await self._route("ModelReady", MODEL_READY, payload, headers))
            return _json(200 if ready else 400, {"name": model, "ready": ready})
        if action == "infer":
            self._expect(method, "POST", path)
            return await self._infer(model, version, headers, body)
        raise NotFoundPath(f"no such path: {path[:200]}")

    async def _infer(self, model: str, version: str, headers: Mapping[str, str], body: bytes) -> RestResponse:
        header_length = headers.get(v2json.HEADER_LENGTH)
        length = None
        if header_length is not None:
            try:
                length = int(header_length)
            except ValueError:
                raise InvalidRequest(f"{v2json.HEADER_LENGTH} must be an integer") from None
        payload, binary = v2json.infer_request(body, model, version, length)
        answer = await self._route("ModelInfer", MODEL_INFER, payload, headers)
        try:
            out, json_length = v2json.infer_response(answer, binary)
        except ValueError as exc:  # the runtime's answer cannot be expressed in V2 JSON
            raise RuntimeAnswerInvalid(str(exc)) from exc
        if json_length is None:
            return RestResponse(200, out)
        return RestResponse(200, out, OCTETS, [("Inference-Header-Content-Length", str(json_length))])

    async def _route(self, short: str, method: str, payload: bytes, headers: Mapping[str, str]) -> bytes:
        metadata = [(k, headers[k]) for k in _FORWARDED_HEADERS if k in headers]
        observer, clock = self.observer, self.clock
        note = RequestNote()
        if observer.log_requests:
            note.trace_id = trace_id_of(metadata)
        started = clock.monotonic()
        code = "OK"
        answer = None
        try:
            if TRACING.enabled:
                with TRACING.server_span(
                    "mesh.route", metadata, **{"rpc.method": short, "mesh.transport": "rest"}
                ) as (
                    span,
                    md,
                ):
                    try:
                        answer = await self.router.handle(method, payload, md, None, note)
                    finally:
                        span.set_attribute("mesh.model_id", note.model_id)
                        span.set_attribute("mesh.route", note.route or "none")
                        TRACING.set_status(span, code if answer is not None else "ERROR")
            else:
                answer = await self.router.handle(method, payload, metadata, None, note)
            return answer
        except BaseException as exc:
            code = to_http(exc)[1]
            raise
        finally:
            size = len(answer) if answer is not None else -1
            observer.done("rest", short, code, clock.monotonic() - started, len(payload), size, note)

    def error(self, exc: BaseException, what: str) -> RestResponse:
        status, code, details = to_http(exc)
        details = redact_text(details)
        if not isinstance(exc, MeshError):
            log.error("REST %s failed unexpectedly: %s", what, details, exc_info=exc)
        elif code in _CLIENT_CODE_NAMES:
            log.debug("REST %s: %s %s", what, code, details)
        else:
            log.warning("REST %s: %s %s", what, code, details)
        if isinstance(exc, MethodNotAllowed):
            status = 405
        return _json(status, {"error": details, "code": code})


class MethodNotAllowed(InvalidRequest):
    """The path exists but not for this HTTP method (HTTP 405)."""


class RuntimeAnswerInvalid(MeshError):
    """The runtime's response cannot be turned into V2 JSON (e.g. an output without contents)."""
