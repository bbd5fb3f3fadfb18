"""One /metrics for a pod that runs several data-plane processes: the owner's metrics plus its workers'.

A data-plane worker (``mesh.dataplane.worker``) counts what it serves in its own registry, with the same
metric names and labels as the owner (``mesh.metrics.MeshMetrics``), and sends the cumulative totals of its
counters and histograms that counted anything to the owner with its usage reports (``snapshot``). ``MergedMetrics``
is what the owner's metrics endpoint serves: each of the owner's families with the workers' samples added
to the samples of the same name and labels (and the workers' other label sets appended). Each request is
counted once, by the process that received it: the owner does not count the requests a worker passed to it
(``mesh.workers``).

A worker that restarts starts from zero; the totals of its earlier processes are kept (``retired``), so the
pod's counters never go backwards. Gauges are the owner's alone (workers send none).

``modelmesh_dataplane_requests_total{process}`` is added: inference requests received per process (``owner``,
``worker-<slot>``), read from each process's request-time histogram count (``requests_family``), so the
spread of client connections over the processes can be seen.

Thread-safety: the metrics HTTP server collects on its own thread while reports arrive on the event loop;
each update publishes new dicts whole and a collection reads the published reference once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from protos.meshlocal import local_pb2 as pb

#: Metric types whose samples add up across processes (gauges do not: a pod's gauges are the owner's).
ADDITIVE = frozenset({"counter", "histogram", "summary"})
PER_PROCESS = "modelmesh_dataplane_requests"
MAX_FAMILIES = 256  # bounds on one report (a worker is trusted, but nothing that grows state is unbounded)
MAX_SAMPLES = 20_000

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Family:
    name: str
    type: str
    help: str
    samples: dict[SampleKey, float] = field(default_factory=dict)  # insertion order = exposition order

    def requests(self) -> float:
        """The total of ``<name>_count`` samples (requests, for the request-time histogram)."""
        count = self.name + "_count"
        return sum(v for (name, _), v in self.samples.items() if name == count)


def _key(name: str, labels: dict[str, str]) -> SampleKey:
    return name, tuple(sorted(labels.items()))


def snapshot(registry: CollectorRegistry) -> list[pb.MetricFamily]:
    """The cumulative totals of the counters and histograms in ``registry`` that counted anything
    (``_created`` timestamps left out: they do not add up)."""
    out = []
    for fam in registry.collect():
        if fam.type not in ADDITIVE or not any(
            s.value for s in fam.samples if not s.name.endswith("_created")
        ):
            continue
        samples = [
            pb.Sample(
                name=s.name,
                labels=[pb.Label(name=k, value=v) for k, v in s.labels.items()],
                value=s.value,
            )
            for s in fam.samples
            if not s.name.endswith("_created")
        ]
        out.append(pb.MetricFamily(name=fam.name, type=fam.type, help=fam.documentation, samples=samples))
    return out


def decode(families: Iterable[pb.MetricFamily]) -> dict[str, Family]:
    out: dict[str, Family] = {}
    budget = MAX_SAMPLES
    for f in families:
        if f.type not in ADDITIVE or len(out) >= MAX_FAMILIES or len(f.samples) > budget:
            continue  # only what adds up, and a bounded amount of it
        budget -= len(f.samples)
        samples = {_key(s.name, {lb.name: lb.value for lb in s.labels}): s.value for s in f.samples}
        out[f.name] = Family(f.name, f.type, f.help, samples)
    return out


def add(*parts: dict[str, Family]) -> dict[str, Family]:
    """Families summed sample by sample (new dicts; the inputs are not changed)."""
    out: dict[str, Family] = {}
    for part in parts:
        for name, fam in part.items():
            into = out.get(name)
            if into is None:
                out[name] = Family(fam.name, fam.type, fam.help, dict(fam.samples))
                continue
            for key, value in fam.samples.items():
                into.samples[key] = into.samples.get(key, 0.0) + value
    return out


class MergedMetrics(Collector):
    """The owner's registry plus its workers' reported totals (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry, requests_family: str) -> None:
        """``requests_family``: the name of the inference request-time histogram (the per-process counts)."""
        self.registry = registry
        self.requests_family = requests_family
        # (slot -> (pid, families) of its running process, slot -> summed families of its earlier processes),
        # replaced whole by each update (one reference: a collection never sees half of an update)
        self._state: tuple[dict[int, tuple[int, dict[str, Family]]], dict[int, dict[str, Family]]] = ({}, {})

    def update(self, slot: int, pid: int, families: Iterable[pb.MetricFamily]) -> None:
        """Worker ``slot`` (process ``pid``) reports its totals."""
        decoded = decode(families)
        current, retired = (dict(d) for d in self._state)
        before = current.get(slot)
        if before is not None and before[0] != pid:  # a new process in this slot: keep the old one's totals
            retired[slot] = add(retired.get(slot, {}), before[1])
        current[slot] = (pid, decoded)
        self._state = (current, retired)

    def worker_totals(self) -> dict[int, dict[str, Family]]:
        current, retired = self._state
        return {
            slot: add(retired.get(slot, {}), current[slot][1] if slot in current else {})
            for slot in sorted(set(current) | set(retired))
        }

    def collect(self) -> Iterator[Metric]:
        per_worker = self.worker_totals()
        extra = add(*per_worker.values())
        owner_requests = 0.0
        requests = self.requests_family
        for fam in self.registry.collect():
            if fam.name == requests:
                owner_requests = sum(s.value for s in fam.samples if s.name == requests + "_count")
            more = extra.pop(fam.name, None)
            yield fam if more is None else _merged(fam, more)
        for fam in extra.values():
            yield _metric(fam.name, fam.type, fam.help, fam.samples)
        per_process = Metric(PER_PROCESS, "Inference requests received, by data-plane process", "counter")
        per_process.add_sample(PER_PROCESS + "_total", {"process": "owner"}, owner_requests)
        for slot, fams in per_worker.items():
            total = fams[requests].requests() if requests in fams else 0.0
            per_process.add_sample(PER_PROCESS + "_total", {"process": f"worker-{slot}"}, total)
        yield per_process

    def restricted_registry(self, names: Iterable[str]) -> _Restricted:
        """For ``/metrics?name[]=...`` (prometheus_client asks the registry for this)."""
        return _Restricted(self, frozenset(names))


class _Restricted:
    def __init__(self, source: MergedMetrics, names: frozenset[str]) -> None:
        self._source = source
        self._names = names

    def collect(self) -> Iterator[Metric]:
        for fam in self._source.collect():
            samples = [s for s in fam.samples if s.name in self._names]
            if samples:
                restricted = Metric(fam.name, fam.documentation, fam.type)
                restricted.samples = samples
                yield restricted


def _merged(fam: Metric, more: Family) -> Metric:
    samples = dict(more.samples)
    out = Metric(fam.name, fam.documentation, fam.type)
    for s in fam.samples:
        extra = samples.pop(_key(s.name, s.labels), 0.0)
        out.samples.append(s._replace(value=s.value + extra) if extra else s)
    out.samples.extend(Sample(name, dict(labels), value) for (name, labels), value in samples.items())
    return out


def _metric(name: str, typ: str, help_text: str, samples: dict[SampleKey, float]) -> Metric:
    out = Metric(name, help_text, typ)
    out.samples.extend(Sample(n, dict(labels), value) for (n, labels), value in samples.items())
    return out
