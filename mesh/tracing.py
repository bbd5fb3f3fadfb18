"""Optional OpenTelemetry tracing for pods and runtimes, and W3C trace-context propagation through gRPC metadata.

Off by default (``MM_TRACING=off``): then nothing here runs on the request path; the transports pick their
untraced handlers when they are built, and the cold paths (forward, load) test one attribute. A client's own
``traceparent``/``tracestate`` headers still travel unchanged with the request through every hop and into the
runtime (``headers.parse_metadata`` passes them through), so tracing in the client and the runtime still joins
up across an untraced mesh.

On (``MM_TRACING=console|otlp``, or a test's provider through ``use_provider``), with ``opentelemetry-sdk``
installed (an optional import: the mesh does not depend on it), these spans are made:

- ``mesh.route`` (SERVER): one per inference request on each pod it reaches, child of the caller's
  ``traceparent``; attributes: model id, vModel id, route, method, pod, status code;
- ``mesh.forward`` (CLIENT): the hop to a peer; the peer's ``mesh.route`` is its child;
- ``mesh.load`` (INTERNAL): a load on this pod, child of the request that started it (the load runs in a
  background task, which inherits the request's context);
- in the runtime process: ``runtime.<method>`` (SERVER) for each SPI / inference call that carries a
  ``traceparent`` (the pod sends it with ``loadModel`` and with inference), and ``runtime.pull`` around the
  storage pull inside ``loadModel``.

The outgoing ``traceparent`` always names the current span, so the runtime's and the peer's spans are children
of this pod's. The state is per process (one module-level ``TRACING``) because OpenTelemetry's provider and
propagator are per process too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

log = logging.getLogger(__name__)

try:  # optional: the SDK (or at least the API) may not be installed
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _PROPAGATOR: Any = TraceContextTextMapPropagator()
    _OTEL_ERROR: Any = otel_trace.StatusCode["ERROR"]  # OpenTelemetry span status (not a gRPC code)
except ImportError:  # pragma: no cover - exercised where the SDK is absent
    otel_trace = None  # type: ignore[assignment]
    otel_context = None  # type: ignore[assignment]
    _PROPAGATOR = None

TRACE_HEADERS = ("traceparent", "tracestate")
MODES = ("off", "console", "otlp")
Metadata = Sequence[tuple[str, str | bytes]]


class TracingUnavailable(RuntimeError):
    """Tracing was asked for but the OpenTelemetry SDK (or the chosen exporter) is not installed."""


class _Tracing:
    """The process's tracing state: ``enabled`` and the tracer (see the module docstring)."""

    def __init__(self) -> None:
        self.enabled = False
        self.tracer: Any = None
        self.provider: Any = None
        self.service = ""

    # ------------------------------------------------------------------ set-up
    def configure(self, mode: str, *, service: str, endpoint: str = "") -> None:
        """Turn tracing on with an exporter (``console``: JSON spans on stderr; ``otlp``: OTLP/gRPC to
        ``endpoint``, default the exporter's own), or off. Raises TracingUnavailable when the SDK is missing."""
        if mode not in MODES:
            raise ValueError(f"tracing mode must be one of {', '.join(MODES)}, not {mode!r}")
        if mode == "off":
            self.disable()
            return
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
        except ImportError as exc:
            raise TracingUnavailable("MM_TRACING needs the opentelemetry-sdk package") from exc
        if mode == "console":
            # one span per line (compact JSON), so lines from a pod and its runtime never interleave inside a span
            exporter: Any = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
        else:
            try:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise TracingUnavailable(
                    "MM_TRACING=otlp needs the opentelemetry-exporter-otlp-proto-grpc package"
                ) from exc
            exporter = OTLPSpanExporter(endpoint=endpoint) if endpoint else OTLPSpanExporter()
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        self.use_provider(provider, service=service)

    def use_provider(self, provider: Any, *, service: str = "modelmesh-py") -> None:
        """Trace with ``provider`` (an SDK TracerProvider; tests pass one with an in-memory exporter)."""
        if otel_trace is None:
            raise TracingUnavailable("tracing needs the opentelemetry-api package")
        self.provider = provider
        self.tracer = provider.get_tracer("modelmesh-py")
        self.service = service
        self.enabled = True

    def disable(self) -> None:
        self.enabled = False
        self.tracer = None

    def shutdown(self) -> None:
        """Flush and stop the exporter (at process exit)."""
        provider, self.provider = self.provider, None
        self.disable()
        if provider is not None and hasattr(provider, "shutdown"):
            with contextlib.suppress(Exception):
                provider.shutdown()

    # ------------------------------------------------------------------ spans
    @contextlib.contextmanager
    def server_span(self, name: str, metadata: Metadata, **attributes: Any) -> Iterator[tuple[Any, list]]:
        """A SERVER span, child of the ``traceparent`` in ``metadata``, made current; yields the span and
        ``metadata`` with the trace headers rewritten to name it (for the calls made on its behalf)."""
        carrier = {k: (v.decode("latin-1") if isinstance(v, bytes) else v) for k, v in metadata
                   if k in TRACE_HEADERS}  # fmt: skip
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        with self.tracer.start_as_current_span(
            name, context=parent, kind=otel_trace.SpanKind.SERVER, attributes=_clean(attributes)
        ) as span:
            yield span, self.outgoing(metadata)

    @contextlib.contextmanager
    def span(self, name: str, *, client: bool = False, **attributes: Any) -> Iterator[Any]:
        """An INTERNAL (or CLIENT) span, child of the current one, made current."""
        kind = otel_trace.SpanKind.CLIENT if client else otel_trace.SpanKind.INTERNAL
        with self.tracer.start_as_current_span(name, kind=kind, attributes=_clean(attributes)) as span:
            yield span

    def outgoing(self, metadata: Metadata = ()) -> list[tuple[str, str | bytes]]:
        """``metadata`` without trace headers, plus those of the current span."""
        out = [(k, v) for k, v in metadata if k not in TRACE_HEADERS]
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        out.extend(carrier.items())
        return out

    @staticmethod
    def set_status(span: Any, code_name: str) -> None:
        span.set_attribute("rpc.grpc.status_code", code_name)
        if code_name != "OK":
            span.set_status(otel_trace.Status(_OTEL_ERROR, code_name))


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if v is not None and v != ""}


TRACING = _Tracing()
