"""Traces: W3C trace context across the pod-to-pod hop and into the runtime, and the spans made there.

1. In process, with the OpenTelemetry SDK's in-memory exporter: the REST route span is a child of the caller's
   ``traceparent`` and the metadata handed to the router names that span; a forward span's outgoing headers
   name the forward span; an untraced request keeps the client's own headers.
2. End to end, across processes: two `mesh serve` pods with ``--tracing console`` (their runtimes inherit it)
   print their spans; a request with a ``traceparent`` makes one trace from the client's span through
   ``mesh.route`` → (``mesh.forward`` → ``mesh.route`` on the peer) → ``mesh.load`` → ``runtime.loadModel`` →
   ``runtime.pull``, and ``runtime.ModelInfer``, every parent link intact."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is in the dev extra")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mesh.dataplane.observe import RequestObserver
from mesh.dataplane.rest import RestApi
from mesh.metrics import MeshMetrics
from mesh.tracing import TRACING
from protos.inference import grpc_predict_v2_pb2 as v2
from tests.support.mesh_cluster import make_cluster, wait_for
from tests.support.samples import samples  # noqa: F401  (fixture)

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def traceparent(trace_id: str = CLIENT_TRACE, span_id: str = CLIENT_SPAN) -> str:
    return f"00-{trace_id}-{span_id}-01"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    TRACING.use_provider(provider)
    try:
        yield exporter
    finally:
        TRACING.disable()


class RecordingRouter:
    """Stands in for the Router: records the metadata it is handed; answers a fixed ModelReady."""

    def __init__(self) -> None:
        self.metadata = None

    async def handle(self, method, payload, metadata, time_remaining, note=None):
        self.metadata = list(metadata)
        if note is not None:
            note.model_id, note.route = "m1", "hit"
        with TRACING.span("mesh.forward", client=True) if TRACING.enabled else _nothing():
            self.forwarded = TRACING.outgoing(self.metadata) if TRACING.enabled else self.metadata
        return v2.ModelReadyResponse(ready=True).SerializeToString()


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


async def test_route_span_is_a_child_of_the_callers_and_names_itself_downstream(spans):
    router = RecordingRouter()
    api = RestApi(router, RequestObserver(MeshMetrics(), pod="p"), ready=lambda: (True, ""), version="t")
    resp = await api.handle("GET", "/v2/models/m1/ready", {"traceparent": traceparent()}, b"")
    assert resp.status == 200
    finished = {s.name: s for s in spans.get_finished_spans()}
    route, forward = finished["mesh.route"], finished["mesh.forward"]
    assert format(route.context.trace_id, "032x") == CLIENT_TRACE
    assert format(route.parent.span_id, "016x") == CLIENT_SPAN
    assert route.attributes["mesh.model_id"] == "m1" and route.attributes["mesh.route"] == "hit"
    # what the router got names the route span; what a forward sends names the forward span
    sent = dict(router.metadata)["traceparent"]
    assert sent == traceparent(CLIENT_TRACE, format(route.context.span_id, "016x"))
    assert dict(router.forwarded)["traceparent"] == traceparent(
        CLIENT_TRACE, format(forward.context.span_id, "016x")
    )
    assert forward.parent.span_id == route.context.span_id


async def test_without_tracing_the_clients_trace_headers_pass_through_unchanged():
    TRACING.disable()
    router = RecordingRouter()
    api = RestApi(router, RequestObserver(MeshMetrics(), pod="p"), ready=lambda: (True, ""), version="t")
    headers = {"traceparent": traceparent(), "tracestate": "v=1", "authorization": "Bearer x"}
    await api.handle("GET", "/v2/models/m1/ready", headers, b"")
    assert dict(router.metadata) == {"traceparent": traceparent(), "tracestate": "v=1"}  # and nothing else


def _spans_in(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith('{"name": '):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if "context" in doc:
                out.append(doc)
    return out


def test_one_trace_across_pods_and_into_the_runtime(etcd_server, samples):  # noqa: F811
    sample = samples["by_id"]["sklearn-iris-lr"]
    inp = sample["input"]
    data = {inp["name"]: np.asarray(inp["data"], np.float32).reshape(inp["shape"])}
    with make_cluster(etcd_server.endpoint, samples, pods=2, extra=("--tracing", "console")) as cluster:
        cluster.client(0).register(sample["id"], sample["type"], sample["path"])
        first = "1" * 32
        _infer_with_trace(cluster, 0, sample["id"], data, traceparent(first, "a" * 16))
        holder = 0 if cluster.runtime_ready(0, sample["id"]) else 1
        other = 1 - holder
        second = "2" * 32
        _infer_with_trace(cluster, other, sample["id"], data, traceparent(second, "b" * 16))

        def collected():
            found = _spans_in(cluster.log(0) + "\n" + cluster.log(1))
            names = {(s["context"]["trace_id"][2:], s["name"]) for s in found}
            need = {
                (first, "mesh.load"),
                (first, "runtime.pull"),
                (second, "mesh.forward"),
                (second, "runtime.ModelInfer"),
            }
            return found if need <= names else None

        found = wait_for(collected, timeout=30, what="spans of both traces in the pod logs")
    for trace, client_span in ((first, "a" * 16), (second, "b" * 16)):
        mine = [s for s in found if s["context"]["trace_id"][2:] == trace]
        ids = {s["context"]["span_id"] for s in mine}
        for s in mine:  # every span hangs off another span of the trace, or off the client's
            assert s["parent_id"] in ids or s["parent_id"] == "0x" + client_span, s["name"]
        by_id = {s["context"]["span_id"]: s for s in mine}

        def parent_name(span, by_id=by_id):
            return by_id[span["parent_id"]]["name"] if span["parent_id"] in by_id else "client"

        names = [s["name"] for s in mine]
        assert "mesh.route" in names and "runtime.ModelInfer" in names
        for s in mine:
            if s["name"] == "runtime.ModelInfer":
                assert parent_name(s) == "mesh.route"
            if s["name"] == "mesh.route" and parent_name(s) != "client":
                assert parent_name(s) == "mesh.forward"
        if trace == first:
            pull = next(s for s in mine if s["name"] == "runtime.pull")
            assert parent_name(pull) == "runtime.loadModel"
            assert parent_name(by_id[pull["parent_id"]]) == "mesh.load"
            assert pull["resource"]["attributes"]["service.name"] == "modelmesh-runtime"
        else:
            forward = next(s for s in mine if s["name"] == "mesh.forward")
            assert parent_name(forward) == "mesh.route"
            assert any(parent_name(s) == "mesh.forward" for s in mine if s["name"] == "mesh.route")


def _infer_with_trace(cluster, index, model_id, data, header):
    import grpc

    from mesh.client import build_infer_request
    from protos.inference import grpc_predict_v2_pb2_grpc as v2_grpc

    request = build_infer_request(model_id, data)
    with grpc.insecure_channel(cluster.pods[index].address) as ch:
        v2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
            request, metadata=[("traceparent", header)], timeout=60
        )
